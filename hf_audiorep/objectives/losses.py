"""Losses that more than one objective uses.

Losses owned by one model's forward (the masked-autoencoder reconstruction, CAT's patch / CLS / RR
regression) stay in that model; what lives here is computed by the steps themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["consistency_loss"]


def consistency_loss(view_logits: torch.Tensor) -> torch.Tensor:
    """Mean over all view pairs of the symmetric, stop-gradient binary divergence.

    ``view_logits``: (k, B, C). For views a, b with p = sigmoid(z):
    ``CR(a, b) = 1/2 [KL(sg(p_a) || p_b) + KL(sg(p_b) || p_a)]`` per class, averaged over clips and
    classes, then over the k(k-1)/2 pairs. With the target under stop-gradient, KL and the paper's
    binary cross-entropy differ by the target's entropy, a constant: the gradients are identical,
    and this form is 0 for identical views, which makes the value readable in logs.
    """
    if view_logits.ndim != 3:
        raise ValueError(f"view_logits must be (views, batch, classes), got {tuple(view_logits.shape)}")
    k = view_logits.shape[0]
    if k < 2:
        return view_logits.new_zeros(())
    z = view_logits.float()
    log_p, log_q = F.logsigmoid(z), F.logsigmoid(-z)  # log p, log(1 - p), stable for large |z|
    t_log_p, t_log_q = log_p.detach(), log_q.detach()
    t_p = t_log_p.exp()
    # kl[a, b] = KL(sg(p_a) || p_b), element by element (k^2 * B * C values: small next to the model),
    # which keeps it >= 0 up to rounding instead of a difference of two large sums.
    kl = t_p[:, None] * (t_log_p[:, None] - log_p[None]) + (1 - t_p[:, None]) * (
        t_log_q[:, None] - log_q[None]
    )
    kl = kl.flatten(2).mean(-1)
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=z.device)
    # mean over pairs of (kl[a,b] + kl[b,a]) / 2 == mean over the ordered off-diagonal entries
    return kl[off_diagonal].mean()
