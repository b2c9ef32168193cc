"""ZipformerForAudioTextContrastive (UTS's contrastive variant): shapes, unit-norm embeddings, padding
independence, the temperature (fixed buffer or learned parameter), save/load, AutoModel giving the encoder,
the text tower's initialisation from a BERT checkpoint, and the errors."""

import math

import pytest
import torch
from test_modeling_zipformer import TINY
from transformers import AutoModel, BertConfig, BertModel

from hf_audiorep.modeling.configuration_zipformer import ZipformerConfig
from hf_audiorep.modeling.modeling_zipformer import ZipformerModel
from hf_audiorep.modeling.modeling_zipformer_clap import (
    MAX_LOGIT_SCALE,
    ZipformerForAudioTextContrastive,
    init_text_encoder_from,
)

TINY_BERT = dict(
    vocab_size=40,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=24,
)


def clap_config(**overrides) -> ZipformerConfig:
    fields = {**TINY, "text_config": BertConfig(**TINY_BERT), "projection_dim": 12, **overrides}
    return ZipformerConfig(**fields)


def build(seed: int = 0, **overrides) -> ZipformerForAudioTextContrastive:
    torch.manual_seed(seed)
    return ZipformerForAudioTextContrastive(clap_config(**overrides)).eval()


def inputs(batch: int = 3, frames: int = 60, tokens: int = 7, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, frames, TINY["num_mel_bins"], generator=generator)
    ids = torch.randint(4, TINY_BERT["vocab_size"], (batch, tokens), generator=generator)
    ids[:, 0] = 2  # a [CLS]-like first token
    return audio, ids


def test_shapes_unit_norm_and_logits():
    model = build()
    audio, ids = inputs()
    with torch.no_grad():
        out = model(audio, input_ids=ids, return_loss=True)
    assert out.audio_embeds.shape == out.text_embeds.shape == (3, 12)
    torch.testing.assert_close(out.audio_embeds.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(3))
    expected = out.audio_embeds @ out.text_embeds.T / 0.07
    torch.testing.assert_close(out.logits_per_audio, expected)
    torch.testing.assert_close(out.logits_per_text, expected.T)
    targets = torch.arange(3)
    loss = (
        torch.nn.functional.cross_entropy(expected, targets)
        + torch.nn.functional.cross_entropy(expected.T, targets)
    ) / 2
    torch.testing.assert_close(out.loss, loss)
    # each tower alone; the text tower's output is its own [CLS] state, projected
    torch.testing.assert_close(model.get_audio_features(audio), out.audio_embeds)
    cls = model.text_model(input_ids=ids).last_hidden_state[:, 0]
    torch.testing.assert_close(
        model.get_text_features(ids), torch.nn.functional.normalize(model.text_projection(cls), dim=-1)
    )


def test_audio_embedding_is_the_mean_of_projected_frames():
    model = build()
    audio, _ = inputs(batch=2)
    # An untrained encoder's frames hardly vary in time, which would hide where the pooling sits (before or
    # after the ReLU): its output is replaced by frames that do.
    frames = torch.randn(2, 13, TINY["encoder_dim"][1], generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, 9:] = 0

    def replace(module, args, output):
        output.last_hidden_state, output.attention_mask = frames, mask
        return output

    hook = model.zipformer.register_forward_hook(replace)
    try:
        with torch.no_grad():
            got = model.get_audio_features(audio)
    finally:
        hook.remove()
    with torch.no_grad():
        projected = model.audio_projection(frames)
        expected = torch.stack([projected[0].mean(0), projected[1, :9].mean(0)])
    torch.testing.assert_close(got, torch.nn.functional.normalize(expected, dim=-1))


def test_padding_frames_do_not_change_the_audio_embedding():
    model = build()
    audio, _ = inputs(batch=1, frames=50)
    padded = torch.cat([audio, 5 * torch.randn(1, 30, TINY["num_mel_bins"])], dim=1)
    mask = torch.zeros(1, 80, dtype=torch.long)
    mask[:, :50] = 1
    with torch.no_grad():
        alone = model.get_audio_features(audio)
        with_padding = model.get_audio_features(padded, mask)
        unmasked = model.get_audio_features(padded)
    torch.testing.assert_close(with_padding, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked, alone, atol=1e-3)  # the padding would change it if it entered


def test_text_padding_does_not_change_the_text_embedding():
    model = build()
    _, ids = inputs(batch=1, tokens=5)
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 4])
    with torch.no_grad():
        torch.testing.assert_close(model.get_text_features(padded, mask), model.get_text_features(ids))


def test_save_load_round_trip_and_automodel_gives_the_encoder(tmp_path):
    model = build(learn_temperature=True, contrastive_temperature=0.05)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)  # a trained value, not the initial one
    audio, ids = inputs()
    with torch.no_grad():
        before = model(audio, input_ids=ids)
    model.save_pretrained(tmp_path)
    loaded = ZipformerForAudioTextContrastive.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.config.text_config, BertConfig)
    assert loaded.config.text_config.hidden_size == 16
    with torch.no_grad():
        after = loaded(audio, input_ids=ids)
    torch.testing.assert_close(after.audio_embeds, before.audio_embeds)
    torch.testing.assert_close(after.text_embeds, before.text_embeds)
    torch.testing.assert_close(after.logit_scale, torch.tensor(math.exp(2.5)))

    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert type(encoder) is ZipformerModel and model.base_model is model.zipformer
    with torch.no_grad():
        torch.testing.assert_close(encoder(audio).last_hidden_state, model.zipformer(audio).last_hidden_state)


