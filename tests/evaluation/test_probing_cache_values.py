"""The feature cache's arithmetic checked by hand: the budget check at its edges and its advice, what the
writer stores (which clips, where, in which dtype), the clip count, the shape and overflow checks, the
encoder-time accounting, and what `FeatureCache` reads back.

The writer is driven by `ScriptedEncoder`, which hands back the features it is given, so every stored value
is known in advance; the clock is a fake one, so the recorded times are exact.
"""

import logging
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hf_audiorep.evaluation.probing import cache as cache_module
from hf_audiorep.evaluation.probing.cache import (
    CacheBudgetError,
    FeatureCache,
    build_feature_cache,
    plan_cache,
)

SHAPE = (2, 4, 3)  # layers, tokens, dims per full-length clip
LOGGER = "hf_audiorep.evaluation.probing.cache"


class FakeClock:
    """`time.perf_counter` that moves only when told to."""

    def __init__(self, start: float = 100.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ScriptedEncoder:
    """Stands in for `LayerFeatureEncoder`: a batch's ``waveforms`` are already its ``(clips, layers, tokens,
    dim)`` features, its ``lengths`` the number of real tokens per clip; each call takes ``seconds`` on
    ``clock``."""

    def __init__(self, clock=None, seconds=0.0, device="cpu"):
        self.clock, self.seconds, self.device = clock, seconds, torch.device(device)
        self.layer_indices, self.layer_names, self.token_pooling = [0, 2], ["embeddings", "layer 2"], 3
        self.calls = 0

    def layer_features(self, waveforms, lengths, sample_rate):
        assert sample_rate == 16000
        self.calls += 1
        if self.clock is not None:
            self.clock.advance(self.seconds)
        mask = torch.arange(waveforms.shape[2]) < torch.as_tensor(lengths)[:, None]
        return waveforms, mask


def batch(clips, tokens=SHAPE[1], layers=SHAPE[0], dim=SHAPE[2], labels=None, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    values = scale * torch.randn(clips, layers, tokens, dim, generator=generator)
    if labels is None:
        labels = torch.eye(4)[torch.arange(clips) % 4]
    return {"waveforms": values, "lengths": torch.full((clips,), tokens), "labels": labels}


def build(encoder, batches, directory, num_clips, fingerprint="fp", **kwargs):
    return build_feature_cache(
        encoder,
        batches,
        directory,
        num_clips=num_clips,
        feature_shape=SHAPE,
        sample_rate=16000,
        fingerprint=fingerprint,
        **kwargs,
    )


# ------------------------------------------------------------------------------------------ the budget


# Hand sizes: 2 layers x 10 tokens x 4 dims in float16 + a 10-byte token mask = 170 bytes a clip, 17 a token.
TINY = (2, 10, 4)
CLIPS = {"train": 3, "test": 1}  # 4 clips: 680 bytes, 68 per token of every clip


def test_the_budget_check_accepts_a_cache_of_exactly_the_budget_and_refuses_one_byte_less():
    plan = plan_cache(CLIPS, TINY, 680)
    assert plan.bytes_per_clip == 170 and plan.total_bytes == 680
    with pytest.raises(CacheBudgetError):
        plan_cache(CLIPS, TINY, 679)
    # One clip is a valid split; none is not.
    assert plan_cache({"train": 1}, TINY, 170).total_bytes == 170
    with pytest.raises(ValueError, match=re.escape("every split needs at least one clip, got {'train': 0}")):
        plan_cache({"train": 0}, TINY, 1e9)


def test_the_refusal_gives_the_estimate_and_the_smallest_pooling_that_fits():
    # 238 bytes = 3.5 tokens of every clip: 3 whole tokens fit, so ceil(10 / 3) = 4 (pooling by 3 leaves 4
    # tokens, 272 bytes); one clip of 170 bytes fits.
    with pytest.raises(CacheBudgetError) as error:
        plan_cache(CLIPS, TINY, 238)
    assert str(error.value) == (
        "the feature cache would take 0.00 GB (3 train + 1 test clips x 2 layers x 10 tokens x 4 dims x 2 "
        "bytes), over the cache budget (--cache_budget_gb 2.38e-07): probe fewer clips (at most 1 in all "
        "fit); or average tokens in groups (--token_pooling 4 fits); or probe fewer layers (--layers); or "
        "raise --cache_budget_gb if the disk has room"
    )

    def fits(pooling):
        tokens = -(-10 // pooling)
        return 4 * (2 * tokens * 4 * 2 + tokens) <= 238

    assert fits(4) and not fits(3)  # the advice is the smallest pooling that fits
    plan_cache(CLIPS, (2, 3, 4), 238)
    with pytest.raises(CacheBudgetError):
        plan_cache(CLIPS, (2, 4, 4), 238)
    # Tokens already pooled by 2: the advice multiplies that.
    with pytest.raises(CacheBudgetError, match=r"--token_pooling 8 fits"):
        plan_cache(CLIPS, TINY, 238, token_pooling=2)


def test_pooling_is_advised_while_one_token_of_every_clip_fits():
    with pytest.raises(CacheBudgetError, match=r"--token_pooling 10 fits"):  # 68 bytes: exactly one token
        plan_cache(CLIPS, TINY, 68)
    with pytest.raises(CacheBudgetError) as error:  # 67 bytes: not even one
        plan_cache(CLIPS, TINY, 67)
    assert "--token_pooling" not in str(error.value)
    assert "at most 0 in all fit" in str(error.value)


def test_the_free_space_is_read_from_the_nearest_existing_parent(tmp_path, monkeypatch):
    asked = []

    def disk_usage(path):
        asked.append(path)
        return SimpleNamespace(free=600)

    monkeypatch.setattr(cache_module.shutil, "disk_usage", disk_usage)
    assert plan_cache({"train": 3}, TINY, 1e9, tmp_path / "runs" / "cache" / "train").total_bytes == 510
    assert asked == [tmp_path]
    with pytest.raises(CacheBudgetError) as error:
        plan_cache(CLIPS, TINY, 1e9, tmp_path / "runs" / "cache" / "train")
    # Over the free space, not the budget: raising the budget would not help, so it is not advised.
    assert str(error.value).endswith(
        f"over the 0.00 GB free under {tmp_path}: probe fewer clips (at most 3 in all fit); or average "
        "tokens in groups (--token_pooling 2 fits); or probe fewer layers (--layers)"
    )

    # With the real disk: a directory that does not exist yet is planned under its parents.
    monkeypatch.undo()
    assert plan_cache(CLIPS, TINY, 680, tmp_path / "a" / "b" / "c").total_bytes == 680


def test_free_space_equal_to_the_budget_leaves_the_budget_as_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: SimpleNamespace(free=600))
    with pytest.raises(CacheBudgetError) as error:
        plan_cache(CLIPS, TINY, 600, tmp_path)
    assert "over the cache budget (--cache_budget_gb 6e-07)" in str(error.value)
    assert str(error.value).endswith("raise --cache_budget_gb if the disk has room")


# ------------------------------------------------------------------------------------------ the writer


def test_the_writer_stores_the_first_clips_in_float16_with_their_masks_labels_and_times(
    tmp_path, monkeypatch, caplog
):
    clock = FakeClock()
    monkeypatch.setattr(cache_module, "time", SimpleNamespace(perf_counter=clock))
    encoder = ScriptedEncoder(clock, seconds=0.25)
    batches = [
        batch(2, seed=1),
        # shorter clips: 3 tokens of 4; labels as Python integers
        batch(2, tokens=3, seed=2, labels=[[0, 1, 0, 0], [1, 0, 0, 1]]),
        batch(2, seed=3, labels=np.array([[0, 0, 1, 0], [0, 0, 0, 1]])),  # only its first clip is planned
        batch(2, seed=4),  # never reached
    ]

    def stream():
        for b in batches:
            clock.advance(10.0)  # decoding, outside the encoder's time
            yield b

    with caplog.at_level(logging.INFO, logger=LOGGER):
        cache = build(encoder, stream(), tmp_path / "train", num_clips=5)
    assert encoder.calls == 3  # the fourth batch is not encoded

    expected = np.zeros((5, *SHAPE), dtype=np.float16)
    expected[0:2] = batches[0]["waveforms"].numpy().astype(np.float16)
    expected[2:4, :, :3] = batches[1]["waveforms"].numpy().astype(np.float16)
    expected[4] = batches[2]["waveforms"][0].numpy().astype(np.float16)
    assert isinstance(cache, FeatureCache) and len(cache) == 5
    assert cache.features.dtype == np.float16
    np.testing.assert_array_equal(cache.features, expected)
    mask = np.ones((5, 4), dtype=bool)
    mask[2:4, 3] = False
    np.testing.assert_array_equal(cache.token_mask, mask)
    labels = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0]], np.float32)
    assert cache.labels.dtype == np.float32
    np.testing.assert_array_equal(cache.labels, labels)

    # Encoder time: 3 calls of 0.25 s; build time: also the 4 x 10 s of decoding (the fourth batch is read,
    # then left unencoded).
    assert cache.meta == {
        "fingerprint": "fp",
        "num_clips": 5,
        "feature_shape": [2, 4, 3],
        "dtype": "float16",
        "layer_indices": [0, 2],
        "layer_names": ["embeddings", "layer 2"],
        "token_pooling": 3,
        "encoder_seconds": 0.75,
        "build_seconds": 40.75,
    }
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == [
        "features.npy",
        "labels.npy",
        "meta.json",
        "token_mask.npy",
    ]
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)  # every planned clip was written
    # 5 clips in 0.75 s of encoder time: 6.7 clips/s.
    assert caplog.records[-1].getMessage() == (
        f"cached 5 clips in {tmp_path / 'train'}: 0.00 GB, encoder 0.8 s (6.7 clips/s)"
    )

    # Opened again under the same fingerprint: nothing encoded, and the log says which cache.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        again = build(encoder, iter(batches), tmp_path / "train", num_clips=5)
    assert encoder.calls == 3 and len(again) == 5
    assert [r.getMessage() for r in caplog.records] == [
        f"reusing the feature cache {tmp_path / 'train'} (5 clips)"
    ]


