"""The frozen encoder's layer features and their cache, on tiny random AST, wav2vec2 and AudioMAE encoders."""

import json

import numpy as np
import pytest
import torch
from probing_utils import SAMPLE_RATE, TONES, layer_encoder, tone_batches

from hf_audiorep.evaluation.probing import (
    CacheBudgetError,
    FeatureCache,
    ProbedEncoder,
    build_feature_cache,
    build_probe,
    group_tokens,
    plan_cache,
    predict,
    train_probe,
)
from hf_audiorep.evaluation.probing.cache import GB
from hf_audiorep.modeling import frames_to_patch_mask


def _build(encoder, batches, directory, fingerprint="a", **kwargs):
    width = batches[0]["waveforms"].shape[1]
    return build_feature_cache(
        encoder,
        batches,
        directory,
        num_clips=sum(len(b["lengths"]) for b in batches),
        feature_shape=encoder.feature_shape(width, SAMPLE_RATE),
        sample_rate=SAMPLE_RATE,
        fingerprint=fingerprint,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------- the encoder


@pytest.mark.parametrize(
    ("family", "layers", "tokens", "dim"),
    # AST: CLS + distillation token + 8 x 8 patches; wav2vec2: 2 s through strides 5 and 4;
    # AudioMAE: CLS + 13 x 8 patches of the 208-frame window.
    [("ast", 3, 66, 32), ("wav2vec2", 3, 1598, 32), ("audiomae", 5, 105, 192)],
)
def test_every_hidden_state_is_a_layer_of_token_features(family, layers, tokens, dim):
    encoder = layer_encoder(family)
    batch = tone_batches(2, seconds=2.0)[0]
    features, mask = encoder.layer_features(batch["waveforms"], batch["lengths"], SAMPLE_RATE)
    assert features.shape == (2, layers, tokens, dim)
    assert features.dtype == torch.float32 and mask.dtype == torch.bool and mask.all()
    assert encoder.layer_names == ["embeddings"] + [f"layer {i}" for i in range(1, layers)]
    with torch.no_grad():
        inputs = (
            encoder._library_inputs(batch["waveforms"], batch["lengths"])
            if family == "audiomae"
            else encoder._auto_inputs(encoder.model, batch["waveforms"], batch["lengths"])[0]
        )
        hidden = encoder.model(**inputs, output_hidden_states=True).hidden_states
    # hidden_states[0] is the embedding output, hidden_states[-1] the last block's: in that order.
    torch.testing.assert_close(features[:, 0], hidden[0])
    torch.testing.assert_close(features[:, -1], hidden[-1])
    assert encoder.feature_shape(32000, SAMPLE_RATE) == (layers, tokens, dim)


def test_layers_select_and_order_hidden_states_and_bad_ones_are_refused():
    encoder = layer_encoder("audiomae", layers=[-1, 1])
    batch = tone_batches(2)[0]
    features, _ = encoder.layer_features(batch["waveforms"], batch["lengths"], SAMPLE_RATE)
    every, _ = layer_encoder("audiomae").layer_features(batch["waveforms"], batch["lengths"], SAMPLE_RATE)
    torch.testing.assert_close(features, every[:, [4, 1]])
    assert encoder.layer_indices == [4, 1] and encoder.layer_names == ["layer 4", "layer 1"]
    with pytest.raises(ValueError, match=r"layers \[7\] are out of range.*5 hidden states"):
        layer_encoder("audiomae", layers=[7]).layer_features(
            batch["waveforms"], batch["lengths"], SAMPLE_RATE
        )
    with pytest.raises(ValueError, match="token_pooling must be a positive integer"):
        layer_encoder("ast", token_pooling=0)


def test_padded_tokens_are_masked_for_library_and_wav2vec2_encoders():
    batch = tone_batches(4, seconds=2.0, short=True)[0]  # clips 1 and 3: 1 s of 2
    wav2vec2 = layer_encoder("wav2vec2")
    _, mask = wav2vec2.layer_features(batch["waveforms"], batch["lengths"], SAMPLE_RATE)
    expected = wav2vec2.model._get_feature_vector_attention_mask(
        mask.shape[1], (torch.arange(32000) < batch["lengths"][:, None]).long()
    )
    torch.testing.assert_close(mask, expected.bool())
    assert mask[0].all() and 0.45 < mask[1].float().mean() < 0.55

    audiomae = layer_encoder("audiomae")
    _, mask = audiomae.layer_features(batch["waveforms"], batch["lengths"], SAMPLE_RATE)
    _, frames = audiomae.feature_extractor.batch_features(batch["waveforms"], batch["lengths"])
    patches = frames_to_patch_mask(frames, 16, 8).bool()
    torch.testing.assert_close(mask[:, 1:], patches)
    assert mask[:, 0].all()  # the CLS token always carries the clip
    assert mask[0].sum() > mask[1].sum() > 1


def test_token_pooling_averages_real_tokens_in_groups():
    features = torch.arange(2 * 1 * 5 * 1, dtype=torch.float32).view(2, 1, 5, 1)
    mask = torch.tensor([[True, True, True, True, True], [True, True, True, False, False]])
    pooled, pooled_mask = group_tokens(features, mask, 2)
    torch.testing.assert_close(pooled[0, 0, :, 0], torch.tensor([0.5, 2.5, 4.0]))
    torch.testing.assert_close(pooled[1, 0, :2, 0], torch.tensor([5.5, 7.0]))  # the padded token is left out
    assert pooled_mask.tolist() == [[True, True, True], [True, True, False]]
    encoder = layer_encoder("wav2vec2", token_pooling=4)
    batch = tone_batches(2, seconds=1.0)[0]
    features, mask = encoder.layer_features(batch["waveforms"], batch["lengths"], SAMPLE_RATE)
    whole, _ = layer_encoder("wav2vec2").layer_features(batch["waveforms"], batch["lengths"], SAMPLE_RATE)
    assert features.shape[2] == -(-whole.shape[2] // 4)
    torch.testing.assert_close(features[:, :, 0], whole[:, :, :4].mean(dim=2))


def test_an_encoder_without_hidden_states_is_refused(monkeypatch):
    encoder = layer_encoder("ast")

    def forward(input_values, output_hidden_states=None):
        return type("Output", (), {"hidden_states": None})()

    monkeypatch.setattr(encoder.model, "forward", forward)
    batch = tone_batches(1)[0]
    with pytest.raises(TypeError, match="ASTModel returned no hidden_states"):
        encoder.layer_features(batch["waveforms"], batch["lengths"], SAMPLE_RATE)


# --------------------------------------------------------------------------------------- frozen encoder


@pytest.mark.parametrize("family", ["ast", "wav2vec2", "audiomae"])
def test_gradients_never_reach_the_frozen_encoder(family):
    encoder = layer_encoder(family)
    encoder.model.train()  # even a model handed over in training mode runs frozen and in eval mode
    encoder.model.requires_grad_(True)
    encoder = type(encoder)(encoder.model, encoder.feature_extractor, encoder.kind)
    torch.manual_seed(0)
    head = build_probe("cgp", 3 if family != "audiomae" else 5, encoder.model.config.hidden_size, len(TONES))
    probed = ProbedEncoder(encoder, head).train()
    assert not encoder.model.training
    assert all(not p.requires_grad for p in encoder.model.parameters())
    assert {name for name, _ in probed.named_parameters()} == {
        f"head.{n}" for n, _ in head.named_parameters()
    }
    batch = tone_batches(4)[0]
    logits = probed(batch["waveforms"], batch["lengths"], SAMPLE_RATE)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"]).backward()
    assert all(p.grad is None for p in encoder.model.parameters())
    assert all(p.grad is not None for p in head.parameters())


# ------------------------------------------------------------------------------------------- the cache


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ast", "wav2vec2"])
def test_cgp_trains_on_the_cache_of_a_transformers_encoder(family, tmp_path):
    encoder = layer_encoder(family)
    batches = tone_batches(24, seconds=0.5 if family == "wav2vec2" else 1.0, short=family == "wav2vec2")
    cache = _build(encoder, batches, tmp_path / "train")
    assert len(cache) == 24 and cache.num_layers == 3 and cache.hidden_size == 32
    assert cache.features.dtype == np.float16
    np.testing.assert_array_equal(cache.labels, torch.cat([b["labels"] for b in batches]).numpy())
    torch.manual_seed(0)
    head = build_probe("cgp", 3, 32, len(TONES), prototypes_per_class=2)
    history = train_probe(head, cache, epochs=6, batch_size=8, learning_rate=0.02)["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    weights = head.layer_weights()
    assert (weights >= 0).all() and torch.isclose(weights.sum(), torch.tensor(1.0))


@pytest.mark.parametrize(
    ("family", "probe"), [("audiomae", "cgp"), ("wav2vec2", "attentive"), ("ast", "cgp")]
)
def test_cached_and_uncached_probing_give_the_same_logits(family, probe, tmp_path):
    encoder = layer_encoder(family)
    batches = tone_batches(
        8, batch_size=4, seconds=0.5 if family == "wav2vec2" else 1.0, short=family != "ast"
    )
    cache = _build(encoder, batches, tmp_path / "cache")
    layers, _, dim = cache.features.shape[1:]
    torch.manual_seed(0)
    options = {"num_heads": 4} if probe == "attentive" else {"gate_granularity": "layer_class"}
    head = build_probe(probe, layers, dim, len(TONES), **options)
    train_probe(head, cache, epochs=2, batch_size=4)  # a trained head, in eval mode after training
    cached, _ = predict(head, cache, batch_size=4)
    probed = ProbedEncoder(encoder, head).eval()
    with torch.no_grad():
        uncached = torch.cat([probed(b["waveforms"], b["lengths"], SAMPLE_RATE) for b in batches]).numpy()
    # NaN features would give NaN logits on both sides, which assert_allclose calls equal.
    assert np.isfinite(cached).all()
    np.testing.assert_allclose(uncached, cached, rtol=1e-5, atol=1e-5)
    # The cache's float16 is the only approximation: without it the logits still agree closely.
    with torch.no_grad():
        exact = torch.cat(
            [ProbedEncoder(encoder, head, None)(b["waveforms"], b["lengths"], SAMPLE_RATE) for b in batches]
        )
    np.testing.assert_allclose(exact.numpy(), cached, atol=0.05)


def test_a_cache_is_reused_while_its_fingerprint_matches(tmp_path, monkeypatch):
    encoder = layer_encoder("ast")
    batches = tone_batches(8, batch_size=4, seconds=1.0)
    shape = encoder.feature_shape(16000, SAMPLE_RATE)

    def build(batches, fingerprint="a", **kwargs):
        return build_feature_cache(
            encoder,
            batches,
            tmp_path / "train",
            num_clips=4 * len(batches),
            feature_shape=shape,
            sample_rate=SAMPLE_RATE,
            fingerprint=fingerprint,
            **kwargs,
        )

    first = build(batches)
    meta = json.loads((tmp_path / "train" / "meta.json").read_text())
    assert meta["num_clips"] == 8 and meta["encoder_seconds"] > 0 and meta["layer_names"][0] == "embeddings"
    assert first.nbytes == sum(p.stat().st_size for p in (tmp_path / "train").iterdir())

    calls = []
    original = type(encoder).layer_features
    monkeypatch.setattr(
        type(encoder), "layer_features", lambda self, *a: calls.append(1) or original(self, *a)
    )
    assert len(build(batches)) == 8
    assert not calls, "a matching cache was encoded again"
    build(batches, overwrite=True)
    assert len(calls) == len(batches)
    calls.clear()
    rebuilt = build(batches[:1], fingerprint="other data")
    assert len(calls) == 1 and len(rebuilt) == 4 and rebuilt.meta["fingerprint"] == "other data"
    assert not (tmp_path / ".tmp-train").exists()

    (tmp_path / "not_a_cache").mkdir()
    (tmp_path / "not_a_cache" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a feature cache"):
        _build(encoder, batches, tmp_path / "not_a_cache")
    assert (tmp_path / "not_a_cache" / "notes.txt").read_text() == "mine"


def test_an_oversized_cache_is_refused_before_encoding_with_the_estimate_and_the_way_out():
    shape = (13, 513, 768)
    plan = plan_cache({"train": 100, "test": 50}, shape, 4 * GB)
    assert plan.total_bytes == 150 * (13 * 513 * 768 * 2 + 513)
    with pytest.raises(CacheBudgetError) as error:
        plan_cache({"train": 1000, "test": 500}, shape, 4 * GB)
    message = str(error.value)
    assert (
        "15.37 GB" in message and "1000 train + 500 test clips x 13 layers x 513 tokens x 768 dims" in message
    )
    assert (
        "--cache_budget_gb 4" in message
        and "--token_pooling 4" in message
        and "at most 390 in all" in message
    )
    # The advice is right: pooling tokens by 4 fits the budget.
    plan_cache({"train": 1000, "test": 500}, (13, -(-513 // 4), 768), 4 * GB)


def test_the_cache_must_fit_the_free_disk_space(tmp_path, monkeypatch):
    usage = type("Usage", (), {"free": int(0.5 * GB)})
    monkeypatch.setattr("hf_audiorep.evaluation.probing.cache.shutil.disk_usage", lambda path: usage)
    with pytest.raises(CacheBudgetError, match=r"over the 0.50 GB free under"):
        plan_cache({"train": 100}, (13, 513, 768), 100 * GB, tmp_path / "cache" / "train")


def test_read_returns_float32_features_and_the_masks(tmp_path):
    encoder = layer_encoder("wav2vec2")
    batches = tone_batches(6, batch_size=3, seconds=1.0, short=True)
    cache = FeatureCache(_build(encoder, batches, tmp_path / "c").directory)
    features, mask, labels = cache.read(np.array([1, 4]))
    assert features.dtype == torch.float32 and features.shape[0] == 2
    assert mask.dtype == torch.bool and not mask[0].all() and mask[1].all()
    torch.testing.assert_close(labels, torch.cat([b["labels"] for b in batches])[[1, 4]])


def test_the_fingerprint_changes_with_everything_the_features_depend_on():
    """A cache is reused only under the same fingerprint: a changed weight, config, front end, layer choice
    or token pooling must give another one (else stale features would be probed)."""
    from probing_utils import tiny_audiomae

    from hf_audiorep.evaluation.probing import LayerFeatureEncoder
    from hf_audiorep.evaluation.probing.cache import encoder_fingerprint

    def fingerprint(edit=None, **options):
        model, feature_extractor = tiny_audiomae(seed=0)
        if edit is not None:
            edit(model, feature_extractor)
        return encoder_fingerprint(LayerFeatureEncoder(model, feature_extractor, "hf_audiorep", **options))

    reference = fingerprint()
    assert fingerprint() == reference  # a rebuilt identical encoder reuses its cache
    assert len(reference) == 64 and int(reference, 16) >= 0  # a SHA-256 hex digest

    def one_weight(model, _):
        with torch.no_grad():
            next(iter(model.state_dict().values())).view(-1)[-1] += 1e-3

    def last_weight(model, _):
        with torch.no_grad():
            list(model.state_dict().values())[-1].view(-1)[0] += 1e-3

    def config(model, _):
        model.config.layer_norm_eps = 1e-5

    def front_end(_, feature_extractor):
        feature_extractor.mean = feature_extractor.mean + 0.5

    variants = {
        "first tensor": fingerprint(one_weight),
        "last tensor": fingerprint(last_weight),
        "config": fingerprint(config),
        "feature extractor": fingerprint(front_end),
        "layers": fingerprint(layers=[0, 1]),
        "token pooling": fingerprint(token_pooling=2),
    }
    for name, value in variants.items():
        assert value != reference, name
    assert len(set(variants.values())) == len(variants)
