"""The probe heads on synthetic layer features: CGP's convex gates, the prototype head, the comparisons."""

import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from probing_utils import ArrayCache

from hf_audiorep.evaluation.probing import (
    PROBES,
    ConvexGatedProbe,
    PrototypeProbe,
    build_probe,
    evaluate_probe,
    layer_weights_report,
    load_probe_head,
    position_means,
    position_share,
    probe_loss,
    save_probe_head,
    train_probe,
    write_layer_weights,
)

B, L, T, D, C = 3, 4, 7, 16, 5


def _features(seed: int = 0, layers: int = L) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # Layers on very different scales, as a transformer's are.
    scales = torch.logspace(0, 2, layers).view(1, layers, 1, 1)
    features = torch.randn(B, layers, T, D, generator=generator) * scales + 0.5
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    return features, mask


def _cgp(granularity: str = "layer", layers: int = L, seed: int = 0) -> ConvexGatedProbe:
    torch.manual_seed(seed)
    head = ConvexGatedProbe(layers, D, C, prototypes_per_class=3, topk=2, gate_granularity=granularity)
    with torch.no_grad():  # gates away from their equal start, so that the weights matter
        head.gate_logits.normal_(0.0, 2.0)
    return head


# ----------------------------------------------------------------------------------------------- gates


@pytest.mark.parametrize("granularity", ["layer", "layer_class"])
def test_cgp_gates_are_a_convex_combination_of_normalised_sigmoids(granularity):
    head = _cgp(granularity)
    with torch.no_grad():
        head.gate_logits[0] = 30.0  # a saturated gate cannot take the whole weight, as a softmax would
        head.gate_logits[1] = -30.0
    weights = head.layer_weights()
    assert weights.shape == ((L,) if granularity == "layer" else (L, C))
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=0), torch.ones_like(weights.sum(dim=0)))
    gates = torch.sigmoid(head.gate_logits)
    torch.testing.assert_close(weights, gates / gates.sum(dim=0, keepdim=True))
    # sigmoid(30) ~ 1 and sigmoid(-30) ~ 0: layer 0 gets 1 / (1 + sum of the other two gates), not ~1.
    assert (weights[0] < 0.75).all() and (weights[1] < 1e-12).all()


def test_cgp_starts_with_equal_layer_weights():
    head = ConvexGatedProbe(L, D, C)
    torch.testing.assert_close(head.layer_weights(), torch.full((L,), 1.0 / L))


def test_cgp_probes_the_convex_combination_of_the_normalised_layers():
    """CGP's logits are the prototype head's on sum_l w_l LN(H_l), LN without affine parameters."""
    head = _cgp().eval()
    features, mask = _features()
    normalised = F.layer_norm(features, (D,))
    mixed = torch.einsum("bltd,l->btd", normalised, head.layer_weights())
    torch.testing.assert_close(head(features, mask), head.prototype_head(mixed, mask))


@pytest.mark.parametrize("train", [False, True])
def test_per_class_gates_compare_each_class_with_its_own_combination(train):
    """The Gram-matrix route of the per-class gates equals building each class's mixture explicitly."""
    head = _cgp("layer_class").train(train)
    features, mask = _features()
    normalised = F.layer_norm(features, (D,))
    proto = head.prototype_head
    J = proto.prototypes_per_class
    expected_sims = torch.empty(B, T, C * J)
    for c in range(C):
        mixed = torch.einsum("bltd,l->btd", normalised, head.layer_weights()[:, c])
        expected_sims[..., c * J : (c + 1) * J] = proto.similarities(mixed)[..., c * J : (c + 1) * J]
    expected = proto.classify(proto.pool(expected_sims, mask))
    torch.testing.assert_close(head(features, mask), expected, atol=1e-5, rtol=1e-5)