def test_a_split_short_of_its_plan_is_cached_at_the_clips_it_gave(tmp_path, caplog):
    encoder = ScriptedEncoder()
    batches = [batch(2, seed=1), batch(2, seed=2)]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        cache = build(encoder, batches, tmp_path / "train", num_clips=7)
    warnings_logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings_logged == ["the split gave 4 clips of the 7 planned (corrupt records are skipped)"]
    # The features file was allocated for 7 clips: the 3 unused rows are not clips.
    assert np.load(tmp_path / "train" / "features.npy", mmap_mode="r").shape[0] == 7
    assert len(cache) == 4 and cache.features.shape == (4, *SHAPE)
    expected = torch.cat([b["waveforms"] for b in batches]).numpy().astype(np.float16)
    np.testing.assert_array_equal(FeatureCache(tmp_path / "train").features, expected)
    assert cache.token_mask.shape == (4, 4) and cache.labels.shape == (4, 4)


def test_a_one_clip_split_is_cached_and_an_empty_one_refused(tmp_path):
    one = build(ScriptedEncoder(), [batch(1)], tmp_path / "one", num_clips=1)
    assert len(one) == 1
    with pytest.raises(ValueError, match=r"^the batches produced no clips to cache$"):
        build(ScriptedEncoder(), [], tmp_path / "none", num_clips=3)


