"""Values of the audio-text contrastive objective on tiny inputs written out by hand: InfoNCE with a fixed
and a learned temperature, each process's share of it under a stand-in for two processes (the rows, the
padding and the offsets of the gather, in-process: what the 2-process gloo test checks end to end),
Auden's regulariser, and the step with a stand-in model (what it tokenizes, passes, returns and logs)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import hf_audiorep.objectives.audio_text as module
from hf_audiorep.modeling import ZipformerFbankFeatureExtractor
from hf_audiorep.objectives.audio_text import (
    AudioTextContrastiveStep,
    embedding_regularizer,
    symmetric_info_nce,
)
from hf_audiorep.objectives.classification import AugmentationArguments

# 3 pairs in 2-D, no ties among any row's or column's scores a_i . t_j:
AUDIO = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
TEXT = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
SCORES = [[0.6, 0.0, 1.0], [0.8, 1.0, 0.0], [0.96, 0.6, 0.8]]  # row i: audio i against text j


def ce(row: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in row)) - row[target]


def pair_terms(scale: float) -> list[float]:
    """CE(audio i -> texts) + CE(text i -> audios) of each pair i, from SCORES."""
    rows = [[scale * v for v in row] for row in SCORES]
    return [ce(rows[i], i) + ce([rows[j][i] for j in range(3)], i) for i in range(3)]


def d_ce_d_scale(scores: list[float], target: int, scale: float) -> float:
    """d/ds of log sum exp(s z_j) - s z_target: the softmax-weighted mean score less the target's."""
    weights = [math.exp(scale * z) for z in scores]
    return sum(w * z for w, z in zip(weights, scores, strict=True)) / sum(weights) - scores[target]


# ---- InfoNCE in one process ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_info_nce_by_hand_with_a_fixed_temperature(scale):
    terms = pair_terms(scale)
    mean = symmetric_info_nce(AUDIO, TEXT, scale)
    total = symmetric_info_nce(AUDIO, TEXT, scale, reduction="sum")
    assert mean.item() == pytest.approx(sum(terms) / 2 / 3, rel=1e-6)
    assert total.item() == pytest.approx(sum(terms) / 2, rel=1e-6)
    assert mean.dtype == torch.float32 and mean.ndim == 0


def test_info_nce_with_a_learned_temperature_and_its_gradient_by_hand():
    scale = torch.tensor(2.5, requires_grad=True)
    loss = symmetric_info_nce(AUDIO, TEXT, scale)
    assert loss.item() == pytest.approx(sum(pair_terms(2.5)) / 6, rel=1e-6)
    loss.backward()
    columns = [[SCORES[j][i] for j in range(3)] for i in range(3)]
    grad = sum(d_ce_d_scale(SCORES[i], i, 2.5) + d_ce_d_scale(columns[i], i, 2.5) for i in range(3)) / 6
    assert scale.grad.item() == pytest.approx(grad, rel=1e-5)


def test_a_single_pair_has_no_negatives_and_zero_loss():
    assert symmetric_info_nce(AUDIO[:1], TEXT[:1], 2.5).item() == 0.0


def test_half_precision_embeddings_are_scored_in_float32():
    loss = symmetric_info_nce(AUDIO.bfloat16(), TEXT.bfloat16(), 2.5)
    assert loss.dtype == torch.float32
    rounded = symmetric_info_nce(AUDIO.bfloat16().float(), TEXT.bfloat16().float(), 2.5)
    assert loss.item() == pytest.approx(rounded.item(), rel=1e-6)


def test_info_nce_refuses_unpaired_inputs_and_no_pairs():
    with pytest.raises(ValueError, match="reduction must be one of"):
        symmetric_info_nce(AUDIO, TEXT, 1.0, reduction="none")
    with pytest.raises(ValueError, match=r"got \(3, 2\) and \(3, 1\)"):
        symmetric_info_nce(AUDIO, TEXT[:, :1], 1.0)
    with pytest.raises(ValueError, match=r"got \(2,\) and \(2,\)"):
        symmetric_info_nce(AUDIO[0], TEXT[0], 1.0)
    with pytest.raises(ValueError, match="^symmetric_info_nce got no pairs on any process$"):
        symmetric_info_nce(torch.zeros(0, 2), torch.zeros(0, 2), 1.0)


# ---- two processes, simulated in one -------------------------------------------------------------------


