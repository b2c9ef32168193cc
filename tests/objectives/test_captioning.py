"""UTS's captioning objective: the AR / PAR decoder inputs on a hand example, the label-smoothed loss against
a hand computation, and the step (finite loss, gradients into the encoder, the multi-task sum, the AR / PAR
draw, mixup refused)."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_audiorep.data.text_tokenizers import train_bpe_tokenizer
from hf_audiorep.modeling import ZipformerFbankFeatureExtractor, caption_decoder_config
from hf_audiorep.modeling.configuration_zipformer import ZipformerConfig
from hf_audiorep.modeling.modeling_zipformer import mtc_logits
from hf_audiorep.modeling.modeling_zipformer_caption import ZipformerForConditionalGeneration
from hf_audiorep.objectives.captioning import CaptioningStep, caption_decoder_inputs, caption_loss
from hf_audiorep.objectives.classification import AugmentationArguments
from hf_audiorep.objectives.features import waveform_features

BOS, PAD, EOS, MASK = 0, 1, 2, 4
CAPTIONS = ["a dog barks in a yard", "rain on a roof", "an engine idles", "birds sing at dawn"]
NO_MIXUP = AugmentationArguments(mixup_prob=0.0, freq_mask=0, time_mask=0)


def ids(token_ids, parallel, max_length=10):
    return caption_decoder_inputs(
        token_ids,
        torch.tensor(parallel),
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        mask_token_id=MASK,
        max_length=max_length,
    )


def test_decoder_inputs_ar_shift_par_masks_padding():
    out = ids([[11, 12, 13], [21], [31, 32]], [False, True, True])
    # AR: <s> + tokens -> tokens + </s>; PAR: one <mask> per target token, no token of the caption.
    assert out["decoder_input_ids"].tolist() == [
        [BOS, 11, 12, 13],
        [MASK, MASK, PAD, PAD],
        [MASK, MASK, MASK, PAD],
    ]
    assert out["labels"].tolist() == [[11, 12, 13, EOS], [21, EOS, -100, -100], [31, 32, EOS, -100]]
    assert out["decoder_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert out["parallel"].tolist() == [False, True, True]
    par = out["parallel"]
    assert set(out["decoder_input_ids"][par].unique().tolist()) <= {MASK, PAD}


def test_decoder_inputs_truncate_but_keep_eos():
    out = ids([[11, 12, 13, 14, 15], [21]], [False, True], max_length=3)
    assert out["labels"].tolist() == [[11, 12, EOS], [21, EOS, -100]]
    assert out["decoder_input_ids"].tolist() == [[BOS, 11, 12], [MASK, MASK, PAD]]
    with pytest.raises(ValueError, match="one flag per caption"):
        ids([[1], [2]], [True])


def test_caption_loss_is_label_smoothed_cross_entropy_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, 4, -100], [0, -100, -100]])
    eps = 0.1
    terms = []
    for b, t in ((0, 0), (0, 1), (1, 0)):
        logp = logits[b, t].log_softmax(-1)
        # (1 - eps) on the label, eps spread evenly over all 5 classes
        terms.append(-(1 - eps) * logp[labels[b, t]] - eps * logp.mean())
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(caption_loss(logits, labels, label_smoothing=eps), expected)
    assert not math.isclose(caption_loss(logits, labels, 0.0).item(), expected.item(), rel_tol=1e-4)
    assert caption_loss(logits, labels).item() == pytest.approx(expected.item())  # 0.1 is the default


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(CAPTIONS, vocab_size=280)


def captioner(tokenizer, **overrides):
    decoder = caption_decoder_config(tokenizer)
    torch.manual_seed(0)
    return ZipformerForConditionalGeneration(
        ZipformerConfig.from_preset("zipformer-small", decoder_config=decoder, **overrides)
    )


def batch(num_labels=0):
    generator = torch.Generator().manual_seed(0)
    waveforms = 0.1 * torch.randn(4, 16000, generator=generator)
    lengths = torch.tensor([16000, 12000, 16000, 9000])
    waveforms[1, 12000:] = 0
    waveforms[3, 9000:] = 0
    out = {"waveforms": waveforms, "lengths": lengths, "text": CAPTIONS}
    if num_labels:
        out["labels"] = (torch.rand(4, num_labels, generator=generator) > 0.5).float()
    return out


def step(tokenizer, **kwargs):
    return CaptioningStep(ZipformerFbankFeatureExtractor(), NO_MIXUP, tokenizer, **kwargs)


def test_step_loss_is_finite_and_reaches_the_encoder(tokenizer):
    model = captioner(tokenizer).train()
    loss, logs = step(tokenizer, parallel_decoding_prob=0.5)(model, batch())
    assert torch.isfinite(loss) and logs["caption_loss"] == pytest.approx(loss.item())
    loss.backward()
    encoder_grads = [p.grad for p in model.zipformer.parameters() if p.grad is not None]
    assert encoder_grads and sum(g.abs().sum() for g in encoder_grads) > 0


def test_step_loss_is_caption_loss_of_the_models_logits(tokenizer):
    model = captioner(tokenizer).eval()
    loss, _ = step(tokenizer, label_smoothing=0.2)(model, batch())
    features, mask = waveform_features(
        ZipformerFbankFeatureExtractor(), batch()["waveforms"], batch()["lengths"]
    )
    token_ids = tokenizer(CAPTIONS, add_special_tokens=False)["input_ids"]
    inputs = ids(token_ids, [False] * 4, max_length=128)
    labels = inputs.pop("labels")
    logits = model(input_values=features, attention_mask=mask, **inputs).logits
    torch.testing.assert_close(loss, caption_loss(logits, labels, 0.2))


@pytest.mark.parametrize(("prob", "kind"), [(0.0, "ar_loss"), (1.0, "par_loss")])
def test_parallel_decoding_prob_zero_and_one_give_one_kind(tokenizer, monkeypatch, prob, kind):
    model = captioner(tokenizer).eval()
    seen = []
    forward = model.forward

    def spy(*args, **kwargs):
        seen.append((kwargs["parallel"].clone(), kwargs["decoder_input_ids"].clone()))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    loss, logs = step(tokenizer, parallel_decoding_prob=prob)(model, batch())
    ((parallel, inputs),) = seen
    assert parallel.tolist() == [prob == 1.0] * 4
    assert set(logs) == {"caption_loss", kind}
    assert logs[kind] == pytest.approx(loss.item())
    if prob == 1.0:  # PAR rows read nothing of their caption
        assert set(inputs.unique().tolist()) <= {tokenizer.mask_token_id, tokenizer.pad_token_id}


def draw(seed):
    """The step's PAR draw for 4 clips at probability 0.5 after ``torch.manual_seed(seed)``."""
    return torch.rand(4, generator=torch.Generator().manual_seed(seed)) < 0.5