def test_per_class_gates_with_equal_columns_are_the_per_layer_gates():
    per_layer, per_class = _cgp("layer"), _cgp("layer_class")
    per_class.load_state_dict(
        {**per_layer.state_dict(), "gate_logits": per_layer.gate_logits.detach()[:, None].repeat(1, C)}
    )
    features, mask = _features()
    for mode in (False, True):
        per_layer.train(mode), per_class.train(mode)
        torch.testing.assert_close(per_class(features, mask), per_layer(features, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("granularity", ["layer", "layer_class"])
@pytest.mark.parametrize("train", [False, True])
def test_one_layer_cgp_is_the_prototype_probe(granularity, train):
    cgp = _cgp(granularity, layers=1).train(train)
    prototype = PrototypeProbe(1, D, C, prototypes_per_class=3, topk=2).train(train)
    prototype.prototype_head.load_state_dict(cgp.prototype_head.state_dict())
    features, mask = _features(layers=1)
    expected = prototype(features, mask)
    torch.testing.assert_close(cgp(features, mask), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        cgp.gate_logits.normal_(0.0, 5.0)  # a single layer's weight is 1 whatever its gate
    torch.testing.assert_close(cgp(features, mask), expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------- prototype head


def test_prototype_scores_are_the_best_real_token_in_eval_and_a_top_k_mean_in_training():
    head = PrototypeProbe(1, D, C, prototypes_per_class=2, topk=3).prototype_head
    similarities = torch.rand(B, T, C * 2)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, -2:] = False
    similarities[0, -1] = 1.0  # the best match sits on a padded token: it must not count
    head.eval()
    pooled = head.pool(similarities, mask)
    torch.testing.assert_close(pooled[0], similarities[0, :-2].amax(dim=0))
    torch.testing.assert_close(pooled[1:], similarities[1:].amax(dim=1))
    head.train()
    pooled = head.pool(similarities, mask)
    torch.testing.assert_close(pooled[0], similarities[0, :-2].topk(3, dim=0).values.mean(dim=0))
    torch.testing.assert_close(pooled[1:], similarities[1:].topk(3, dim=1).values.mean(dim=1))
    # A clip with fewer real tokens than k averages the ones it has.
    mask[2, 1:] = False
    torch.testing.assert_close(head.pool(similarities, mask)[2], similarities[2, 0])


def test_prototype_similarities_are_cosines_and_class_weights_start_on_the_own_class():
    head = PrototypeProbe(1, D, C, prototypes_per_class=3).prototype_head
    tokens = torch.randn(B, T, D)
    expected = F.cosine_similarity(tokens[:, :, None], head.prototypes[None, None], dim=-1)
    torch.testing.assert_close(head.similarities(tokens), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head.similarities(3.0 * tokens), expected, atol=1e-5, rtol=1e-5)
    own = torch.arange(C).repeat_interleave(3)
    expected_weights = torch.zeros(C, 3 * C)
    expected_weights[own, torch.arange(3 * C)] = 1.0
    torch.testing.assert_close(head.class_weights.detach(), expected_weights)


def _learnable_cache(clips: int = 48, layers: int = L, seed: int = 0) -> ArrayCache:
    """Features whose class shows as a direction in some tokens of the last layers."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((clips, layers, T, D)).astype(np.float16)
    labels = (rng.random((clips, C)) < 0.3).astype(np.float32)
    directions = rng.standard_normal((C, D))
    for i, j in zip(*np.nonzero(labels), strict=True):
        features[i, layers // 2 :, rng.integers(T)] += 3.0 * directions[j]
    return ArrayCache(features, np.ones((clips, T), dtype=bool), labels)


@pytest.mark.parametrize("probe", ["prototype", "cgp"])
def test_prototype_class_weights_stay_non_negative_after_training_steps(probe):
    def trained(constrained: bool) -> torch.Tensor:
        torch.manual_seed(0)
        head = build_probe(probe, L, D, C, prototypes_per_class=3, topk=3)
        if not constrained:
            head.project_ = lambda: None
        train_probe(head, _learnable_cache(), epochs=3, batch_size=8, learning_rate=0.05, seed=0)
        return head.prototype_head.class_weights.detach()

    # The same training without the projection drives connections negative: the constraint is live here.
    assert (trained(constrained=False) < 0).any()
    weights = trained(constrained=True)
    assert (weights >= 0).all(), weights.min()
    assert (weights > 0).sum() > C * 3  # connections to other classes grew where the gradient asked


def test_training_is_deterministic_and_learns(tmp_path):
    cache = _learnable_cache(clips=64)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        head = build_probe("cgp", L, D, C, prototypes_per_class=2)
        results.append(train_probe(head, cache, epochs=4, batch_size=16, learning_rate=0.01, seed=3))
        results[-1]["logits"] = head(torch.from_numpy(cache.features[:8]).float())
    assert results[0]["history"] == results[1]["history"]
    torch.testing.assert_close(results[0]["logits"], results[1]["logits"])
    losses = [row["loss"] for row in results[0]["history"]]
    assert losses[-1] < losses[0]
    assert results[0]["steps"] == 4 * 4


def test_tagging_uses_bce_and_classification_cross_entropy_and_accuracy():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.3, -2.0]])
    multi_hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(
        probe_loss(logits, multi_hot, multi_label=True), F.binary_cross_entropy_with_logits(logits, multi_hot)
    )
    one_hot = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(
        probe_loss(logits, one_hot, multi_label=False), F.cross_entropy(logits, torch.tensor([2, 1]))
    )

    cache = _learnable_cache(clips=12)
    cache.labels = np.eye(C, dtype=np.float32)[np.arange(12) % C]
    head = build_probe("linear", L, D, C).eval()
    scores = evaluate_probe(head, cache, multi_label=False, batch_size=5)
    with torch.no_grad():
        predicted = head(torch.from_numpy(cache.features).float()).argmax(dim=1).numpy()
    assert scores["test_accuracy"] == pytest.approx(float((predicted == np.arange(12) % C).mean()))
    assert scores["test_num_clips"] == 12 and "test_accuracy" not in evaluate_probe(head, cache)


# ------------------------------------------------------------------------------------ the comparisons


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_every_head_normalises_each_layer_and_ignores_padded_tokens(probe):
    options = {"num_heads": 4} if probe == "attentive" else {}
    torch.manual_seed(0)
    head = build_probe(probe, L, D, C, **options).eval()
    features, mask = _features()
    logits = head(features, mask)
    assert logits.shape == (B, C) and torch.isfinite(logits).all()
    # LayerNorm without affine: a layer's scale and offset are invisible to every head.
    rescaled = features * torch.tensor([10.0, 0.5, 3.0, 50.0]).view(1, L, 1, 1) - 2.0
    torch.testing.assert_close(head(rescaled, mask), logits, atol=1e-4, rtol=1e-4)
    padded = features.clone()
    by_token = padded.permute(0, 2, 1, 3)  # a view: (batch, tokens, layers, dim)
    by_token[~mask] = 1e3 * torch.randn_like(by_token[~mask])
    assert not torch.equal(padded, features)
    torch.testing.assert_close(head(padded, mask), logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("probe", ["linear", "attentive", "prototype"])
def test_last_layer_heads_read_only_the_last_layer(probe):
    options = {"num_heads": 4} if probe == "attentive" else {}
    head = build_probe(probe, L, D, C, **options).eval()
    features, mask = _features()
    changed = features.clone()
    changed[:, :-1] = torch.randn_like(changed[:, :-1])
    torch.testing.assert_close(head(changed, mask), head(features, mask))
    assert head.layer_weights() is None


def test_weighted_sum_is_superb_softmax_weights_then_mean_pooling():
    torch.manual_seed(0)
    head = build_probe("weighted_sum", L, D, C, standardize=False)
    with torch.no_grad():
        head.layer_logits.copy_(torch.tensor([2.0, -1.0, 0.0, 30.0]))
    weights = head.layer_weights()
    torch.testing.assert_close(weights, torch.softmax(head.layer_logits, dim=0))
    features, mask = _features()
    normalised = F.layer_norm(features, (D,))
    mixed = torch.einsum("bltd,l->btd", normalised, weights)
    pooled = (mixed * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(head(features, mask), head.classifier(pooled))


def test_bad_head_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown probe 'svm'"):
        build_probe("svm", L, D, C)
    with pytest.raises(ValueError, match="num_heads=5 must divide"):
        build_probe("attentive", L, D, C, num_heads=5)
    with pytest.raises(ValueError, match="gate_granularity"):
        build_probe("cgp", L, D, C, gate_granularity="class")
    with pytest.raises(TypeError):
        build_probe("linear", L, D, C, prototypes_per_class=3)
    with pytest.raises(ValueError, match=r"^LinearProbe expects features \(batch, 4, tokens, 16\)"):
        build_probe("linear", L, D, C)(torch.zeros(B, 3, T, D))
    features, _ = _features()
    with pytest.raises(ValueError, match=r"token_mask must be \(batch, tokens\) = \(3, 7\), got \(3, 5\)"):
        build_probe("linear", L, D, C)(features, torch.ones(B, T - 2, dtype=torch.bool))


# ------------------------------------------------------------------------------- saving and reporting


@pytest.mark.parametrize("granularity", ["layer", "layer_class"])
def test_saved_head_reloads_and_its_layer_weights_are_reported(granularity, tmp_path):
    head = _cgp(granularity).eval()
    save_probe_head(head, tmp_path, layers=[0, 1, 2, 3])
    loaded, config = load_probe_head(tmp_path)
    features, mask = _features()
    torch.testing.assert_close(loaded(features, mask), head(features, mask))
    assert config["options"]["gate_granularity"] == granularity and config["layers"] == [0, 1, 2, 3]

    names, classes = ["embeddings", "layer 1", "layer 2", "layer 3"], [f"class {c}" for c in range(C)]
    report = layer_weights_report(head, names, classes)
    json_path, png = write_layer_weights(report, tmp_path, "cgp")
    written = json.loads(json_path.read_text())
    assert written["layers"] == names and written["granularity"] == granularity
    if granularity == "layer":
        np.testing.assert_allclose(written["weights"], head.layer_weights().detach().numpy(), rtol=1e-6)
    else:
        assert list(written["weights"]) == classes
        np.testing.assert_allclose(
            written["weights"]["class 2"], head.layer_weights()[:, 2].detach(), rtol=1e-6
        )
        np.testing.assert_allclose(sum(written["mean_over_classes"]), 1.0, rtol=1e-6)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        # the bars / cells are drawn in colour, not left blank
        assert len(image.convert("RGB").getcolors(maxcolors=100000)) > 3
    assert layer_weights_report(build_probe("linear", L, D, C), names, classes) is None


# ------------------------------------------------------------------------------- the training loop


def _padded_cache(clips: int = 48, seed: int = 1) -> ArrayCache:
    """A cache whose padded tokens hold large garbage: a head that reads them scores differently."""
    cache = _learnable_cache(clips=clips, seed=seed)
    mask = np.ones((clips, T), dtype=bool)
    mask[::2, T // 2 :] = False
    features = cache.features.copy()
    clip, token = np.nonzero(~mask)
    features[clip, :, token] = 40.0  # every layer of the padded tokens
    return ArrayCache(features, mask, cache.labels)


def _frozen_epoch_loss(head, cache, multi_label: bool) -> float:
    """The training-mode loss of ``head`` over every clip at once, with the token mask: what an epoch at
    learning rate 0 must average, whatever the batch size."""
    head.train()
    with torch.no_grad():
        logits = head(torch.from_numpy(cache.features).float(), torch.from_numpy(cache.token_mask))
        labels = torch.from_numpy(cache.labels)
        if multi_label:
            per_clip = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)
        else:
            per_clip = F.cross_entropy(logits, labels.argmax(1), reduction="none")
    return float(per_clip.mean())


@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("probe", ["linear", "cgp"])
def test_an_epoch_loss_is_the_mean_over_clips_of_the_masked_loss(probe, multi_label):
    cache = _padded_cache(clips=45)  # batches of 20, 20 and 5 clips
    torch.manual_seed(0)
    # Unstandardised: batch statistics would make a clip's loss depend on the batch it is in.
    head = build_probe(probe, L, D, C, **({"standardize": False} if probe == "linear" else {}))
    expected = _frozen_epoch_loss(head, cache, multi_label)
    result = train_probe(head, cache, epochs=3, batch_size=20, learning_rate=0.0, multi_label=multi_label)
    assert [row["epoch"] for row in result["history"]] == [1, 2, 3]
    for row in result["history"]:
        assert row["loss"] == pytest.approx(expected, rel=1e-5)
    assert result["steps"] == 3 * 3 and result["seconds"] >= 0.0
    assert not head.training  # ends in eval mode


def test_warmup_covers_its_share_of_the_steps():
    """One batch per epoch: epoch 2's loss is computed before its step, so it equals epoch 1's exactly when
    the first step ran at learning rate 0 (the first step of a warmup)."""
    cache = _learnable_cache(clips=16)

    def history(warmup_ratio: float) -> list[float]:
        torch.manual_seed(0)
        head = build_probe("linear", L, D, C)
        run = train_probe(head, cache, epochs=4, batch_size=16, learning_rate=0.05, warmup_ratio=warmup_ratio)
        return [row["loss"] for row in run["history"]]

    warm = history(0.5)  # 2 of 4 steps: lr 0, then 0.5 * peak
    assert warm[1] == warm[0] and warm[2] < warm[1]
    cold = history(0.0)
    assert cold[1] < cold[0]


def test_defaults_are_the_documented_protocol():
    """100 epochs, batches of 64, AdamW at 1e-2 with weight decay 3e-4, 5 % warmup, BCE, seed 0, tokens
    uncentred (the recipe's "auto" decides per encoder; a library call centres only when asked)."""
    cache = _learnable_cache(clips=100)  # two batches per epoch: batch size and order both matter
    documented = {
        "epochs": 100, "batch_size": 64, "learning_rate": 1e-2, "weight_decay": 3e-4, "warmup_ratio": 0.05,
        "multi_label": True, "seed": 0, "center_positions": False,
    }  # fmt: skip

    def trained(**arguments):
        torch.manual_seed(0)
        head = build_probe("attentive", L, D, C)
        before = time.perf_counter()
        run = train_probe(head, cache, **arguments)
        assert 0.0 <= run["seconds"] <= time.perf_counter() - before
        return run, head.state_dict()

    default_run, default = trained()
    assert default_run["steps"] == 200
    explicit_run, explicit = trained(**documented)
    assert default_run["history"] == explicit_run["history"]
    for name, value in default.items():
        torch.testing.assert_close(value, explicit[name], rtol=0, atol=0, msg=name)
    for change in ({"batch_size": 65}, {"seed": 1}, {"multi_label": False}):
        _, other = trained(**{**documented, **change})
        assert not torch.equal(other["classifier.weight"], default["classifier.weight"]), change


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"epochs": 0}, "epochs must be a positive integer, got 0"),
        ({"epochs": True}, "epochs must be a positive integer, got True"),
        ({"epochs": 2.0}, "epochs must be a positive integer, got 2.0"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": 8.0}, "batch_size must be a positive integer, got 8.0"),
    ],
)
def test_training_arguments_are_checked(arguments, match):
    with pytest.raises(ValueError, match=match):
        train_probe(build_probe("linear", L, D, C), _learnable_cache(clips=4), **arguments)


def test_one_epoch_of_one_clip_batches_is_allowed_and_class_counts_must_match():
    run = train_probe(build_probe("linear", L, D, C), _learnable_cache(clips=3), epochs=1, batch_size=1)
    assert run["steps"] == 3 and len(run["history"]) == 1
    with pytest.raises(ValueError, match=f"the cache has {C} classes but the head {C + 1}"):
        train_probe(build_probe("linear", L, D, C + 1), _learnable_cache(clips=4))


# ------------------------------------------------------------------------ arguments, decay, round trips


@pytest.mark.parametrize("field", ["num_layers", "hidden_size", "num_labels"])
@pytest.mark.parametrize("value", [0, True, 2.0])
def test_head_shapes_must_be_positive_integers(field, value):
    shapes = {"num_layers": L, "hidden_size": D, "num_labels": C, field: value}
    with pytest.raises(ValueError, match=f"{field} must be a positive integer, got {value!r}"):
        build_probe("linear", **shapes)


@pytest.mark.parametrize(
    ("probe", "option"), [("attentive", "num_heads"), ("prototype", "prototypes_per_class"), ("cgp", "topk")]
)
def test_head_options_must_be_positive_integers_and_one_is_allowed(probe, option):
    for value in (0, True, 2.0):
        with pytest.raises(ValueError, match=f"{option} must be a positive integer, got {value!r}"):
            build_probe(probe, L, D, C, **{option: value})
    head = build_probe(probe, 1, D, 1, **{option: 1})
    assert head.options()[option] == 1
    assert head(*_features(layers=1)).shape == (B, 1)


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_every_head_reloads_with_its_options_and_gives_the_same_logits(probe, tmp_path):
    options = {"attentive": {"num_heads": 2}, "prototype": {"topk": 2, "prototypes_per_class": 3}}
    options["cgp"] = {"topk": 2, "prototypes_per_class": 3, "gate_granularity": "layer_class"}
    torch.manual_seed(0)
    head = build_probe(probe, L, D, C, **options.get(probe, {}))
    with torch.no_grad():
        for parameter in head.parameters():  # away from any initial value a fresh head would also have
            parameter.add_(torch.randn_like(parameter) * 0.1)
    head.project_()
    head.eval()
    save_probe_head(head, tmp_path / "nested" / "dir")  # parent folders are created
    loaded, config = load_probe_head(tmp_path / "nested" / "dir")
    assert config["options"] == head.options() and config["probe"] == probe
    for key, value in options.get(probe, {}).items():
        assert config["options"][key] == value
    features, mask = _features()
    torch.testing.assert_close(loaded(features, mask), head(features, mask))
    torch.testing.assert_close(loaded(features), head(features))  # and without a token mask


def test_prototype_probe_defaults_and_its_topk_reaches_the_head():
    default = build_probe("prototype", L, D, C)
    assert default.options() == {"prototypes_per_class": 10, "topk": 1}
    assert default.prototype_head.topk == 1 and default.prototype_head.prototypes.shape == (10 * C, D)
    assert build_probe("prototype", L, D, C, topk=3).prototype_head.topk == 3
    assert build_probe("cgp", L, D, C, topk=3).prototype_head.topk == 3


def test_training_top_k_is_capped_by_the_real_tokens():
    """Fewer tokens than topk: the mean is over every token (not an error, not more than there are)."""
    torch.manual_seed(0)
    head = build_probe("prototype", L, D, C, topk=5, prototypes_per_class=2).train()
    features = torch.randn(2, L, 3, D)
    tokens = F.layer_norm(features, (D,))[:, -1]
    similarities = head.prototype_head.similarities(tokens)
    scores = similarities.mean(dim=1)  # all 3 tokens: top-3 of 3
    expected = scores @ head.prototype_head.class_weights.T + head.prototype_head.bias
    torch.testing.assert_close(head(features), expected)


@pytest.mark.parametrize(
    ("probe", "exempt"),
    [
        ("weighted_sum", {"layer_logits"}),
        ("attentive", {"query"}),
        ("prototype", {"prototype_head.class_weights"}),
        ("cgp", {"prototype_head.class_weights", "gate_logits"}),
    ],
)
def test_gates_queries_and_class_weights_are_not_weight_decayed(probe, exempt):
    from hf_audiorep.training.optim import build_param_groups

    # per-class gates are 2-D: only the name exempts them (1-D parameters are exempt by their shape)
    head = build_probe(probe, L, D, C, **({"gate_granularity": "layer_class"} if probe == "cgp" else {}))
    names = {id(p): n for n, p in head.named_parameters()}
    undecayed = {
        names[id(p)] for g in build_param_groups(head, 0.05) if g["weight_decay"] == 0 for p in g["params"]
    }
    assert exempt <= undecayed
    decayed = {
        names[id(p)] for g in build_param_groups(head, 0.05) if g["weight_decay"] > 0 for p in g["params"]
    }
    assert decayed and not exempt & decayed


# ------------------------------------------------------------------------------------ position centring


def test_position_means_average_each_positions_real_tokens_after_the_layer_norm():
    rng = np.random.default_rng(0)
    features = (rng.standard_normal((5, 2, 4, D)) * 3 + 1).astype(np.float16)
    mask = np.ones((5, 4), dtype=bool)
    mask[1, 2:] = False
    mask[3, 1:] = False
    mask[:, 3] = False  # a position no clip reaches
    cache = ArrayCache(features, mask, np.zeros((5, C), dtype=np.float32))
    means = position_means(cache, batch_size=2)  # batches that split the clips
    normalised = F.layer_norm(torch.from_numpy(features).float(), (D,))
    assert means.shape == (2, 4, D) and means.dtype == torch.float32
    for t in range(3):
        real = torch.from_numpy(mask[:, t])
        torch.testing.assert_close(means[:, t], normalised[real][:, :, t].mean(dim=0))
    assert (means[:, 3] == 0).all()


def _classified_input(head, features, mask):
    seen = []
    original = head.classify
    head.classify = lambda normalised, token_mask: seen.append(normalised) or original(normalised, token_mask)
    head(features, mask)
    return seen[0]


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_a_centred_head_reads_its_tokens_minus_their_positions_mean(probe):
    torch.manual_seed(0)
    head = build_probe(probe, L, D, C)
    features, mask = _features()
    means = torch.randn(L, T, D)
    plain = _classified_input(head, features, mask)
    head.set_position_means(means)
    centred = _classified_input(head, features, mask)
    torch.testing.assert_close(centred, plain - means)
    head.set_position_means(means[:, : T - 2])  # other positions than the input's: refused, not truncated
    with pytest.raises(ValueError, match=f"centres {T - 2} token positions"):
        _classified_input(head, features, mask)
    head.set_position_means(None)
    torch.testing.assert_close(_classified_input(head, features, mask), plain)


def test_position_means_of_another_shape_are_refused():
    head = build_probe("cgp", L, D, C)
    for shape in ((L, T), (L + 1, T, D), (L, T, D + 1)):
        with pytest.raises(ValueError, match=r"position means must be \(layers, tokens, dim\)"):
            head.set_position_means(torch.zeros(shape))


def test_train_probe_centres_on_the_train_caches_means_only_when_asked():
    cache = _learnable_cache(clips=16)
    head = build_probe("cgp", L, D, C, prototypes_per_class=2)
    result = train_probe(head, cache, center_positions=True, epochs=1, batch_size=8)
    torch.testing.assert_close(head.position_means, position_means(cache))
    assert result["centred"] is True and result["position_share"] is None
    result = train_probe(head, cache, center_positions=False, epochs=1, batch_size=8)
    assert head.position_means is None and result["centred"] is False
    with pytest.raises(ValueError, match="center_positions must be True, False or 'auto', got 'yes'"):
        train_probe(head, cache, center_positions="yes", epochs=1)


def test_auto_centres_only_tokens_whose_positions_hold_most_of_their_variance():
    head = build_probe("cgp", L, D, C, prototypes_per_class=2)
    swamped, plain = _position_swamped_cache(clips=16), _learnable_cache(clips=16)
    result = train_probe(head, swamped, center_positions="auto", epochs=1, batch_size=8)
    assert result["centred"] is True and result["position_share"] == position_share(swamped) > 0.9
    torch.testing.assert_close(head.position_means, position_means(swamped))
    result = train_probe(head, plain, center_positions="auto", epochs=1, batch_size=8)
    assert result["centred"] is False and result["position_share"] == position_share(plain) < 0.2
    assert head.position_means is None


def test_position_share_is_the_variance_between_position_means_over_the_total():
    rng = np.random.default_rng(2)
    features = (rng.standard_normal((6, 2, 5, D)) + 2 * rng.standard_normal((1, 2, 5, D))).astype(np.float16)
    mask = np.ones((6, 5), dtype=bool)
    mask[0, 3:] = False
    mask[4, 1:] = False
    cache = ArrayCache(features, mask, np.zeros((6, C), dtype=np.float32))
    tokens = F.layer_norm(torch.from_numpy(features).double(), (D,))
    real = torch.from_numpy(mask)
    total = between = 0.0
    for layer in range(2):
        values = tokens[:, layer][real]  # (real tokens, dim)
        overall = values.mean(dim=0)
        total += (values - overall).pow(2).sum(-1).mean()
        means = torch.stack([tokens[real[:, t], layer, t].mean(dim=0) for t in range(5)])
        counts = real.sum(dim=0).double()
        between += ((means - overall).pow(2).sum(-1) * counts).sum() / counts.sum()
    assert position_share(cache, batch_size=4) == pytest.approx(float(between / total), rel=1e-5)
    # Tokens that are their position's pattern whatever the clip: all of the variance.
    same = np.repeat(features[:1], 6, axis=0)
    assert position_share(ArrayCache(same, np.ones((6, 5), bool), cache.labels)) == pytest.approx(1.0)


def test_a_saved_centred_head_reloads_its_means(tmp_path):
    torch.manual_seed(0)
    head = build_probe("cgp", L, D, C, prototypes_per_class=2).eval()
    head.set_position_means(torch.randn(L, T, D))
    save_probe_head(head, tmp_path)
    loaded, config = load_probe_head(tmp_path)
    assert config["center_positions"] is True
    torch.testing.assert_close(loaded.position_means, head.position_means)
    features, mask = _features()
    torch.testing.assert_close(loaded(features, mask), head(features, mask))


def _position_swamped_cache(clips: int = 96, seed: int = 0) -> ArrayCache:
    """Every token is mostly its position's pattern, shared by all clips (as BAT-small's are); a clip's class
    shows as a small direction added to one token."""
    rng = np.random.default_rng(seed)
    pattern = 6.0 * rng.standard_normal((1, L, T, D))
    features = pattern + 0.3 * rng.standard_normal((clips, L, T, D))
    labels = np.zeros((clips, C), dtype=np.float32)
    labels[np.arange(clips), rng.integers(C, size=clips)] = 1.0
    directions = rng.standard_normal((C, D))
    for i, j in zip(*np.nonzero(labels), strict=True):
        features[i, :, rng.integers(T)] += 1.5 * directions[j]
    return ArrayCache(features.astype(np.float16), np.ones((clips, T), dtype=bool), labels)


def test_centring_lets_the_prototypes_see_past_a_pattern_every_clip_shares():
    cache = _position_swamped_cache()
    fitted = {}
    for centre in (False, True):
        torch.manual_seed(0)
        head = build_probe("cgp", L, D, C, prototypes_per_class=2)
        train_probe(head, cache, center_positions=centre, epochs=15, batch_size=16, seed=0)
        fitted[centre] = evaluate_probe(head, cache)["test_mAP"]
    assert fitted[True] > fitted[False] + 0.2, fitted


# ---------------------------------------------------------------------- standardised linear classifiers

POOLED = ["linear", "weighted_sum", "attentive"]


def _classifier_input(head, features, mask):
    seen = []
    hook = head.classifier.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        head(features, mask)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("probe", POOLED)
def test_standardised_heads_classify_the_pooled_vector_standardised_per_dimension(probe):
    def head(standardize: bool):
        torch.manual_seed(0)  # the norm holds no parameters: both heads get the same weights
        return build_probe(probe, L, D, C, standardize=standardize)

    plain, standardised = head(False), head(True)
    assert standardised.options()["standardize"] and not plain.options()["standardize"]
    # Without affine parameters: nothing for AdamW to train or decay beyond the plain head's own.
    assert [name for name, _ in standardised.named_parameters()] == [n for n, _ in plain.named_parameters()]
    features, mask = _features()
    pooled = _classifier_input(plain, features, mask)
    mean, variance = pooled.mean(dim=0), pooled.var(dim=0, unbiased=False)
    # Training: the batch's own statistics.
    expected = (pooled - mean) / (variance + 1e-6).sqrt()
    standardised_input = _classifier_input(standardised, features, mask)
    torch.testing.assert_close(standardised_input, expected, atol=1e-4, rtol=1e-4)
    # Evaluation: the running statistics that training updated (momentum 0.1 from mean 0, variance 1).
    running_mean = 0.1 * mean
    running_variance = 0.9 + 0.1 * pooled.var(dim=0, unbiased=True)
    torch.testing.assert_close(standardised.standardizer.running_mean, running_mean)
    torch.testing.assert_close(standardised.standardizer.running_var, running_variance)
    standardised.eval()
    expected = (pooled - running_mean) / (running_variance + 1e-6).sqrt()
    standardised_input = _classifier_input(standardised, features, mask)
    torch.testing.assert_close(standardised_input, expected, atol=1e-4, rtol=1e-4)
    assert "standardised" in standardised.description and "standardised" not in plain.description


@pytest.mark.parametrize("probe", POOLED)
def test_a_training_batch_of_one_clip_is_standardised_with_the_running_statistics(probe):
    torch.manual_seed(0)
    head = build_probe(probe, L, D, C)
    features, mask = _features()
    head(features, mask)  # a first batch moves the running statistics away from their start
    running = head.standardizer.running_mean.clone(), head.standardizer.running_var.clone()
    logits = head(features[:1], mask[:1])  # a BatchNorm in training refuses one value per channel
    head.eval()
    torch.testing.assert_close(logits, head(features[:1], mask[:1]))
    torch.testing.assert_close(head.standardizer.running_mean, running[0])  # and left them as they were
    torch.testing.assert_close(head.standardizer.running_var, running[1])


@pytest.mark.parametrize("probe", POOLED)
def test_standardize_must_be_a_bool(probe):
    with pytest.raises(ValueError, match="standardize must be True or False, got 1"):
        build_probe(probe, L, D, C, standardize=1)


@pytest.mark.parametrize("probe", POOLED)
def test_a_standardised_head_reloads_its_running_statistics(probe, tmp_path):
    torch.manual_seed(0)
    head = build_probe(probe, L, D, C)
    with torch.no_grad():
        head.standardizer.running_mean.normal_()
        head.standardizer.running_var.uniform_(0.5, 2.0)
    head.eval()
    save_probe_head(head, tmp_path)
    loaded, config = load_probe_head(tmp_path)
    assert config["options"]["standardize"] is True
    torch.testing.assert_close(loaded.standardizer.running_var, head.standardizer.running_var)
    features, mask = _features()
    torch.testing.assert_close(loaded(features, mask), head(features, mask))


def test_a_head_saved_before_the_option_reloads_unstandardised(tmp_path):
    torch.manual_seed(0)
    head = build_probe("linear", L, D, C, standardize=False).eval()
    save_probe_head(head, tmp_path)
    path = tmp_path / "probe_config.json"
    config = json.loads(path.read_text())
    del config["options"]["standardize"]  # what a head saved before the option has
    path.write_text(json.dumps(config))
    loaded, config = load_probe_head(tmp_path)
    assert loaded.standardizer is None and config["options"] == {"standardize": False}
    features, mask = _features()
    torch.testing.assert_close(loaded(features, mask), head(features, mask))


def _shared_pattern_cache(clips: int = 96, seed: int = 0) -> ArrayCache:
    """Every clip is mostly the same pattern; its class a small direction added to all of its tokens: after
    the layer norm the pooled vectors differ little against their shared part, as BAT-small's do."""
    rng = np.random.default_rng(seed)
    features = np.broadcast_to(8.0 * rng.standard_normal((1, L, T, D)), (clips, L, T, D)).copy()
    features += 0.2 * rng.standard_normal((clips, L, T, D))
    labels = np.zeros((clips, C), dtype=np.float32)
    labels[np.arange(clips), rng.integers(C, size=clips)] = 1.0
    directions = rng.standard_normal((C, D))
    features += 0.3 * (labels @ directions)[:, None, None, :]
    return ArrayCache(features.astype(np.float32), np.ones((clips, T), dtype=bool), labels)


@pytest.mark.parametrize("probe", POOLED)
def test_standardising_lets_a_linear_head_fit_small_differences_on_a_shared_pattern(probe):
    cache = _shared_pattern_cache()
    fitted = {}
    for standardize in (False, True):
        torch.manual_seed(0)
        head = build_probe(probe, L, D, C, standardize=standardize)
        train_probe(head, cache, epochs=10, batch_size=16, seed=0)
        fitted[standardize] = evaluate_probe(head, cache)["test_mAP"]
    assert fitted[True] > 0.9 and fitted[True] > fitted[False] + 0.2, fitted
