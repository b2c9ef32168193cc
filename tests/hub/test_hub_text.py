"""Publishing a family with text (UTS next): its processor or tokenizer is saved beside the model, named in
the auto_map, and loads through the Auto classes from the Hub folder alone.

The family is a temporary registry record: AudioMAE plus a test-local tokenizer (word-level, over a few tags)
and processor (the fbank feature extractor and that tokenizer). Both live in a module file of their own that
imports only transformers, so the repo can ship it as remote code like the modeling files.
"""

import dataclasses
import importlib.util
import json
import sys
from unittest.mock import patch

import pytest
from huggingface_hub import HfApi
from remote_code_utils import run_without_library
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers.models.auto import tokenization_auto

import hf_audiorep
from hf_audiorep import registry
from hf_audiorep.hub import prepare_repo, push_model
from hf_audiorep.modeling import AudioFbankFeatureExtractor

MODEL_TYPE = "audiorep-audiomae"
TAGS = {"[PAD]": 0, "[UNK]": 1, "dog": 2, "bark": 3, "rain": 4, "engine": 5}
FBANK = "feature_extraction_fbank.AudioFbankFeatureExtractor"

TEXT_MODULE = '''
"""A word-level tag tokenizer and an audio + tags processor (test-local; imports only transformers)."""

from transformers import PreTrainedTokenizerFast, ProcessorMixin


class TagTokenizer(PreTrainedTokenizerFast):
    """Word-level tokenizer over a fixed tag vocabulary."""


class TagAudioProcessor(ProcessorMixin):
    """The audio front end and the tag tokenizer, saved and loaded together."""

    def __init__(self, feature_extractor, tokenizer):
        super().__init__(feature_extractor, tokenizer)
'''