class TwoProcesses:
    """Stands in for ``torch.distributed`` as seen by ``rank`` of 2 processes holding ``sizes`` rows of
    ``audio`` / ``text``. The gather returns the other process's rows as slices of the same tensors, so one
    backward through both processes' losses gives each row the sum of both processes' gradients (what the
    all-gather's reduce-scatter backward gives it)."""

    def __init__(self, monkeypatch, rank, sizes, audio, text):
        starts = [0, sizes[0]]
        self.rank, self.sizes = rank, sizes
        self.gathers = [[x[s : s + n] for s, n in zip(starts, sizes, strict=True)] for x in (audio, text)]
        self.padded = []
        monkeypatch.setattr(module.dist, "is_available", lambda: True)
        monkeypatch.setattr(module.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(module.dist, "get_world_size", lambda: 2)
        monkeypatch.setattr(module.dist, "get_rank", lambda: rank)
        monkeypatch.setattr(module.dist, "all_gather", self.gather_counts)
        monkeypatch.setattr(torch.distributed.nn.functional, "all_gather", self.gather_rows)

    def gather_counts(self, counts, count):
        assert count.dtype == torch.long and count.tolist() == [self.sizes[self.rank]]
        for out, n in zip(counts, self.sizes, strict=True):
            out.copy_(torch.tensor([n]))

    def gather_rows(self, padded):
        parts = self.gathers[len(self.padded)]
        self.padded.append(padded.detach().clone())
        widest = max(self.sizes)
        return tuple(
            padded if r == self.rank else F.pad(part.float(), (0, 0, 0, widest - len(part)))
            for r, part in enumerate(parts)
        )


def rank_losses(monkeypatch, sizes, reduction, scale=2.5):
    """Each simulated process's loss on its share of AUDIO / TEXT, and the rows' summed gradients."""
    audio, text = AUDIO.clone().requires_grad_(), TEXT.clone().requires_grad_()
    losses, worlds = [], []
    for rank in range(2):
        with monkeypatch.context() as patch:
            world = TwoProcesses(patch, rank, sizes, audio, text)
            start = sum(sizes[:rank])
            mine = slice(start, start + sizes[rank])
            losses.append(symmetric_info_nce(audio[mine], text[mine], scale, reduction=reduction))
            worlds.append(world)
    sum(losses).backward()
    return losses, worlds, audio.grad, text.grad


@pytest.mark.parametrize("sizes", [(1, 2), (2, 1), (0, 3)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_each_process_scores_its_rows_against_the_gathered_columns(monkeypatch, sizes, reduction):
    losses, worlds, audio_grad, text_grad = rank_losses(monkeypatch, sizes, reduction)
    terms = pair_terms(2.5)
    for rank, loss in enumerate(losses):
        start = sum(sizes[:rank])
        share = sum(terms[start : start + sizes[rank]]) / 2  # its rows (targets offset by start), x world 2
        assert loss.item() == pytest.approx(2 * share / (3 if reduction == "mean" else 1), rel=1e-6, abs=1e-7)
    # the data-parallel mean of the processes' losses and gradients is the whole batch's
    audio, text = AUDIO.clone().requires_grad_(), TEXT.clone().requires_grad_()
    full = symmetric_info_nce(audio, text, 2.5, reduction=reduction)
    full.backward()
    assert ((losses[0] + losses[1]) / 2).item() == pytest.approx(full.item(), rel=1e-6)
    torch.testing.assert_close(audio_grad / 2, audio.grad)
    torch.testing.assert_close(text_grad / 2, text.grad)


@pytest.mark.parametrize("sizes", [(1, 2), (0, 3)])
def test_the_gather_pads_each_process_to_the_largest_count(monkeypatch, sizes):
    _, worlds, _, _ = rank_losses(monkeypatch, sizes, "mean")
    for rank, world in enumerate(worlds):
        start = sum(sizes[:rank])
        for padded, rows in zip(world.padded, (AUDIO, TEXT), strict=True):  # audio gathered, then text
            assert padded.shape == (max(sizes), 2)
            torch.testing.assert_close(padded[: sizes[rank]], rows[start : start + sizes[rank]])
            assert not padded[sizes[rank] :].any()


def test_without_gather_a_process_scores_its_own_batch(monkeypatch):
    world = TwoProcesses(monkeypatch, 0, (3, 3), AUDIO, TEXT)
    loss = symmetric_info_nce(AUDIO, TEXT, 2.5, gather=False)
    assert loss.item() == pytest.approx(sum(pair_terms(2.5)) / 6, rel=1e-6)
    assert world.padded == []


def test_one_process_does_not_gather(monkeypatch):
    world = TwoProcesses(monkeypatch, 0, (3, 3), AUDIO, TEXT)
    monkeypatch.setattr(module.dist, "get_world_size", lambda: 1)
    assert symmetric_info_nce(AUDIO, TEXT, 2.5).item() == pytest.approx(sum(pair_terms(2.5)) / 6, rel=1e-6)
    assert world.padded == []
    monkeypatch.setattr(module.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(module.dist, "is_initialized", lambda: False)
    symmetric_info_nce(AUDIO, TEXT, 2.5)
    assert world.padded == []


# ---- the regulariser -----------------------------------------------------------------------------------


def test_embedding_regularizer_by_hand():
    # a row of norm 5 and one of norm 0.1 * sqrt(3) (below 1, so a floor on the norm near 1 would show)
    embeds = torch.tensor([[3.0, -4.0, 0.0], [0.1, 0.1, 0.1]])
    # mean |e| / ||e|| of each row: (7 / 3) / 5 and 1 / sqrt(3); then their mean
    expected = (7 / 15 + 1 / math.sqrt(3)) / 2
    assert embedding_regularizer(embeds).item() == pytest.approx(expected, rel=1e-6)
    half = embedding_regularizer(embeds.bfloat16())
    assert half.dtype == torch.float32 and half.item() == pytest.approx(expected, rel=1e-6)
    # a zero row scores 0 rather than 0 / 0
    assert embedding_regularizer(torch.tensor([[0.0, 0.0, 0.0], [3.0, -4.0, 0.0]])).item() == pytest.approx(
        7 / 30
    )
    with pytest.raises(ValueError, match=r"embeds must be \(batch, dim\), got \(3,\)"):
        embedding_regularizer(embeds[0])


# ---- the step, with a stand-in model -------------------------------------------------------------------


class CountingTokenizer:
    """Token ids 1..n for a text of n words, truncated and padded as asked; records its keyword arguments."""

    def __init__(self):
        self.calls = []

    def __call__(self, texts, **kwargs):
        self.calls.append((texts, kwargs))
        lengths = [min(len(t.split()), kwargs["max_length"]) for t in texts]
        width = max(lengths)
        ids = torch.tensor([list(range(1, n + 1)) + [0] * (width - n) for n in lengths])
        return {"input_ids": ids, "attention_mask": (ids > 0).long(), "token_type_ids": torch.zeros_like(ids)}


class FixedTowers(torch.nn.Module):
    """Returns AUDIO / TEXT as the embeddings and ``scale`` as the logit scale; records its calls."""

    def __init__(self, scale=2.5, audio=AUDIO, text=TEXT):
        super().__init__()
        self.scale = torch.tensor(scale)
        self.audio, self.text = audio, text
        self.calls = []
        self.eval()

    def forward(self, **kwargs):
        self.calls.append(kwargs)
        return SimpleNamespace(audio_embeds=self.audio, text_embeds=self.text, logit_scale=self.scale)


TEXTS = ["a dog barks", "rain", "a car passes by"]


def clips(column="text", texts=TEXTS) -> dict:
    waveforms = 0.1 * torch.randn(3, 1600, generator=torch.Generator().manual_seed(0))
    return {"waveforms": waveforms, "lengths": torch.tensor([1600, 1200, 1600]), column: texts}


NO_MIXUP = AugmentationArguments(mixup_prob=0.0)


def contrastive(tokenizer=None, augmentation=NO_MIXUP, **kwargs):
    fe = ZipformerFbankFeatureExtractor()
    return AudioTextContrastiveStep(fe, augmentation, tokenizer or CountingTokenizer(), **kwargs)


def test_defaults_tokenize_the_text_column_to_30_tokens_and_log_the_mean_info_nce():
    tokenizer, model = CountingTokenizer(), FixedTowers()
    loss, logs = contrastive(tokenizer)(model, clips())
    assert tokenizer.calls == [
        (TEXTS, {"padding": True, "truncation": True, "max_length": 30, "return_tensors": "pt"})
    ]
    ((call,),) = [model.calls]
    assert set(call) == {"input_values", "attention_mask", "input_ids", "text_attention_mask"}
    assert call["input_ids"].tolist() == [[1, 2, 3, 0], [1, 0, 0, 0], [1, 2, 3, 4]]
    assert call["text_attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert call["input_values"].shape[0] == 3 and call["attention_mask"].shape[0] == 3
    nce = sum(pair_terms(2.5)) / 6
    assert loss.item() == pytest.approx(nce, rel=1e-6)
    assert set(logs) == {"info_nce", "temperature", "a2t_accuracy"}  # no regulariser at weight 0
    assert logs["info_nce"].item() == pytest.approx(nce, rel=1e-6)
    assert logs["temperature"].item() == pytest.approx(1 / 2.5)
    # argmax over each audio's texts: 2, 1, 0 -> only clip 1 finds its own
    assert logs["a2t_accuracy"].item() == pytest.approx(1 / 3)


def test_the_step_passes_its_settings_on():
    tokenizer = CountingTokenizer()
    loss, logs = contrastive(tokenizer, text_column="caption", max_text_length=2, reduction="sum")(
        FixedTowers(scale=1.0), clips(column="caption")
    )
    assert tokenizer.calls[0][1]["max_length"] == 2
    assert loss.item() == pytest.approx(sum(pair_terms(1.0)) / 2, rel=1e-6)
    assert logs["temperature"].item() == pytest.approx(1.0)


def test_the_regulariser_is_added_with_its_weight():
    loss, logs = contrastive(embed_reg_weight=0.3)(FixedTowers(), clips())
    # AUDIO's rows: 1/2, 1/2, 0.7; TEXT's: 0.7, 1/2, 1/2 (mean |e| over a unit norm)
    reg = (0.5 + 0.5 + 0.7) / 3 + (0.7 + 0.5 + 0.5) / 3
    assert logs["embed_reg"].item() == pytest.approx(reg, rel=1e-6)
    assert loss.item() == pytest.approx(sum(pair_terms(2.5)) / 6 + 0.3 * reg, rel=1e-6)


def test_accuracy_counts_each_clip_whose_own_text_scores_highest():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # clips 0 and 1 find theirs, clip 2 does not
    _, logs = contrastive()(FixedTowers(text=text), clips())
    assert logs["a2t_accuracy"].item() == pytest.approx(2 / 3)


def test_the_step_gathers_unless_told_not_to(monkeypatch):
    world = TwoProcesses(monkeypatch, 1, (3, 3), AUDIO, TEXT)
    contrastive(gather=False)(FixedTowers(), clips())
    assert world.padded == []
    contrastive()(FixedTowers(), clips())
    assert len(world.padded) == 2


def test_step_texts_must_be_one_string_per_clip():
    step = contrastive()
    with pytest.raises(KeyError, match=r"no 'text' column \(it has \['caption', 'lengths', 'waveforms'\]\)"):
        step(FixedTowers(), clips(column="caption"))
    with pytest.raises(
        KeyError, match="; pass the caption column as text_column and in the stream's extra_columns"
    ):
        step(FixedTowers(), clips(column="caption"))
    with pytest.raises(ValueError, match="2 texts for 3 clips"):
        step(FixedTowers(), clips(texts=TEXTS[:2]))
    with pytest.raises(TypeError, match=r"batch\['text'\] must be a list of strings"):
        step(FixedTowers(), clips(texts="abc"))
    with pytest.raises(TypeError, match="must be a list of strings"):
        step(FixedTowers(), clips(texts=["a", 2, "c"]))


def test_step_argument_bounds():
    contrastive(embed_reg_weight=0.0, max_text_length=2)
    with pytest.raises(ValueError, match="embed_reg_weight must be >= 0"):
        contrastive(embed_reg_weight=-0.01)
    with pytest.raises(ValueError, match="max_text_length must leave room"):
        contrastive(max_text_length=1)
    with pytest.raises(ValueError, match="reduction must be one of"):
        contrastive(reduction="max")
    with pytest.raises(
        ValueError,
        match=r"^audio-text contrastive training cannot use mixup \(mixup_prob=0.01\): a mixed clip has no "
        "single text to pair with; set mixup_prob=0$",
    ):
        contrastive(augmentation=AugmentationArguments(mixup_prob=0.01))
