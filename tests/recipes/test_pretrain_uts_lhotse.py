"""The UTS recipe on a Lhotse cut manifest (Auden's UTS layout) whose audio lies under --audio_root: tags
mined from the manifest's captions, or its own tags, over the cuts whose audio is there."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from recipe_utils import as_argv, load_recipe
from transformers import AutoConfig

from hf_audiorep.data.tags import TagSystem

pytestmark = pytest.mark.slow

SR = 16000
# (caption, tags); the last two cuts have no audio under the root and must not reach the vocabulary
CUTS = [
    ("A dog barks in the park.", "dog;bark;outdoor"),
    ("A dog barks at night.", "dog;bark;night"),
    ("Rain falls on the roof.", "rain;roof"),
    ("Heavy rain falls outside.", "rain;outdoor"),
    ("A guitar plays softly.", "music;guitar"),
    ("A guitar plays a fast tune.", "music;guitar"),
    ("A man speaks to a dog.", "speech;dog"),
    ("A woman speaks in the rain.", "speech;rain"),
    ("A bell rings.", "bell;music"),
    ("A bell rings twice.", "bell"),
]
WITH_AUDIO = 8


def _cut(cut_id: str, caption: str, tags: str) -> dict:
    return {
        "id": cut_id,
        "start": 0.0,
        "duration": 1.0,
        "channel": 0,
        "supervisions": [
            {
                "id": cut_id,
                "recording_id": cut_id,
                "start": 0.0,
                "duration": 1.0,
                "channel": 0,
                "custom": {"audio_tag": tags, "caption": caption, "original_caption": [caption]},
            }
        ],
        "recording": {
            "id": cut_id,
            "sources": [{"type": "file", "channels": [0], "source": "audioset"}],
            "sampling_rate": SR,
            "num_samples": SR,
            "duration": 1.0,
            "channel_ids": [0],
        },
        "type": "MonoCut",
    }


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """``cuts_train.jsonl`` and an audio root holding ``audioset/<id>.wav`` for the first eight cuts."""
    base = tmp_path_factory.mktemp("uts-cuts")
    (base / "audio" / "audioset").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for k, (caption, tags) in enumerate(CUTS):
        cut_id = f"Y{k:03d}"
        lines.append(json.dumps(_cut(cut_id, caption, tags)) + "\n")
        if k < WITH_AUDIO:
            sf.write(base / "audio" / "audioset" / f"{cut_id}.wav", 0.1 * rng.standard_normal(SR), SR)
    (base / "cuts_train.jsonl").write_text("".join(lines))
    return base / "cuts_train.jsonl", base / "audio"


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("pretrain_uts")


def _args(manifest, audio_root, output_dir, **overrides) -> list[str]:
    options = {
        "dataset": str(manifest),
        "audio_root": str(audio_root),
        "test_split": "",
        "eval_split": "none",
        "clip_seconds": 1.0,
        "max_steps": 2,
        "per_device_batch_size": 4,
        "warmup_steps": 1,
        "checkpointing_steps": 0,
        "num_decode_threads": 1,
        "probe_tasks": "",
        "output_dir": str(output_dir),
        "cpu": "true",
        **overrides,
    }
    return as_argv(options)


def test_tags_mined_from_the_manifests_captions_of_the_cuts_with_audio(recipe, manifest, tmp_path):
    path, root = manifest
    recipe.main(_args(path, root, tmp_path, caption_column="caption", vocabulary_size=50))
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert results["tag_system"]["num_clips"] == WITH_AUDIO
    vocabulary = TagSystem.from_pretrained(tmp_path / "label_50.json")
    assert len(vocabulary) == results["num_labels"]
    captions = " ".join(caption.lower() for caption, _ in CUTS[:WITH_AUDIO])
    assert vocabulary.names and all(tag in captions for tag in vocabulary.names)
    assert not any("bell" in tag or "ring" in tag for tag in vocabulary.names)  # the cuts without audio
    assert list(AutoConfig.from_pretrained(tmp_path).id2label.values()) == list(vocabulary.names)


def test_the_manifests_own_tags(recipe, manifest, tmp_path):
    path, root = manifest
    recipe.main(_args(path, root, tmp_path, tags_column="tags", vocabulary_size=50))
    names = TagSystem.from_pretrained(tmp_path / "label_50.json").names
    kept = {tag for _, tags in CUTS[:WITH_AUDIO] for tag in tags.split(";")}
    assert set(names) == kept  # every tag of the cuts with audio, and "bell" of the others not
    # the top tags by df * log((N+1)/(df+1)): dog and rain are on 3 of the 8 clips, the others on at most 2
    recipe.main(_args(path, root, tmp_path / "k2", tags_column="tags", vocabulary_size=2))
    assert set(TagSystem.from_pretrained(tmp_path / "k2" / "label_2.json").names) == {"dog", "rain"}