@pytest.mark.parametrize(
    ("layers", "tokens", "dim"),
    # each alone off the plan (2, 4, 3); one layer or one dim would broadcast silently into the file
    [(1, 4, 3), (2, 4, 1), (2, 5, 3)],
)
def test_features_off_the_planned_shape_are_refused(tmp_path, layers, tokens, dim):
    with pytest.raises(ValueError) as error:
        build(
            ScriptedEncoder(), [batch(2, layers=layers, tokens=tokens, dim=dim)], tmp_path / "c", num_clips=2
        )
    assert str(error.value) == (
        f"the encoder gave features ({layers}, {tokens}, {dim}) per clip, outside the planned (2, 4, 3): are "
        "some clips longer than the clip length the cache was sized for?"
    )
    assert not (tmp_path / "c").exists()


def test_hidden_states_beyond_float16_are_refused_and_its_largest_value_kept(tmp_path):
    largest = batch(2)
    largest["waveforms"][:] = 65504.0  # float16's largest finite value
    cache = build(ScriptedEncoder(), [largest], tmp_path / "ok", num_clips=2)
    assert (cache.features == np.float16(65504.0)).all()

    over = batch(2)
    over["waveforms"][1, 0, 0, 0] = 7.0e4  # finite in float32, inf in float16
    with pytest.raises(ValueError) as error:
        build(ScriptedEncoder(), [over], tmp_path / "over", num_clips=2)
    assert str(error.value) == (
        "hidden states overflow float16 (|value| > 65504): this encoder cannot be cached in half precision"
    )


