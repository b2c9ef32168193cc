"""Values of the captioning objective on tiny inputs written out by hand: the decoder inputs, labels and
masks of AR and PAR rows (padding, truncation at the length limit), the label-smoothed loss, and the step
with a stand-in model (a logit table, no encoder): the length limit it takes from the model, which rows it
draws PAR, what it passes to the model, its loss and logs, the multi-task sum and its argument checks."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from hf_audiorep.modeling import ZipformerFbankFeatureExtractor
from hf_audiorep.objectives.captioning import CaptioningStep, caption_decoder_inputs, caption_loss
from hf_audiorep.objectives.classification import AugmentationArguments

BOS, PAD, EOS, MASK = 0, 1, 2, 4
VOCAB = 12
NO_MIXUP = AugmentationArguments(mixup_prob=0.0, freq_mask=0, time_mask=0)


def inputs(token_ids, parallel, max_length=10):
    return caption_decoder_inputs(
        token_ids,
        parallel,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        mask_token_id=MASK,
        max_length=max_length,
    )


# ---- decoder inputs ------------------------------------------------------------------------------------


def test_ar_and_par_rows_at_the_length_limit():
    # max_length 4: three tokens + </s> fit exactly; four lose their last token, never </s>.
    out = inputs([[5, 6, 7], [5, 6, 7, 8], [9], [5, 6, 7, 8]], torch.tensor([0, 0, 1, 1]), max_length=4)
    assert out["decoder_input_ids"].tolist() == [
        [BOS, 5, 6, 7],
        [BOS, 5, 6, 7],
        [MASK, MASK, PAD, PAD],
        [MASK, MASK, MASK, MASK],
    ]
    assert out["labels"].tolist() == [[5, 6, 7, EOS], [5, 6, 7, EOS], [9, EOS, -100, -100], [5, 6, 7, EOS]]
    assert out["decoder_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]]
    # 0/1 flags become a bool mask (the step indexes rows with it)
    assert out["parallel"].dtype == torch.bool and out["parallel"].tolist() == [False, False, True, True]
    for name in ("decoder_input_ids", "decoder_attention_mask", "labels"):
        assert out[name].dtype == torch.long, name


def test_rows_are_padded_to_the_longest_target_not_to_max_length():
    out = inputs([[5], [6, 7]], [False, True], max_length=50)
    assert out["decoder_input_ids"].tolist() == [[BOS, 5, PAD], [MASK, MASK, MASK]]
    assert out["labels"].tolist() == [[5, EOS, -100], [6, 7, EOS]]
    assert out["decoder_attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]


def test_max_length_one_keeps_only_the_end_token_and_zero_is_refused():
    out = inputs([[5, 6], []], [False, True], max_length=1)
    assert out["decoder_input_ids"].tolist() == [[BOS], [MASK]]
    assert out["labels"].tolist() == [[EOS], [EOS]]
    assert out["decoder_attention_mask"].tolist() == [[1], [1]]
    with pytest.raises(ValueError, match="max_length must be at least 1"):
        inputs([[5]], [False], max_length=0)


def test_an_empty_batch_gives_empty_tensors():
    out = inputs([], torch.zeros(0, dtype=torch.bool))
    for name in ("decoder_input_ids", "decoder_attention_mask", "labels"):
        assert tuple(out[name].shape) == (0, 0), name


def test_parallel_must_be_one_flag_per_caption():
    with pytest.raises(ValueError, match=r"one flag per caption \(2\), got \(2, 1\)"):
        inputs([[5], [6]], torch.zeros(2, 1, dtype=torch.bool))


# ---- the loss ------------------------------------------------------------------------------------------


def smoothed_ce(logits: torch.Tensor, label: int, eps: float) -> float:
    """(1 - eps) on the label, eps spread evenly over the classes, written out with math."""
    values = [float(v) for v in logits]
    log_z = math.log(sum(math.exp(v) for v in values))
    logp = [v - log_z for v in values]
    return -(1 - eps) * logp[label] - eps * sum(logp) / len(logp)


def hand_loss(logits: torch.Tensor, labels: list[list[int]], eps: float, rows=None) -> float:
    terms = [
        smoothed_ce(logits[b, t], label, eps)
        for b, row in enumerate(labels)
        if rows is None or rows[b]
        for t, label in enumerate(row)
        if label != -100
    ]
    return sum(terms) / len(terms)


def test_caption_loss_by_hand_and_in_float32():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1))
    labels = [[3, 0, -100], [4, -100, -100]]
    got = caption_loss(logits, torch.tensor(labels), label_smoothing=0.3)
    assert got.item() == pytest.approx(hand_loss(logits, labels, 0.3), rel=1e-6)
    # half-precision logits (autocast) are scored in float32
    half = caption_loss(logits.bfloat16(), torch.tensor(labels), label_smoothing=0.3)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(hand_loss(logits.bfloat16().float(), labels, 0.3), rel=1e-6)


# ---- the step, with a stand-in model -------------------------------------------------------------------


class WordTokenizer:
    """Captions of space-separated ids; like a real tokenizer it adds <s> ... </s> unless told not to."""

    def __init__(self, **ids):
        ids = {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD, "mask_token_id": MASK, **ids}
        for name, value in ids.items():
            setattr(self, name, value)
        self.calls = []

    def __call__(self, texts, add_special_tokens=True):
        self.calls.append((texts, add_special_tokens))
        ids = [[int(word) for word in text.split()] for text in texts]
        if add_special_tokens:
            ids = [[self.bos_token_id, *row, self.eos_token_id] for row in ids]
        return {"input_ids": ids}


class TableCaptioner(torch.nn.Module):
    """Logits ``table[decoder_input_id] + position[t]`` (so AR and PAR rows differ) and fixed tag logits;
    records the keyword arguments of every call."""

    def __init__(self, max_position_embeddings=512, tagging_head=False, **decoder_ids):
        super().__init__()
        ids = {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD, **decoder_ids}
        decoder = SimpleNamespace(max_position_embeddings=max_position_embeddings, **ids)
        self.config = SimpleNamespace(decoder_config=decoder, tagging_head=tagging_head)
        g = torch.Generator().manual_seed(0)
        self.table = torch.randn(VOCAB, VOCAB, generator=g)
        self.position = torch.randn(200, VOCAB, generator=g)
        self.tag_logits = torch.randn(3, 2, generator=g)
        self.calls = []
        self.eval()

    def forward(self, **kwargs):
        self.calls.append(kwargs)
        ids = kwargs["decoder_input_ids"]
        logits = self.table[ids] + self.position[: ids.shape[1]]
        return SimpleNamespace(logits=logits, tag_logits=self.tag_logits[: ids.shape[0]])


CAPTIONS = ["5 6 7", "8", "9 10"]
TAGS = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])


def clips(texts=CAPTIONS, column="text", tags=None) -> dict:
    waveforms = 0.1 * torch.randn(len(texts), 1600, generator=torch.Generator().manual_seed(0))
    batch = {"waveforms": waveforms, "lengths": torch.full((len(texts),), 1600), column: texts}
    if tags is not None:
        batch["labels"] = tags
    return batch


def captioning(tokenizer=None, augmentation=NO_MIXUP, **kwargs) -> CaptioningStep:
    return CaptioningStep(
        ZipformerFbankFeatureExtractor(), augmentation, tokenizer or WordTokenizer(), **kwargs
    )


def test_defaults_are_ar_rows_the_text_column_and_smoothing_0_1():
    tokenizer, model = WordTokenizer(), TableCaptioner()
    loss, logs = captioning(tokenizer)(model, clips())
    assert tokenizer.calls == [(CAPTIONS, False)]  # the step adds <s> / </s> itself
    ((call,),) = [model.calls]
    assert set(call) == {
        "input_values",
        "attention_mask",
        "decoder_input_ids",
        "decoder_attention_mask",
        "parallel",
    }
    assert call["decoder_input_ids"].tolist() == [[BOS, 5, 6, 7], [BOS, 8, PAD, PAD], [BOS, 9, 10, PAD]]
    assert call["decoder_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert call["parallel"].tolist() == [False, False, False]
    assert call["input_values"].shape[0] == 3 and call["attention_mask"].shape[0] == 3
    labels = [[5, 6, 7, EOS], [8, EOS, -100, -100], [9, 10, EOS, -100]]
    expected = hand_loss(model.table[call["decoder_input_ids"]] + model.position[:4], labels, 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert logs == {
        "caption_loss": pytest.approx(expected, rel=1e-6),
        "ar_loss": pytest.approx(expected, rel=1e-6),
    }


@pytest.mark.parametrize(
    ("positions", "max_length", "limit"),
    [(512, None, 128), (200, 130, 128), (6, None, 6), (6, 8, 6), (6, 4, 4)],
)
def test_the_length_limit_is_the_smallest_of_128_the_positions_and_max_length(positions, max_length, limit):
    model = TableCaptioner(max_position_embeddings=positions)
    long_caption = " ".join(["5"] * 140)
    captioning(max_length=max_length)(model, clips([long_caption, "6"]))
    ((call,),) = [model.calls]
    assert call["decoder_input_ids"].shape == (2, limit)
    assert call["decoder_attention_mask"][0].tolist() == [1] * limit


def draw(seed: int, n: int, prob: float) -> list[bool]:
    torch.manual_seed(seed)
    return (torch.rand(n) < prob).tolist()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_each_row_is_drawn_par_with_the_probability_from_the_seed(seed):
    texts = [str(5 + i % 6) for i in range(8)]
    model = TableCaptioner()
    torch.manual_seed(seed)
    captioning(parallel_decoding_prob=0.4)(model, clips(texts))
    assert model.calls[-1]["parallel"].tolist() == draw(seed, 8, 0.4)
    for prob, expected in ((0.0, [False] * 8), (1.0, [True] * 8)):
        captioning(parallel_decoding_prob=prob)(model, clips(texts))
        assert model.calls[-1]["parallel"].tolist() == expected


def test_a_mixed_batch_logs_each_kinds_smoothed_loss_by_hand():
    seed = next(s for s in range(100) if draw(s, 3, 0.5) == [True, False, True])
    model = TableCaptioner()
    torch.manual_seed(seed)
    loss, logs = captioning(parallel_decoding_prob=0.5, label_smoothing=0.2)(model, clips())
    ((call,),) = [model.calls]
    assert call["decoder_input_ids"].tolist() == [
        [MASK, MASK, MASK, MASK],
        [BOS, 8, PAD, PAD],
        [MASK] * 3 + [PAD],
    ]
    logits = model.table[call["decoder_input_ids"]] + model.position[:4]
    labels = [[5, 6, 7, EOS], [8, EOS, -100, -100], [9, 10, EOS, -100]]
    everything = hand_loss(logits, labels, 0.2)
    assert loss.item() == pytest.approx(everything, rel=1e-6)
    assert logs == {
        "caption_loss": pytest.approx(everything, rel=1e-6),
        "ar_loss": pytest.approx(hand_loss(logits, labels, 0.2, rows=[False, True, False]), rel=1e-6),
        "par_loss": pytest.approx(hand_loss(logits, labels, 0.2, rows=[True, False, True]), rel=1e-6),
    }


def bce(logits: torch.Tensor, targets: torch.Tensor) -> float:
    terms = [
        -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))
        for x, y in zip(logits.flatten().tolist(), targets.flatten().tolist(), strict=True)
    ]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_multi_task_is_mtc_plus_lambda_caption(weight):
    model = TableCaptioner(tagging_head=True)
    loss, logs = captioning(tagging_weight=weight)(model, clips(tags=TAGS))
    caption, _ = captioning()(TableCaptioner(), clips())
    mtc = bce(model.tag_logits, TAGS)
    assert loss.item() == pytest.approx(mtc + weight * caption.item(), rel=1e-6)
    assert logs["mtc_loss"] == pytest.approx(mtc, rel=1e-6)
    assert logs["caption_loss"] == pytest.approx(caption.item(), rel=1e-6)
    assert set(logs) == {"caption_loss", "ar_loss", "mtc_loss"}


def test_multi_task_needs_the_tags_and_the_tagging_head():
    with pytest.raises(ValueError, match=r"multi-hot tags in batch\['labels'\]"):
        captioning(tagging_weight=0.5)(TableCaptioner(tagging_head=True), clips())
    with pytest.raises(ValueError, match="tagging_head=True"):
        captioning(tagging_weight=0.5)(TableCaptioner(tagging_head=False), clips(tags=TAGS))
    # without the multi-task weight, tags in the batch are ignored
    _, logs = captioning()(TableCaptioner(tagging_head=True), clips(tags=TAGS))
    assert "mtc_loss" not in logs


def test_captions_come_from_text_column_as_a_list():
    tokenizer = WordTokenizer()
    model = TableCaptioner()
    captioning(tokenizer, text_column="caption")(model, clips(tuple(CAPTIONS), column="caption"))
    assert tokenizer.calls == [(CAPTIONS, False)]
    with pytest.raises(TypeError, match=r"batch\['caption'\] must be a list of captions"):
        captioning(text_column="caption")(TableCaptioner(), clips("5 6", column="caption"))


@pytest.mark.parametrize("name", ["bos_token_id", "eos_token_id", "pad_token_id"])
def test_the_decoders_special_ids_must_be_the_tokenizers(name):
    model = TableCaptioner(**{name: 9})
    with pytest.raises(ValueError, match=f"the tokenizer's {name} "):
        captioning()(model, clips())


@pytest.mark.parametrize("name", ["bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id"])
def test_a_tokenizer_without_a_special_token_is_refused(name):
    with pytest.raises(ValueError, match=f"the tokenizer has no {name.removesuffix('_id')}:"):
        captioning(WordTokenizer(**{name: None}))
    captioning(WordTokenizer(**{name: 0}))  # id 0 is an id, not a missing one


def test_argument_bounds():
    for prob in (0.0, 1.0):
        captioning(parallel_decoding_prob=prob)
    for prob in (-0.01, 1.01):
        with pytest.raises(ValueError, match="parallel_decoding_prob must be in"):
            captioning(parallel_decoding_prob=prob)
    captioning(tagging_weight=0.0)
    with pytest.raises(ValueError, match="tagging_weight must be >= 0"):
        captioning(tagging_weight=-0.01)
    with pytest.raises(ValueError, match="cannot use mixup"):
        captioning(augmentation=AugmentationArguments(mixup_prob=0.01))