@pytest.fixture(scope="module")
def text_classes(tmp_path_factory):
    """``processing_tags`` imported from its own file (remote_code_files ships a class's module file)."""
    path = tmp_path_factory.mktemp("text_module") / "processing_tags.py"
    path.write_text(TEXT_MODULE)
    spec = importlib.util.spec_from_file_location("processing_tags", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _family(monkeypatch, **text):
    """AudioMAE's registry record with ``processor=`` / ``tokenizer=`` classes, for this test only."""
    record = dataclasses.replace(registry.architecture_for(MODEL_TYPE), **text)
    monkeypatch.setitem(registry._BY_MODEL_TYPE, MODEL_TYPE, record)
    return record


def _tokenizer(text_classes):
    backend = Tokenizer(models.WordLevel(TAGS, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return text_classes.TagTokenizer(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


def _model_dir(path, feature_extractor):
    hf_audiorep.config_from_preset("audiomae-tiny").save_pretrained(path)
    feature_extractor.save_pretrained(path)
    save_file({}, path / "model.safetensors")  # prepare_repo copies the weights as bytes
    return path


@pytest.fixture
def feature_extractor():
    return AudioFbankFeatureExtractor(target_length=208)


@pytest.fixture
def model_dir(tmp_path, feature_extractor):
    return _model_dir(tmp_path / "model", feature_extractor)


def _json(path):
    return json.loads(path.read_text())


def test_processor_is_saved_beside_the_model_with_its_auto_map(
    text_classes, monkeypatch, model_dir, feature_extractor, tmp_path
):
    family = _family(
        monkeypatch, processor=text_classes.TagAudioProcessor, tokenizer=text_classes.TagTokenizer
    )
    processor = text_classes.TagAudioProcessor(feature_extractor, _tokenizer(text_classes))
    repo = prepare_repo(model_dir, tmp_path / "repo", repo_id="someone/tagger", processor=processor)

    shipped = {p.name for p in repo.iterdir()}
    assert {
        "processor_config.json",
        "tokenizer_config.json",
        "tokenizer.json",
        "processing_tags.py",
    } <= shipped
    assert {f"{cls.__module__.rsplit('.', 1)[-1]}.py" for cls in family.classes} <= shipped
    saved = _json(repo / "processor_config.json")
    assert saved["auto_map"] == {"AutoProcessor": "processing_tags.TagAudioProcessor"}
    assert saved["processor_class"] == "TagAudioProcessor"
    # transformers reads the processor's feature extractor from here first: the model's, with its auto_map.
    preprocessor = _json(repo / "preprocessor_config.json")
    assert saved["feature_extractor"] == preprocessor
    assert preprocessor["auto_map"] == {"AutoFeatureExtractor": FBANK}
    tokenizer = _json(repo / "tokenizer_config.json")
    assert tokenizer["auto_map"] == {"AutoTokenizer": [None, "processing_tags.TagTokenizer"]}
    assert tokenizer["tokenizer_class"] == "TagTokenizer"
    # The model's own files are what a family without text gets.
    assert set(_json(repo / "config.json")["auto_map"]) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForAudioClassification",
        "AutoModelForPreTraining",
    }


_LOAD_TEXT_SCRIPT = """
    import numpy as np
    from transformers import AutoFeatureExtractor, AutoProcessor, AutoTokenizer

    repo = sys.argv[2]
    processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
    feature_extractor = AutoFeatureExtractor.from_pretrained(repo, trust_remote_code=True)
    assert "hf_audiorep" not in sys.modules
    for loaded in (processor, processor.tokenizer, processor.feature_extractor, tokenizer, feature_extractor):
        assert type(loaded).__module__.startswith("transformers_modules"), type(loaded).__module__
    print("classes", type(processor).__name__, type(tokenizer).__name__, type(feature_extractor).__name__)
    print("ids", processor.tokenizer("rain dog cat")["input_ids"], tokenizer("engine bark")["input_ids"])
    wave = np.random.default_rng(0).normal(scale=0.1, size=16000).astype(np.float32)
    features = processor.feature_extractor(wave, sampling_rate=16000, return_tensors="np")["input_values"]
    print("features", features.shape)
"""


def test_published_processor_loads_without_the_library(
    text_classes, monkeypatch, model_dir, feature_extractor, tmp_path
):
    _family(monkeypatch, processor=text_classes.TagAudioProcessor, tokenizer=text_classes.TagTokenizer)
    processor = text_classes.TagAudioProcessor(feature_extractor, _tokenizer(text_classes))
    repo = prepare_repo(model_dir, tmp_path / "repo", repo_id="someone/tagger", processor=processor)

    proc = run_without_library(_LOAD_TEXT_SCRIPT, str(repo), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "classes TagAudioProcessor TagTokenizer AudioFbankFeatureExtractor" in proc.stdout
    assert "ids [4, 2, 1] [5, 3]" in proc.stdout
    assert "features (1, 208, 128)" in proc.stdout


def test_processor_saved_in_the_model_dir_is_published(
    text_classes, monkeypatch, model_dir, feature_extractor, tmp_path
):
    """What `hf-audiorep push DIR` does: the processor the run saved beside the model, loaded and re-saved."""
    _family(monkeypatch, processor=text_classes.TagAudioProcessor, tokenizer=text_classes.TagTokenizer)
    text_classes.TagAudioProcessor(feature_extractor, _tokenizer(text_classes)).save_pretrained(model_dir)
    # The library registers a real family's tokenizer on import; this one is found by name for this test only.
    monkeypatch.setitem(
        tokenization_auto.REGISTERED_TOKENIZER_CLASSES, "TagTokenizer", text_classes.TagTokenizer
    )
    repo = prepare_repo(model_dir, tmp_path / "repo", repo_id="someone/tagger")

    assert _json(repo / "processor_config.json")["auto_map"] == {
        "AutoProcessor": "processing_tags.TagAudioProcessor"
    }
    tokenizer = _json(repo / "tokenizer_config.json")
    assert tokenizer["tokenizer_class"] == "TagTokenizer"
    assert tokenizer["auto_map"] == {"AutoTokenizer": [None, "processing_tags.TagTokenizer"]}
    reloaded = text_classes.TagTokenizer.from_pretrained(repo)
    assert reloaded("dog engine")["input_ids"] == [2, 5]


def test_tokenizer_only_family_publishes_its_tokenizer(text_classes, monkeypatch, model_dir, tmp_path):
    _family(monkeypatch, tokenizer=text_classes.TagTokenizer)
    _tokenizer(text_classes).save_pretrained(model_dir)
    repo = prepare_repo(model_dir, tmp_path / "repo", repo_id="someone/tagger")

    assert not (repo / "processor_config.json").exists()
    assert _json(repo / "tokenizer_config.json")["auto_map"] == {
        "AutoTokenizer": [None, "processing_tags.TagTokenizer"]
    }
    assert _json(repo / "preprocessor_config.json")["auto_map"] == {"AutoFeatureExtractor": FBANK}
    assert "processing_tags.py" in {p.name for p in repo.iterdir()}
    assert text_classes.TagTokenizer.from_pretrained(repo)("bark rain")["input_ids"] == [3, 4]


def test_missing_or_mismatched_text_processing_is_refused(
    text_classes, monkeypatch, model_dir, feature_extractor, tmp_path
):
    _family(monkeypatch, processor=text_classes.TagAudioProcessor, tokenizer=text_classes.TagTokenizer)
    tokenizer = _tokenizer(text_classes)
    with pytest.raises(
        ValueError,
        match=r"has no processor_config.json: save the TagAudioProcessor.*processor\.save_pretrained",
    ):
        prepare_repo(model_dir, tmp_path / "a", repo_id="someone/x")
    # A processor over another front end than the model's: AutoProcessor and AutoFeatureExtractor disagree.
    other = text_classes.TagAudioProcessor(AudioFbankFeatureExtractor(target_length=100), tokenizer)
    with pytest.raises(
        ValueError, match=r"differs from the model's preprocessor_config.json in \['target_length'\]"
    ):
        prepare_repo(model_dir, tmp_path / "b", repo_id="someone/x", processor=other)
    with pytest.raises(
        ValueError,
        match=r"expected a TagAudioProcessor \(audiomae's processor\), got AudioFbankFeatureExtractor",
    ):
        prepare_repo(model_dir, tmp_path / "c", repo_id="someone/x", processor=feature_extractor)
    with pytest.raises(ValueError, match="tokenizer inside its processor: pass processor="):
        prepare_repo(model_dir, tmp_path / "d", repo_id="someone/x", tokenizer=tokenizer)
    assert not any((tmp_path / name).exists() for name in "abcd")  # refused before anything is written
    with (
        patch.object(HfApi, "create_repo") as create_repo,
        pytest.raises(ValueError, match="has no processor_config.json"),
    ):
        push_model(model_dir, "someone/x")
    create_repo.assert_not_called()  # refused before any network call: no empty repo is left behind


def test_family_without_text_takes_no_tokenizer(text_classes, model_dir, tmp_path):
    with pytest.raises(ValueError, match="audiomae has no tokenizer to publish"):
        prepare_repo(model_dir, tmp_path / "repo", repo_id="someone/x", tokenizer=_tokenizer(text_classes))
    assert not (tmp_path / "repo").exists()
