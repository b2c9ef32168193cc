"""The architecture registry: each entry is wired into the Auto classes, presets, pipeline and the Hub.

Each check runs for every entry of ``ARCHITECTURES``, so a new system is covered by adding its entry.
"""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

import hf_audiorep
from hf_audiorep.hub import prepare_repo
from hf_audiorep.modeling import AudioFbankFeatureExtractor
from hf_audiorep.pipelines import _library_model_types
from hf_audiorep.registry import (
    ARCHITECTURES,
    PRESETS,
    architecture_for,
    config_from_preset,
    feature_extractor_for,
)

IDS = [architecture.name for architecture in ARCHITECTURES]


@pytest.fixture(params=ARCHITECTURES, ids=IDS)
def architecture(request):
    return request.param


def _ref(cls) -> str:
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def test_model_types_are_namespaced_and_found(architecture):
    # A model_type of transformers' own (or another library's) would be taken over by ours on import.
    assert architecture.model_type.startswith("audiorep-")
    assert architecture_for(architecture.model_type) is architecture
    assert architecture.model_type in _library_model_types()


def test_unknown_model_type_and_preset_list_the_known_ones():
    with pytest.raises(ValueError, match="audiorep-cat") as excinfo:
        architecture_for("vit")
    assert all(a.model_type in str(excinfo.value) for a in ARCHITECTURES)
    with pytest.raises(ValueError, match="unknown preset 'nope'; known presets: ") as excinfo:
        config_from_preset("nope")
    assert all(name in str(excinfo.value) for name in PRESETS)


def test_public_api_reads_the_registry():
    assert hf_audiorep.PRESETS is PRESETS and hf_audiorep.config_from_preset is config_from_preset
    assert set(PRESETS) == {name for a in ARCHITECTURES for name in a.presets}
    assert _library_model_types() == {a.model_type for a in ARCHITECTURES}


def test_every_preset_builds_its_config_and_every_auto_class_its_model(architecture, tmp_path):
    assert architecture.presets, f"{architecture.name} has no preset"
    for name in architecture.presets:
        assert PRESETS[name] is architecture.config_class
        config = config_from_preset(name, num_labels=3)
        assert type(config) is architecture.config_class and config.num_labels == 3
        config.save_pretrained(tmp_path / name)
        loaded = AutoConfig.from_pretrained(tmp_path / name)
        assert type(loaded) is architecture.config_class
        for auto_class, model_class in architecture.auto_models.items():
            # On the meta device: the base presets are full-size models, and only the class is checked here.
            with torch.device("meta"):
                model = auto_class.from_config(loaded)
            assert type(model) is model_class, (name, auto_class.__name__)


def test_heads_and_base_model_share_the_config(architecture):
    assert AutoModel not in architecture.heads and architecture.heads
    for model_class in architecture.auto_models.values():
        assert model_class.config_class is architecture.config_class
        assert getattr(hf_audiorep, model_class.__name__, model_class) is model_class


def test_feature_extractor_is_registered_for_the_config(architecture, tmp_path):
    config = config_from_preset(next(iter(architecture.presets)))
    config.save_pretrained(tmp_path)
    architecture.feature_extractor().save_pretrained(tmp_path)
    # Without its type in preprocessor_config.json the extractor can only be found through the config class.
    path = tmp_path / "preprocessor_config.json"
    saved = json.loads(path.read_text())
    saved.pop("feature_extractor_type")
    path.write_text(json.dumps(saved))
    assert type(AutoFeatureExtractor.from_pretrained(tmp_path)) is architecture.feature_extractor


def test_hub_repo_maps_every_auto_class(architecture, tmp_path):
    model_dir = tmp_path / "model"
    config = config_from_preset(next(iter(architecture.presets)))
    config.save_pretrained(model_dir)
    architecture.feature_extractor().save_pretrained(model_dir)
    # prepare_repo copies the weights as bytes; an empty safetensors file is enough to check the layout.
    save_file({}, model_dir / "model.safetensors")
    repo = prepare_repo(model_dir, tmp_path / "repo", repo_id="someone/model")

    auto_map = json.loads((repo / "config.json").read_text())["auto_map"]
    expected = {"AutoConfig": _ref(architecture.config_class)}
    expected |= {auto.__name__: _ref(cls) for auto, cls in architecture.auto_models.items()}
    assert auto_map == expected
    preprocessor = json.loads((repo / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"] == {"AutoFeatureExtractor": _ref(architecture.feature_extractor)}
    shipped = {p.name for p in repo.iterdir()}
    for cls in architecture.classes:
        assert f"{cls.__module__.rsplit('.', 1)[-1]}.py" in shipped, cls.__name__


def test_registry_entries_are_read_only(architecture):
    with pytest.raises(AttributeError):
        architecture.name = "other"
    with pytest.raises(TypeError):
        architecture.heads[AutoModel] = architecture.base_model


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_fresh_model_gets_its_familys_front_end_at_its_window(preset):
    config = config_from_preset(preset)
    extractor = feature_extractor_for(config)
    assert type(extractor) is architecture_for(config.model_type).feature_extractor
    if type(extractor) is AudioFbankFeatureExtractor:  # the ViTs: a fixed window, their position table
        assert extractor.target_length == config.max_length
    else:  # the others take clips of any length
        assert getattr(extractor, "target_length", None) is None
    # A longer window of the same family follows the config, not the extractor's default.
    if type(extractor) is AudioFbankFeatureExtractor:
        assert feature_extractor_for(config_from_preset(preset, max_length=496)).target_length == 496
