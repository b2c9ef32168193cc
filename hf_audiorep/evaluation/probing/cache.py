"""The feature cache: the frozen encoder runs once per clip, the probes train on what it wrote.

A split's cache is a directory of numpy files, read back as memory maps so that a probe's minibatches come
from the page cache rather than from RAM the size of the split:

- ``features.npy`` ``(clips, layers, tokens, dim)`` float16 (`LayerFeatureEncoder.layer_features`);
- ``token_mask.npy`` ``(clips, tokens)`` bool, True on tokens that carry audio;
- ``labels.npy`` ``(clips, classes)`` float32 multi-hot (one-hot for single-label data);
- ``meta.json``: the fingerprint of what produced it (encoder weights and settings, data: the clips' labels
  and audio files, `dataset_fingerprint`), the shapes, and the encoder's time.

The size is known before any clip is encoded, ``clips x layers x tokens x dim x 2`` bytes (plus the masks),
so `plan_cache` refuses a cache over the user's budget, or over the free disk space, with the estimate and
what to change. A directory is written under a ``.tmp-`` name and renamed when complete, and reused while
its fingerprint matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .encoder import LayerFeatureEncoder

logger = logging.getLogger(__name__)

__all__ = [
    "CacheBudgetError",
    "CachePlan",
    "FeatureCache",
    "build_feature_cache",
    "cached_features",
    "dataset_fingerprint",
    "encoder_fingerprint",
    "plan_cache",
]

CACHE_DTYPE = np.float16
_FEATURES, _MASK, _LABELS, _META = "features.npy", "token_mask.npy", "labels.npy", "meta.json"
GB = 1e9


class CacheBudgetError(ValueError):
    """The feature cache would not fit the budget (``--cache_budget_gb``) or the free disk space."""


@dataclass(frozen=True)
class CachePlan:
    """The size of a cache before it is written: clips per split and the per-clip feature shape."""

    clips: Mapping[str, int]
    num_layers: int
    num_tokens: int
    hidden_size: int

    @property
    def bytes_per_clip(self) -> int:
        values = self.num_layers * self.num_tokens * self.hidden_size
        return values * np.dtype(CACHE_DTYPE).itemsize + self.num_tokens  # + the bool token mask

    @property
    def total_bytes(self) -> int:
        return sum(self.clips.values()) * self.bytes_per_clip

    def describe(self) -> str:
        clips = " + ".join(f"{n} {split}" for split, n in self.clips.items())
        return (
            f"{self.total_bytes / GB:.2f} GB ({clips} clips x {self.num_layers} layers x {self.num_tokens} "
            f"tokens x {self.hidden_size} dims x {np.dtype(CACHE_DTYPE).itemsize} bytes)"
        )


def plan_cache(
    clips: Mapping[str, int],
    feature_shape: tuple[int, int, int],
    budget_bytes: float,
    directory: str | os.PathLike | None = None,
    token_pooling: int = 1,
) -> CachePlan:
    """The `CachePlan` of ``clips`` per split, ``feature_shape`` = ``(layers, tokens, dim)`` per clip (after
    ``token_pooling``); raises `CacheBudgetError` when it exceeds ``budget_bytes`` or the free space under
    ``directory``, saying what would make it fit."""
    if any(n < 1 for n in clips.values()):
        raise ValueError(f"every split needs at least one clip, got {dict(clips)}")
    plan = CachePlan(dict(clips), *feature_shape)
    limit, where = budget_bytes, f"the cache budget (--cache_budget_gb {budget_bytes / GB:g})"
    if directory is not None:
        existing = Path(directory).absolute()
        while not existing.exists():
            existing = existing.parent
        free = shutil.disk_usage(existing).free
        if free < limit:
            limit, where = free, f"the {free / GB:.2f} GB free under {existing}"
    if plan.total_bytes <= limit:
        return plan
    tokens_that_fit = limit // (sum(plan.clips.values()) * plan.bytes_per_clip / plan.num_tokens)
    hints = [f"probe fewer clips (at most {int(limit // plan.bytes_per_clip)} in all fit)"]
    if tokens_that_fit >= 1:
        pooling = token_pooling * math.ceil(plan.num_tokens / tokens_that_fit)
        hints.append(f"average tokens in groups (--token_pooling {pooling} fits)")
    hints.append("probe fewer layers (--layers)")
    if where.startswith("the cache budget"):
        hints.append("raise --cache_budget_gb if the disk has room")
    raise CacheBudgetError(
        f"the feature cache would take {plan.describe()}, over {where}: " + "; or ".join(hints)
    )


def encoder_fingerprint(encoder: LayerFeatureEncoder) -> str:
    """A hash of what the cached features depend on: the encoder's config and weights, its feature
    extractor, the probed layers and the token pooling."""
    digest = hashlib.sha256()
    digest.update(encoder.model.config.to_json_string().encode())
    digest.update(encoder.feature_extractor.to_json_string().encode())
    digest.update(json.dumps([encoder.requested_layers, encoder.token_pooling]).encode())
    for name, tensor in sorted(encoder.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def dataset_fingerprint(
    dataset, audio_column: str, label_column: str | None, num_clips: int, chunk: int = 1024
) -> str:
    """A hash of what the first ``num_clips`` records of a map-style ``datasets.Dataset`` hold, read without
    decoding any audio: their labels, and their audio's identity, a local file's path, size and modification
    time (its content changes them) or else the hash of the encoded bytes the record carries.

    A cache keyed on the data's path alone was reused after files moved between class folders or were
    replaced, and scored stale labels and audio."""
    digest = hashlib.sha256()
    columns = [audio_column] + ([label_column] if label_column else [])
    records = dataset.select_columns(columns).with_format("arrow")
    for start in range(0, min(num_clips, len(dataset)), chunk):
        table = records[start : min(start + chunk, num_clips)]
        for audio in table.column(audio_column).to_pylist():
            _update_audio_identity(digest, audio)
        if label_column:
            digest.update(json.dumps(table.column(label_column).to_pylist(), default=str).encode())
    return digest.hexdigest()


def _update_audio_identity(digest, audio) -> None:
    if not isinstance(audio, dict):  # a path string, or an array the dataset holds itself
        audio = {"path": audio} if isinstance(audio, str) else {"bytes": np.asarray(audio).tobytes()}
    path, data = audio.get("path"), audio.get("bytes")
    digest.update(json.dumps(path).encode())
    if data is not None:
        digest.update(hashlib.sha256(data).digest())
    elif path is not None and os.path.isfile(path):
        stat = os.stat(path)
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())


class FeatureCache:
    """One split's cache directory, memory-mapped (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        meta_path = self.directory / _META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.directory} is not a feature cache (no {_META})")
        self.meta = json.loads(meta_path.read_text())
        count = int(self.meta["num_clips"])
        # Clips skipped as corrupt leave unused rows at the end of the pre-allocated features file.
        self.features = np.load(self.directory / _FEATURES, mmap_mode="r")[:count]
        self.token_mask = np.load(self.directory / _MASK)[:count]
        self.labels = np.load(self.directory / _LABELS)[:count]

    def __len__(self) -> int:
        return len(self.features)

    @property
    def num_layers(self) -> int:
        return self.features.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.features.shape[2]

    @property
    def hidden_size(self) -> int:
        return self.features.shape[3]

    @property
    def num_labels(self) -> int:
        return self.labels.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes on disk."""
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())

    def read(
        self, indices: np.ndarray | slice, device: str | torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``features`` float32, ``token_mask`` bool and ``labels`` float32 tensors of the clips ``indices``
        (sorted indices read the memory map in order)."""
        # A slice of the read-only map is a view; torch needs memory it may write, so that one is copied.
        features, mask, labels = (
            torch.from_numpy(np.require(array[indices], requirements=("C", "W"))).to(device)
            for array in (self.features, self.token_mask, self.labels)
        )
        return features.float(), mask, labels