def test_mixed_batch_logs_each_kinds_loss(tokenizer):
    model = captioner(tokenizer).eval()
    # A seed whose draw (the step's first use of the RNG in eval mode) mixes AR and PAR rows.
    seed = next(s for s in range(100) if 0 < int(draw(s).sum()) < 4)
    torch.manual_seed(seed)
    loss, logs = step(tokenizer, parallel_decoding_prob=0.5)(model, batch())
    parallel = draw(seed)
    token_counts = torch.tensor(
        [len(t) + 1 for t in tokenizer(CAPTIONS, add_special_tokens=False)["input_ids"]]
    )
    ar_tokens, par_tokens = token_counts[~parallel].sum(), token_counts[parallel].sum()
    # The batch loss is the token-weighted mean of the two kinds' losses.
    combined = (ar_tokens * logs["ar_loss"] + par_tokens * logs["par_loss"]) / (ar_tokens + par_tokens)
    assert combined.item() == pytest.approx(loss.item(), rel=1e-5)
    assert logs["ar_loss"] != pytest.approx(logs["par_loss"])


def test_multi_task_adds_the_mtc_term(tokenizer):
    model = captioner(tokenizer, tagging_head=True, num_labels=6).eval()
    data = batch(num_labels=6)
    weight = 0.7
    loss, logs = step(tokenizer, tagging_weight=weight)(model, data)
    caption_only, _ = step(tokenizer)(model, data)
    features, mask = waveform_features(ZipformerFbankFeatureExtractor(), data["waveforms"], data["lengths"])
    encoded = model.zipformer(features, mask)
    tag_logits = mtc_logits(model, encoded.last_hidden_state, encoded.attention_mask)
    mtc = F.binary_cross_entropy_with_logits(tag_logits, data["labels"])
    torch.testing.assert_close(loss, mtc + weight * caption_only)
    assert logs["mtc_loss"] == pytest.approx(mtc.item())
    with pytest.raises(ValueError, match="tagging_head"):
        step(tokenizer, tagging_weight=1.0)(captioner(tokenizer), data)


def test_mixup_and_mismatched_tokenizers_are_refused(tokenizer):
    with pytest.raises(ValueError, match="mixup"):
        CaptioningStep(ZipformerFbankFeatureExtractor(), AugmentationArguments(), tokenizer)
    other = train_bpe_tokenizer(["x y z"], vocab_size=270)
    other.add_special_tokens({"pad_token": "<newpad>"})
    with pytest.raises(ValueError, match="pad_token_id"):
        step(other)(captioner(tokenizer), batch())
