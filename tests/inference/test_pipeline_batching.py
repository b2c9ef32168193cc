"""``pipeline("audio-classification")`` over many inputs: ``batch_size > 1`` gives, input by input and in
order, what ``batch_size=1`` gives (each clip is still scored whole, window by window), for arrays, paths,
dicts, datasets and generators; and ``top_k`` is checked as the CLI checks ``--top_k``."""

import numpy as np
import pytest
import soundfile as sf
from transformers import (
    pipeline,
)
from transformers.pipelines.pt_utils import KeyDataset

from hf_audiorep.pipelines import AudioTaggingPipeline


def _noise(seconds: float, seed: int, sample_rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * (250 + 150 * seed) * t)
    return (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


# Five inputs, so batches of 2 and 3 both end on a partial batch. The tiny model's window is about 2 s:
# the 5-s clip is several windows and the 0.5-s one is shorter than a window.
SAME_LENGTHS = [3.0] * 5
MIXED_LENGTHS = [0.5, 3.0, 5.0, 1.2, 2.5]


def _same_arrays():
    return [_noise(s, seed) for seed, s in enumerate(SAME_LENGTHS)]


def _mixed_arrays():
    return [_noise(s, seed) for seed, s in enumerate(MIXED_LENGTHS)]


def _dicts():
    # Mixed rates too: each clip is resampled on its own before scoring.
    rates = [16000, 8000, 22050, 16000, 44100]
    return [
        {"array": _noise(s, seed, rate), "sampling_rate": rate}
        for seed, (s, rate) in enumerate(zip(MIXED_LENGTHS, rates, strict=True))
    ]


def _paths(directory):
    paths = []
    for seed, (seconds, rate, channels) in enumerate(
        [(0.5, 16000, 1), (3.0, 22050, 2), (5.0, 16000, 1), (1.2, 8000, 1), (2.5, 44100, 2)]
    ):
        mono = _noise(seconds, seed, rate)
        data = mono if channels == 1 else np.stack([mono, 0.5 * mono], axis=1)
        path = directory / f"clip{seed}.wav"
        sf.write(path, data, rate, subtype="PCM_16")
        paths.append(str(path))
    return paths


def _assert_same(batched, single):
    assert len(batched) == len(single)
    for got, want in zip(batched, single, strict=True):
        assert [r["label"] for r in got] == [r["label"] for r in want]
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-5)


@pytest.fixture(scope="module", params=["multi-label", "single-label"])
def tagger(request, tagger_dir, single_label_tagger_dir):
    directory = tagger_dir if request.param == "multi-label" else single_label_tagger_dir
    tagger = pipeline("audio-classification", model=str(directory))
    assert isinstance(tagger, AudioTaggingPipeline)
    return tagger


@pytest.mark.parametrize("batch_size", [2, 3])
@pytest.mark.parametrize("kind", ["same-length arrays", "mixed-length arrays", "dicts", "paths"])
def test_a_batched_list_scores_each_input_as_batch_size_1(tagger, kind, batch_size, tmp_path):
    inputs = {
        "same-length arrays": _same_arrays,
        "mixed-length arrays": _mixed_arrays,
        "dicts": _dicts,
        "paths": lambda: _paths(tmp_path),
    }[kind]()
    single = [tagger(x, top_k=None) for x in inputs]
    # The inputs differ, so a shuffled or repeated result would show.
    assert len({tuple(r["label"] for r in out[:3]) + (out[0]["score"],) for out in single}) == len(inputs)
    assert tagger(inputs, top_k=None, batch_size=1) == single
    _assert_same(tagger(inputs, top_k=None, batch_size=batch_size), single)
    _assert_same(tagger(inputs, top_k=3, batch_size=batch_size), [out[:3] for out in single])


@pytest.mark.parametrize("batch_size", [2, 3])
def test_a_batched_generator_is_streamed_and_scored_as_batch_size_1(tagger, batch_size):
    arrays = _mixed_arrays()
    single = [tagger(x, top_k=4) for x in arrays]
    pulled = []

    def clips():
        for array in arrays:
            pulled.append(1)
            yield array

    results = tagger(clips(), top_k=4, batch_size=batch_size)
    assert not isinstance(results, list)  # an iterator, consumed on demand
    first = next(iter(results))
    assert len(pulled) < len(arrays)  # the generator is not read ahead to its end
    _assert_same([first, *results], single)


def test_a_batched_dataset_is_scored_as_batch_size_1(tagger, tmp_path):
    rows = [{"audio": path} for path in _paths(tmp_path)] + [{"audio": d} for d in _dicts()]
    single = [tagger(row["audio"], top_k=5) for row in rows]
    for batch_size in (2, 3):
        _assert_same(list(tagger(KeyDataset(rows, "audio"), top_k=5, batch_size=batch_size)), single)


def test_batch_size_set_on_the_pipeline(tagger_dir):
    arrays = _mixed_arrays()
    tagger = pipeline("audio-classification", model=str(tagger_dir), batch_size=3)
    _assert_same(tagger(arrays, top_k=5), [tagger(x, top_k=5) for x in arrays])


@pytest.mark.parametrize("top_k", [0, -1, -5, 2.5, True])
def test_top_k_below_1_or_not_an_integer_is_refused(tagger_dir, top_k):
    tagger = pipeline("audio-classification", model=str(tagger_dir))
    clip = _noise(1.0, 0)
    with pytest.raises(ValueError, match="top_k"):
        tagger(clip, top_k=top_k)
    with pytest.raises(ValueError, match="top_k"):
        tagger([clip, clip], top_k=top_k, batch_size=2)
    with pytest.raises(ValueError, match="top_k"):
        pipeline("audio-classification", model=str(tagger_dir), top_k=top_k)


def test_top_k_none_or_above_the_labels_gives_every_label(tagger_dir):
    # As transformers' own pipeline: None means every label, and a larger top_k is cut to the labels.
    tagger = pipeline("audio-classification", model=str(tagger_dir))
    clip = _noise(1.0, 0)
    labels = tagger.model.config.num_labels
    every = tagger(clip, top_k=None)
    assert len(every) == labels
    assert tagger(clip, top_k=labels + 10) == every
    assert tagger(clip, top_k=np.int64(2)) == every[:2]