def cached_features(directory: str | os.PathLike, fingerprint: str) -> FeatureCache | None:
    """The cache at ``directory`` when it was built with ``fingerprint``, else None (nothing there, or a cache
    of another encoder or data, which a rebuild replaces). Anything else at ``directory`` is refused."""
    directory = Path(directory)
    if not directory.exists():
        return None
    if not (directory / _META).is_file():
        raise FileExistsError(
            f"{directory} exists and is not a feature cache: choose another cache directory"
        )
    cache = FeatureCache(directory)
    return cache if cache.meta.get("fingerprint") == fingerprint else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_feature_cache(
    encoder: LayerFeatureEncoder,
    batches: Iterable[Mapping],
    directory: str | os.PathLike,
    *,
    num_clips: int,
    feature_shape: tuple[int, int, int],
    sample_rate: int,
    fingerprint: str,
    overwrite: bool = False,
) -> FeatureCache:
    """Encodes up to ``num_clips`` clips of ``batches`` (the library's ``{"waveforms", "lengths", "labels"}``
    batches at ``sample_rate``) into a cache at ``directory``, or opens the cache already there when its
    fingerprint is ``fingerprint`` (and ``overwrite`` is False).

    ``feature_shape`` is ``(layers, tokens, dim)`` of a full-length clip (see
    `LayerFeatureEncoder.feature_shape`); shorter clips' batches with fewer tokens get masked padding tokens.
    ``meta.json`` records ``encoder_seconds`` (front end + forward, the device synchronised) and
    ``build_seconds`` (also decoding and writing).
    """
    directory = Path(directory)
    existing = cached_features(directory, fingerprint)
    if existing is not None and not overwrite:
        logger.info("reusing the feature cache %s (%d clips)", directory, len(existing))
        return existing
    staging = directory.with_name(f".tmp-{directory.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    num_layers, num_tokens, hidden_size = feature_shape
    features = np.lib.format.open_memmap(
        staging / _FEATURES,
        mode="w+",
        dtype=CACHE_DTYPE,
        shape=(num_clips, num_layers, num_tokens, hidden_size),
    )
    masks = np.zeros((num_clips, num_tokens), dtype=bool)
    labels: list[np.ndarray] = []
    written, encoder_seconds, started = 0, 0.0, time.perf_counter()
    device = encoder.device
    for batch in batches:
        if written >= num_clips:
            break
        _sync(device)
        tick = time.perf_counter()
        values, mask = encoder.layer_features(batch["waveforms"], batch["lengths"], sample_rate)
        _sync(device)
        encoder_seconds += time.perf_counter() - tick
        take = min(len(values), num_clips - written)
        tokens = values.shape[2]
        if values.shape[1] != num_layers or values.shape[3] != hidden_size or tokens > num_tokens:
            raise ValueError(
                f"the encoder gave features {tuple(values.shape[1:])} per clip, outside the planned "
                f"{feature_shape}: are some clips longer than the clip length the cache was sized for?"
            )
        stored = values[:take].to(torch.float16)
        if not torch.isfinite(stored).all():
            raise ValueError(
                "hidden states overflow float16 (|value| > 65504): this encoder cannot be cached in half "
                "precision"
            )
        features[written : written + take, :, :tokens] = stored.cpu().numpy()
        masks[written : written + take, :tokens] = mask[:take].cpu().numpy()
        target = batch["labels"]
        labels.append(
            np.asarray(target.cpu() if torch.is_tensor(target) else target, dtype=np.float32)[:take]
        )
        written += take
    if written == 0:
        raise ValueError("the batches produced no clips to cache")
    if written < num_clips:
        logger.warning(
            "the split gave %d clips of the %d planned (corrupt records are skipped)", written, num_clips
        )
    features.flush()
    del features
    np.save(staging / _MASK, masks[:written])
    np.save(staging / _LABELS, np.concatenate(labels))
    meta = {
        "fingerprint": fingerprint,
        "num_clips": written,
        "feature_shape": list(feature_shape),
        "dtype": np.dtype(CACHE_DTYPE).name,
        "layer_indices": encoder.layer_indices,
        "layer_names": encoder.layer_names,
        "token_pooling": encoder.token_pooling,
        "encoder_seconds": encoder_seconds,
        "build_seconds": time.perf_counter() - started,
    }
    (staging / _META).write_text(json.dumps(meta, indent=2) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(staging, directory)
    cache = FeatureCache(directory)
    logger.info(
        "cached %d clips in %s: %.2f GB, encoder %.1f s (%.1f clips/s)",
        written,
        directory,
        cache.nbytes / GB,
        encoder_seconds,
        written / max(encoder_seconds, 1e-9),
    )
    return cache