def test_a_stale_staging_directory_is_replaced_and_missing_parents_are_made(tmp_path):
    staging = tmp_path / "runs" / ".tmp-train"  # left by a build that crashed
    staging.mkdir(parents=True)
    (staging / "features.npy").write_bytes(b"half written")
    (staging / "junk.txt").write_text("stale")
    cache = build(ScriptedEncoder(), [batch(2)], tmp_path / "runs" / "train", num_clips=2)
    assert len(cache) == 2 and not staging.exists()
    assert not (tmp_path / "runs" / "train" / "junk.txt").exists()

    deep = build(ScriptedEncoder(), [batch(2)], tmp_path / "new" / "nested" / "train", num_clips=2)
    assert len(deep) == 2


def test_the_encoder_time_waits_for_the_accelerator(tmp_path, monkeypatch):
    """On CUDA the forward pass is asynchronous: the device is synchronised before the clock starts and
    before it stops, so the recorded time includes the queued work (here 1 s per batch)."""
    clock = FakeClock()
    monkeypatch.setattr(cache_module, "time", SimpleNamespace(perf_counter=clock))
    synchronised = []

    def synchronize(device=None):
        synchronised.append(device)
        clock.advance(1.0)

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    gpu = torch.device("cuda", 1)
    cache = build(ScriptedEncoder(clock, 0.25, gpu), [batch(2), batch(2)], tmp_path / "gpu", num_clips=4)
    assert synchronised == [gpu] * 4
    # per batch: [sync 1 s] tick, forward 0.25 s, sync 1 s, tock
    assert cache.meta["encoder_seconds"] == 2 * 1.25

    synchronised.clear()
    build(ScriptedEncoder(clock, 0.25), [batch(2)], tmp_path / "cpu", num_clips=2)
    assert synchronised == []


# ------------------------------------------------------------------------------------------ the reader


def test_the_reader_memory_maps_features_and_returns_writable_copies_on_the_device(tmp_path):
    batches = [batch(2, seed=1), batch(2, tokens=3, seed=2)]
    build(ScriptedEncoder(), batches, tmp_path / "c", num_clips=4)
    cache = FeatureCache(tmp_path / "c")
    assert isinstance(cache.features, np.memmap) and not cache.features.flags.writeable
    assert (cache.num_layers, cache.num_tokens, cache.hidden_size, cache.num_labels) == (2, 4, 3, 4)

    # A slice of the read-only map must be copied before torch wraps it (writing through the tensor would
    # be undefined behaviour): torch warns when it is not. Its warn-once latch is lifted for this check.
    was = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            features, mask, labels = cache.read(slice(1, 3))
    finally:
        torch.set_warn_always(was)
    expected = torch.cat(
        [batches[0]["waveforms"][1:], torch.nn.functional.pad(batches[1]["waveforms"][:1], (0, 0, 0, 1))]
    )
    torch.testing.assert_close(features, expected.half().float())
    assert features.dtype == torch.float32
    assert mask.tolist() == [[True] * 4, [True, True, True, False]]
    torch.testing.assert_close(labels, torch.eye(4)[[1, 0]])

    on_meta = cache.read(np.array([0, 3]), device="meta")
    assert all(t.device.type == "meta" for t in on_meta)