def test_fixed_temperature_is_a_buffer_and_learned_one_a_clamped_parameter():
    fixed = build(contrastive_temperature=0.1)
    assert "logit_scale" not in dict(fixed.named_parameters())
    assert "logit_scale" in dict(fixed.named_buffers())
    torch.testing.assert_close(fixed.get_logit_scale(), torch.tensor(10.0))

    learned = build(learn_temperature=True, contrastive_temperature=0.1)
    assert learned.logit_scale.requires_grad and "logit_scale" in dict(learned.named_parameters())
    torch.testing.assert_close(learned.get_logit_scale(), torch.tensor(10.0))
    audio, ids = inputs()
    learned(audio, input_ids=ids, return_loss=True).loss.backward()
    assert learned.logit_scale.grad is not None and learned.logit_scale.grad != 0
    with torch.no_grad():
        learned.logit_scale.fill_(10.0)  # exp(10) would be a temperature of 5e-5
    torch.testing.assert_close(learned.get_logit_scale(), torch.tensor(MAX_LOGIT_SCALE))


def test_init_weights_sets_the_logit_scale_and_bert_init_for_the_text_tower():
    model = build(contrastive_temperature=0.02)
    torch.testing.assert_close(model.logit_scale, torch.tensor(math.log(50.0)))
    # BERT's own initialisation: normal(0, initializer_range) embeddings, not PyTorch's N(0, 1)
    std = model.text_model.embeddings.word_embeddings.weight.std()
    assert abs(std - 0.02) < 0.005


def test_error_without_text_config():
    with pytest.raises(ValueError, match="text_config"):
        ZipformerForAudioTextContrastive(ZipformerConfig(**TINY))


def test_return_loss_needs_both_modalities():
    model = build()
    audio, ids = inputs()
    with pytest.raises(ValueError, match="both"):
        model(audio, return_loss=True)
    out = model(input_ids=ids)
    assert out.audio_embeds is None and out.text_embeds.shape == (3, 12)


def test_init_text_encoder_from_a_saved_bert(tmp_path):
    torch.manual_seed(5)
    bert = BertModel(BertConfig(**TINY_BERT))  # with a pooler, which the model drops
    bert.save_pretrained(tmp_path / "bert")
    model = build()
    init_text_encoder_from(model, str(tmp_path / "bert"))
    for name, value in bert.state_dict().items():
        if not name.startswith("pooler."):
            torch.testing.assert_close(model.text_model.state_dict()[name], value, msg=name)

    BertModel(BertConfig(**{**TINY_BERT, "vocab_size": 41})).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match=r"vocab_size 41 \(checkpoint\) != 40 \(model\)"):
        init_text_encoder_from(model, str(tmp_path / "other"))


def test_text_frames_norm_standardises_the_frames_the_audio_projection_reads():
    plain, normed = build(), build(text_frames_norm="batch")
    normed.load_state_dict(plain.state_dict(), strict=False)  # the same weights; the norm has no parameters
    assert plain.text_frames_norm is None and isinstance(normed.text_frames_norm, torch.nn.BatchNorm1d)
    values, _ = inputs()
    with torch.no_grad():
        # eval: BatchNorm's running statistics (mean 0, variance 1 at start) leave the frames as they are
        torch.testing.assert_close(normed.get_audio_features(values), plain.get_audio_features(values))
        normed.text_frames_norm.running_mean.fill_(0.5)
        assert not torch.allclose(normed.get_audio_features(values), plain.get_audio_features(values))
        # training: the frames are standardised over the batch, whatever the running statistics say
        normed.text_frames_norm.train()
        shifted = normed.get_audio_features(values)
        normed.text_frames_norm.running_mean.fill_(0.0)
        torch.testing.assert_close(normed.get_audio_features(values), shifted)


def test_text_pooling_mean_averages_the_valid_token_states():
    cls_model, mean_model = build(), build(text_pooling="mean")
    mean_model.load_state_dict(cls_model.state_dict())  # the same weights; pooling has no parameters
    _, ids = inputs(batch=2, tokens=6)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    with torch.no_grad():
        hidden = mean_model.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
        by_hand = torch.stack([hidden[0].mean(0), hidden[1, :4].mean(0)])
        expected = torch.nn.functional.normalize(mean_model.text_projection(by_hand), dim=-1)
        torch.testing.assert_close(mean_model.get_text_features(ids, mask), expected)
        # [CLS] pooling reads the first state only: a different embedding from the same weights
        assert not torch.allclose(cls_model.get_text_features(ids, mask), expected, atol=1e-3)
        # no mask: every token counts
        unmasked = torch.nn.functional.normalize(mean_model.text_projection(hidden[0].mean(0)), dim=-1)
        torch.testing.assert_close(mean_model.get_text_features(ids[:1]), unmasked[None])


def test_text_pooling_is_saved_and_checked(tmp_path):
    build(text_pooling="mean").save_pretrained(tmp_path)
    assert ZipformerForAudioTextContrastive.from_pretrained(tmp_path).config.text_pooling == "mean"
    with pytest.raises(ValueError, match="text_pooling"):
        clap_config(text_pooling="max")
