"""Classification heads shared by the models and objectives of hf_audiorep.

`CosineClassifier` is the cosine-similarity classifier of ContrastASC (arXiv 2510.03728): logits are the
scaled cosine between an embedding and one learned weight vector per class, so only the embedding's
direction decides the class. ContrastASC uses it on the BEATs teacher during supervised-contrastive
fine-tuning and on the CP-Mobile student.

Only torch is imported here, so the file can ship as Hub remote code.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["CosineClassifier"]


class CosineClassifier(nn.Module):
    """``logits = scale * cos(W_c, h)``: the cosine between the input and each class's weight vector, times a
    fixed ``scale``.

    Without the scale, cosines in [-1, 1] give a softmax too flat to fit one-hot targets; a fixed scale
    (ContrastASC: 56) sets its temperature. No bias: a per-class offset would let a class win whatever the
    embedding's direction.

    Args:
        in_features: width of the embedding ``h``.
        num_labels: number of classes (rows of ``weight``).
        scale: the fixed multiplier of the cosines, positive.
    """

    def __init__(self, in_features: int, num_labels: int, scale: float):
        super().__init__()
        for name, value in (("in_features", in_features), ("num_labels", num_labels)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"CosineClassifier {name} must be a positive int, got {value!r}")
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not math.isfinite(scale)
            or scale <= 0
        ):
            raise ValueError(f"CosineClassifier scale must be a positive finite number, got {scale!r}")
        self.in_features, self.num_labels, self.scale = in_features, num_labels, float(scale)
        self.weight = nn.Parameter(torch.empty(num_labels, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Only the directions of the rows matter; nn.Linear's default range gives them uniformly at random.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(..., in_features)`` -> ``(..., num_labels)`` logits in ``[-scale, scale]``."""
        cosines = F.linear(F.normalize(hidden_states, dim=-1), F.normalize(self.weight, dim=-1))
        return self.scale * cosines

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_labels={self.num_labels}, scale={self.scale}"
