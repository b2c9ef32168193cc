"""Audio-text contrastive objective: symmetric InfoNCE against a hand computation, its symmetry, temperature
and reductions; the gather over 2 CPU processes (gloo) against one process on the concatenated batch, with
equal and unequal per-rank batches; Auden's embedding regulariser; the training step on the tiny model."""

import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from clap_model_utils import tiny_clap

from hf_audiorep.data.text_tokenizers import train_wordpiece_tokenizer
from hf_audiorep.modeling import ZipformerFbankFeatureExtractor
from hf_audiorep.objectives.audio_text import (
    AudioTextContrastiveStep,
    embedding_regularizer,
    symmetric_info_nce,
)
from hf_audiorep.objectives.classification import AugmentationArguments

# 3 pairs in 2-D; with logit_scale 2 the logits a_i . t_j * 2 are, row by row (audio i, text j):
AUDIO = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
TEXT = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
LOGITS = [[2.0, 1.2, 0.0], [0.0, 1.6, 2.0], [1.2, 2.0, 1.6]]


def _ce(row, target):
    return math.log(sum(math.exp(v) for v in row)) - row[target]


def test_info_nce_equals_a_hand_computation():
    a2t = sum(_ce(LOGITS[i], i) for i in range(3))
    t2a = sum(_ce([LOGITS[j][i] for j in range(3)], i) for i in range(3))
    got = symmetric_info_nce(AUDIO, TEXT, 2.0)
    assert got.item() == pytest.approx((a2t + t2a) / 2 / 3, rel=1e-6)
    assert symmetric_info_nce(AUDIO, TEXT, 2.0, reduction="sum").item() == pytest.approx(
        (a2t + t2a) / 2, rel=1e-6
    )


def test_info_nce_is_symmetric_and_scales_with_the_temperature():
    generator = torch.Generator().manual_seed(0)
    audio = F.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    text = F.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    loss = symmetric_info_nce(audio, text, 1 / 0.07)
    torch.testing.assert_close(symmetric_info_nce(text, audio, 1 / 0.07), loss)
    # logits are logit_scale * a . t: scaling the audio side is the same as scaling the temperature
    torch.testing.assert_close(symmetric_info_nce(audio * 3, text, 1.0), symmetric_info_nce(audio, text, 3.0))
    # a colder temperature sharpens: a batch whose pairs already score highest gets a lower loss
    aligned = F.normalize(text + 0.1 * audio, dim=-1)
    assert symmetric_info_nce(aligned, text, 20.0) < symmetric_info_nce(aligned, text, 2.0)
    torch.testing.assert_close(
        symmetric_info_nce(audio, text, 2.0, reduction="sum"), 5 * symmetric_info_nce(audio, text, 2.0)
    )
    scale = torch.tensor(2.0, requires_grad=True)
    symmetric_info_nce(audio, text, scale).backward()
    assert scale.grad is not None and scale.grad != 0


def test_info_nce_errors():
    with pytest.raises(ValueError, match="reduction"):
        symmetric_info_nce(AUDIO, TEXT, 1.0, reduction="max")
    with pytest.raises(ValueError, match="paired"):
        symmetric_info_nce(AUDIO, TEXT[:2], 1.0)


def test_embedding_regularizer_is_audens_per_row():
    spread = torch.full((1, 4), 0.5)  # unit norm, mass even: mean |e| = 0.5
    peaked = torch.tensor([[1.0, 0.0, 0.0, 0.0]])  # unit norm, one dimension: mean |e| = 0.25
    assert embedding_regularizer(spread).item() == pytest.approx(0.5)
    assert embedding_regularizer(peaked).item() == pytest.approx(0.25)
    assert embedding_regularizer(torch.cat([spread, 3 * peaked])).item() == pytest.approx(0.375)  # scale-free


# ---- 2 processes on CPU (gloo) -------------------------------------------------------------------------


