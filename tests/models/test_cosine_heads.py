"""ContrastASC's cosine head (`CosineClassifier`) on every family's classifier (``classifier="cosine"``):
the logits are ``cosine_scale * cos(W_c, h)`` of what the head reads, the head is saved and loaded with the
model, a new head on a saved encoder gets random directions (not uninitialised memory), and a loaded one is
kept as it was saved."""

from __future__ import annotations

import math

import pytest
import torch
from family_utils import NUM_LABELS, TINY, random_features
from torch.nn import functional as F
from transformers import AutoModel, AutoModelForAudioClassification

from hf_audiorep.modeling._heads import CosineClassifier
from hf_audiorep.modeling._layers import init_cosine_classifier
from hf_audiorep.registry import ARCHITECTURES, architecture_for

#: the families whose configs take the field (CP-Mobile's own cosine head is tested with the model)
FAMILIES = [name for name in TINY if name != "cp_mobile"]
SCALE = 12.5


def _config(family: str, **overrides):
    (architecture,) = [a for a in ARCHITECTURES if a.name == family]
    fields = {"num_labels": NUM_LABELS, **TINY[family], **overrides}
    return architecture.config_class(**fields)


def _classifier(family: str, **overrides):
    config = _config(family, classifier="cosine", cosine_scale=SCALE, **overrides)
    torch.manual_seed(0)
    return architecture_for(config.model_type).heads[AutoModelForAudioClassification](config).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_head_is_the_scaled_cosine_of_what_it_reads(family):
    model = _classifier(family)
    assert isinstance(model.classifier, CosineClassifier) and model.classifier.scale == SCALE
    assert model.config.classifier == "cosine" and model.config.cosine_scale == SCALE
    seen = {}
    model.classifier.register_forward_hook(lambda m, inputs, out: seen.update(h=inputs[0], out=out))
    with torch.no_grad():
        logits = model(input_values=random_features(2, 64, seed=5)).logits
    weight = model.classifier.weight
    expected = SCALE * F.normalize(seen["h"], dim=-1) @ F.normalize(weight, dim=-1).T
    torch.testing.assert_close(seen["out"], expected)
    assert seen["out"].abs().max() <= SCALE + 1e-4
    # Only directions count: scaling a class's weight row changes nothing.
    with torch.no_grad():
        weight.mul_(torch.tensor([3.0, 0.5, 7.0])[:, None])
        torch.testing.assert_close(model(input_values=random_features(2, 64, seed=5)).logits, logits)
    assert logits.shape == (2, NUM_LABELS)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_default_head_stays_linear(family):
    config = _config(family)
    assert config.classifier == "linear" and config.cosine_scale == 56.0
    model = architecture_for(config.model_type).heads[AutoModelForAudioClassification](config)
    assert type(model.classifier) is torch.nn.Linear


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cosine_head_is_saved_and_loaded_with_the_model(family, tmp_path):
    model = _classifier(family)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForAudioClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.classifier, CosineClassifier) and loaded.config.classifier == "cosine"
    torch.testing.assert_close(loaded.classifier.weight, model.classifier.weight, rtol=0, atol=0)
    features = random_features(1, 64, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_values=features).logits, model(input_values=features).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_new_cosine_head_on_a_saved_encoder_gets_random_directions(family, tmp_path):
    # The teacher's case: a pre-trained encoder fine-tuned with a new cosine head.
    encoder_config = _config(family)
    torch.manual_seed(1)
    AutoModel.from_config(encoder_config).save_pretrained(tmp_path)
    model = AutoModelForAudioClassification.from_pretrained(tmp_path, classifier="cosine", cosine_scale=SCALE)
    weight = model.classifier.weight.detach()
    assert isinstance(model.classifier, CosineClassifier) and weight.shape == (
        NUM_LABELS,
        model.config.hidden_size,
    )
    assert torch.isfinite(weight).all()
    # kaiming_uniform(a=sqrt(5)) as CosineClassifier itself: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not zeros,
    # not one shared row, not whatever memory the meta-device load left behind.
    bound = model.config.hidden_size**-0.5
    assert weight.abs().max() <= bound + 1e-6 and weight.std() > bound / 4
    assert torch.linalg.matrix_rank(weight) == NUM_LABELS


def test_a_new_head_starts_as_cosine_classifier_itself_does():
    # nn.Linear's default range, U(+-1/sqrt(in_features)), as CosineClassifier.reset_parameters draws it.
    head = CosineClassifier(256, 8, 1.0)
    torch.manual_seed(3)
    init_cosine_classifier(head)
    expected = torch.empty(8, 256)
    torch.manual_seed(3)
    torch.nn.init.kaiming_uniform_(expected, a=math.sqrt(5))
    assert torch.equal(head.weight.detach(), expected)


def test_an_unknown_head_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="classifier"):
        _config("audiomae" if "audiomae" in FAMILIES else FAMILIES[0], classifier="arcface")
    with pytest.raises(ValueError, match="cosine_scale"):
        _config(FAMILIES[0], classifier="cosine", cosine_scale=0.0)
