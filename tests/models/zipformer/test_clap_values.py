"""ZipformerForAudioTextContrastive's computations against values written out by hand: the projections
(Linear -> ReLU -> Linear), the embeddings through `forward` with padded audio and text, one modality at a
time, the parts that carry no parameters, and every refusal's whole message."""

import pytest
import torch
import torch.nn.functional as F
from test_clap_model import TINY_BERT, build, inputs
from test_modeling_zipformer import TINY
from transformers import BertConfig, BertModel

from hf_audiorep.modeling.configuration_zipformer import ZipformerConfig
from hf_audiorep.modeling.modeling_zipformer_clap import (
    ZipformerForAudioTextContrastive,
    init_text_encoder_from,
)


def _project(projection, x):
    """Auden's projection by hand from its two linear layers' weights."""
    first, second = projection[0], projection[2]
    hidden = torch.clamp(x @ first.weight.T + first.bias, min=0)
    return hidden @ second.weight.T + second.bias


def test_both_projections_are_linear_relu_linear_by_hand():
    model = build()
    for projection in (model.audio_projection, model.text_projection):
        assert [type(layer).__name__ for layer in projection] == ["Linear", "ReLU", "Linear"]
        assert projection[2].weight.shape == (12, 12)
    audio, ids = inputs(batch=2)
    with torch.no_grad():
        frames = model.zipformer(audio).last_hidden_state
        expected_audio = F.normalize(_project(model.audio_projection, frames).mean(dim=1), dim=-1)
        cls = model.text_model(input_ids=ids).last_hidden_state[:, 0]
        expected_text = F.normalize(_project(model.text_projection, cls), dim=-1)
        out = model(audio, input_ids=ids)
    torch.testing.assert_close(out.audio_embeds, expected_audio, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.text_embeds, expected_text, atol=1e-5, rtol=1e-5)


def test_forward_passes_both_padding_masks_on():
    model = build(text_pooling="mean")  # padding tokens would enter the mean, not only through attention
    audio, ids = inputs(batch=1, frames=50, tokens=5)
    padded_audio = torch.cat([audio, 5 * torch.randn(1, 30, TINY["num_mel_bins"])], dim=1)
    audio_mask = torch.tensor([[1] * 50 + [0] * 30])
    padded_ids = torch.cat([ids, torch.full((1, 4), 9)], dim=1)
    text_mask = torch.tensor([[1] * 5 + [0] * 4])
    with torch.no_grad():
        alone = model(audio, input_ids=ids)
        padded = model(padded_audio, audio_mask, input_ids=padded_ids, text_attention_mask=text_mask)
        unmasked = model(padded_audio, input_ids=padded_ids)
    torch.testing.assert_close(padded.audio_embeds, alone.audio_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.text_embeds, alone.text_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.logits_per_audio, alone.logits_per_audio, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(unmasked.audio_embeds, alone.audio_embeds, atol=1e-3)
    assert not torch.allclose(unmasked.text_embeds, alone.text_embeds, atol=1e-3)


def test_one_modality_at_a_time():
    model = build()
    audio, ids = inputs(batch=2)
    with torch.no_grad():
        audio_only = model(audio)
        text_only = model(input_ids=ids)
        torch.testing.assert_close(audio_only.audio_embeds, model.get_audio_features(audio))
        torch.testing.assert_close(text_only.text_embeds, model.get_text_features(ids))
    for out in (audio_only, text_only):
        assert out.loss is None and out.logits_per_audio is None and out.logits_per_text is None
        torch.testing.assert_close(out.logit_scale, torch.tensor(1 / 0.07))
    assert audio_only.text_embeds is None and text_only.audio_embeds is None


def test_the_parts_without_parameters():
    model = build(text_frames_norm="batch")
    assert list(model.text_frames_norm.parameters()) == [] and not model.text_frames_norm.affine
    assert model.text_model.pooler is None  # the [CLS] state is the embedding, not BERT's NSP pooler


def test_every_refusal_says_what_is_wrong(tmp_path):
    with pytest.raises(ValueError) as excinfo:
        ZipformerForAudioTextContrastive(ZipformerConfig(**TINY))
    assert str(excinfo.value) == (
        "ZipformerForAudioTextContrastive needs config.text_config (a BertConfig for the text tower, e.g. "
        "BertConfig(**TEXT_ENCODER_PRESETS['small'], vocab_size=len(tokenizer))); it is None"
    )
    model = build()
    audio, ids = inputs(batch=3)
    with pytest.raises(ValueError) as excinfo:
        model()
    assert str(excinfo.value) == "ZipformerForAudioTextContrastive needs input_values, input_ids or both"
    with pytest.raises(ValueError) as excinfo:
        model(input_ids=ids, return_loss=True)
    assert str(excinfo.value) == "return_loss=True needs both input_values and input_ids"
    with pytest.raises(ValueError) as excinfo:
        model(audio, input_ids=ids[:2], return_loss=True)
    assert str(excinfo.value) == "return_loss=True needs one text per clip; got 3 clips and 2 texts"
    with pytest.raises(ValueError) as excinfo:
        model(audio[:2], input_ids=ids, return_loss=True)
    assert str(excinfo.value) == "return_loss=True needs one text per clip; got 2 clips and 3 texts"

    BertModel(BertConfig(**{**TINY_BERT, "vocab_size": 41, "hidden_size": 20})).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as excinfo:
        init_text_encoder_from(model, str(tmp_path))
    assert str(excinfo.value) == (
        f"the text encoder {str(tmp_path)!r} does not fit the model's text_config: "
        "vocab_size 41 (checkpoint) != 40 (model); hidden_size 20 (checkpoint) != 16 (model) "
        "(build the model with text_config=BertConfig.from_pretrained(...) of that checkpoint)"
    )


def test_the_audio_projection_reads_frames_standardised_over_the_valid_frames_only():
    """In training (batch statistics) the padding is left out of the frames' standardisation: what the
    projection receives is `_normalise_valid_frames` of the encoder's frames under its frame mask."""
    model = build(text_frames_norm="batch").train()
    audio, _ = inputs(batch=3, frames=60)
    mask = torch.ones(3, 60, dtype=torch.long)
    mask[1:, 40:] = 0
    seen = {}
    model.zipformer.register_forward_hook(lambda module, args, out: seen.update(encoded=out))
    model.audio_projection.register_forward_hook(lambda module, args, out: seen.update(read=args[0]))
    model.get_audio_features(audio, mask)
    frames, frame_mask = seen["encoded"].last_hidden_state, seen["encoded"].attention_mask
    assert not frame_mask.bool().all()
    valid = frames[frame_mask.bool()]
    expected = (frames - valid.mean(0)) / torch.sqrt(valid.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(
        seen["read"][frame_mask.bool()], expected[frame_mask.bool()], atol=1e-4, rtol=1e-4
    )