def _rows(sizes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    return (
        F.normalize(torch.randn(total, 6, generator=generator), dim=-1),
        F.normalize(torch.randn(total, 6, generator=generator), dim=-1),
    )


CASES = [((3, 3), "mean"), ((3, 3), "sum"), ((2, 4), "mean"), ((2, 4), "sum")]


def _gather_worker(rank, world, init_file, out_dir):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        for case, (sizes, reduction) in enumerate(CASES):
            audio, text = _rows(sizes)
            start = sum(sizes[:rank])
            mine = slice(start, start + sizes[rank])
            audio, text = audio[mine].clone().requires_grad_(), text[mine].clone().requires_grad_()
            scale = torch.tensor(3.0, requires_grad=True)
            loss = symmetric_info_nce(audio, text, scale, reduction=reduction)
            loss.backward()
            local = symmetric_info_nce(audio.detach(), text.detach(), 3.0, gather=False, reduction=reduction)
            result = {"loss": loss.detach(), "local": local, "audio": audio.grad, "text": text.grad}
            torch.save({**result, "scale": scale.grad}, f"{out_dir}/case{case}-rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    """Every case of CASES run on 2 gloo processes at once (one spawn: starting processes is the cost)."""
    out = tmp_path_factory.mktemp("gather")
    mp.spawn(_gather_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{r}-{s[0]}+{s[1]}" for s, r in CASES])
def test_gather_over_two_processes_equals_one_process_on_the_whole_batch(two_process_results, case):
    sizes, reduction = CASES[case]
    ranks = [torch.load(two_process_results / f"case{case}-rank{r}.pt", weights_only=True) for r in range(2)]
    audio, text = _rows(sizes)
    audio.requires_grad_()
    text.requires_grad_()
    scale = torch.tensor(3.0, requires_grad=True)
    full = symmetric_info_nce(audio, text, scale, reduction=reduction)
    full.backward()
    # DDP averages the ranks' gradients: the mean of the ranks' losses is the whole batch's loss, and each
    # rank's embedding gradient is world_size x the whole-batch gradient of its rows.
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, full.detach())
    torch.testing.assert_close(torch.cat([r["audio"] for r in ranks]) / 2, audio.grad)
    torch.testing.assert_close(torch.cat([r["text"] for r in ranks]) / 2, text.grad)
    torch.testing.assert_close((ranks[0]["scale"] + ranks[1]["scale"]) / 2, scale.grad)
    # without the gather each rank would see only its own negatives: another loss
    assert not torch.allclose(
        ranks[0]["loss"], ranks[0]["local"] * (2 if reduction == "sum" else 1), atol=1e-3
    )


# ---- the training step ----------------------------------------------------------------------------------

CAPTIONS = ["a dog barks twice", "rain on a tin roof", "a car passes by", "birds sing at dawn"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece_tokenizer(CAPTIONS * 5, vocab_size=60)


def _model(tokenizer, **overrides):
    return tiny_clap(tokenizer, **overrides)


def _batch():
    generator = torch.Generator().manual_seed(0)
    waveforms = 0.1 * torch.randn(4, 8000, generator=generator)
    lengths = torch.tensor([8000, 8000, 6000, 7000])
    waveforms[2, 6000:] = 0
    waveforms[3, 7000:] = 0
    return {"waveforms": waveforms, "lengths": lengths, "caption": list(CAPTIONS)}


def test_step_gives_a_finite_loss_and_reaches_both_towers(tokenizer):
    model = _model(tokenizer, learn_temperature=True).train()
    step = AudioTextContrastiveStep(
        ZipformerFbankFeatureExtractor(num_mel_bins=32),
        AugmentationArguments(mixup_prob=0.0),
        tokenizer,
        text_column="caption",
        embed_reg_weight=0.5,
    )
    loss, logs = step(model, _batch())
    assert torch.isfinite(loss)
    assert set(logs) == {"info_nce", "temperature", "embed_reg", "a2t_accuracy"}
    torch.testing.assert_close(logs["temperature"], torch.tensor(0.07))
    torch.testing.assert_close(loss.detach(), logs["info_nce"] + 0.5 * logs["embed_reg"])
    assert 0.0 <= logs["a2t_accuracy"].item() <= 1.0
    loss.backward()
    for prefix in ("zipformer.", "text_model.", "audio_projection.", "text_projection.", "logit_scale"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), prefix


def test_step_loss_is_the_models_in_batch_info_nce_in_eval(tokenizer):
    model = _model(tokenizer).eval()
    fe = ZipformerFbankFeatureExtractor(num_mel_bins=32)
    step = AudioTextContrastiveStep(
        fe, AugmentationArguments(mixup_prob=0.0), tokenizer, text_column="caption"
    )
    batch = _batch()
    with torch.no_grad():
        loss, logs = step(model, batch)
        features, mask = fe.batch_features(batch["waveforms"], batch["lengths"])
        tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
        out = model(features, mask, tokens["input_ids"], tokens["attention_mask"], return_loss=True)
    torch.testing.assert_close(loss, out.loss)
    expected_accuracy = (out.logits_per_audio.argmax(1) == torch.arange(4)).float().mean()
    torch.testing.assert_close(logs["a2t_accuracy"], expected_accuracy)


def test_step_errors(tokenizer):
    fe = ZipformerFbankFeatureExtractor(num_mel_bins=32)
    with pytest.raises(ValueError, match="mixup"):
        AudioTextContrastiveStep(fe, AugmentationArguments(mixup_prob=0.5), tokenizer)
    step = AudioTextContrastiveStep(fe, AugmentationArguments(mixup_prob=0.0), tokenizer)
    with pytest.raises(KeyError, match="'text'"):
        step(_model(tokenizer), _batch())
    batch = {**_batch(), "text": CAPTIONS[:3]}
    with pytest.raises(ValueError, match="one text per clip"):
        step(_model(tokenizer), batch)
