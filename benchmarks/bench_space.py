"""Latency of the audio-tagger Space from upload to labels, per model size, on CPU.

For each model (random weights: latency does not depend on what the weights learned) the Space is served
on 127.0.0.1 and a 10-s 44.1 kHz stereo WAV (what a phone or a browser recording hands over) is sent
through ``gradio_client`` ``--runs`` times; the table gives the median and the spread of the wall time of
``client.predict`` (upload, decode and resample, sliding-window tagging, spectrogram and figure, reply).
The first call, which loads the checkpoint, is timed separately. The handler alone (no HTTP) is timed too,
to show what the server adds.

Run from the repository root:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_space.py --runs 7 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import soundfile as sf
import torch
import transformers
from transformers import AutoModelForAudioClassification

import hf_audiorep
from hf_audiorep.data import AUDIOSET_ONTOLOGY
from hf_audiorep.modeling import AudioFbankFeatureExtractor

SPACE = Path(__file__).resolve().parents[1] / "spaces" / "audio-tagger"
PRESETS = ("audiomae-tiny", "audiomae-base")


def _load_app():
    spec = importlib.util.spec_from_file_location("audio_tagger_app", SPACE / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _label_names() -> list[str]:
    return list(AUDIOSET_ONTOLOGY.names)  # a 527-class head, as an AudioSet tagger has


def _save_model(preset: str, directory: Path) -> int:
    names = _label_names()
    config = hf_audiorep.config_from_preset(
        preset,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
        problem_type="multi_label_classification",
    )
    torch.manual_seed(0)
    model = AutoModelForAudioClassification.from_config(config)
    model.save_pretrained(directory)
    AudioFbankFeatureExtractor(target_length=config.max_length).save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def _clip(path: Path, seconds: float) -> Path:
    rng = np.random.default_rng(0)
    rate = 44100
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 440 * t) * (t % 1 < 0.5) + 0.05 * rng.standard_normal(t.size)
    sf.write(path, np.stack([mono, 0.8 * mono], axis=1).astype(np.float32), rate, subtype="PCM_16")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(client, clip: Path, model_dir: Path) -> float:
    from gradio_client import handle_file

    start = time.perf_counter()
    labels, _, message = client.predict(handle_file(str(clip)), str(model_dir), 5, api_name="/predict")
    elapsed = time.perf_counter() - start
    if not labels or "confidences" not in labels:
        raise RuntimeError(f"no labels came back: {message}")
    return elapsed


def _stats(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:8.0f} ms  [{min(times) * 1000:.0f}-{max(times) * 1000:.0f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--runs", type=int, default=7, help="timed requests per model (after the first)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    from gradio_client import Client

    app = _load_app()
    tmp = Path(tempfile.mkdtemp(prefix="bench_space_"))
    clip = _clip(tmp / "clip.wav", args.seconds)
    cpu = platform.processor() or platform.machine()
    print(
        f"# bench_space: {args.seconds:g}-s 44.1 kHz stereo WAV, upload -> labels via gradio_client, CPU "
        f"{cpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), {args.runs} runs"
    )
    header = f"{'model':16} {'params':>8} {'first call':>12} {'median [min-max] via HTTP':>32}"
    print(f"{header} {'handler only':>28}")
    for preset in args.presets:
        model_dir = tmp / preset
        params = _save_model(preset, model_dir)
        settings = app.TaggerSettings(model_ids=(str(model_dir),), max_seconds=max(30.0, args.seconds))
        demo = app.build_demo([str(model_dir)], max_seconds=settings.max_seconds, examples=False)
        port = _free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            client = Client(
                f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False, download_files=str(tmp)
            )

            first = _request(client, clip, model_dir)  # loads the checkpoint
            http = [_request(client, clip, model_dir) for _ in range(args.runs)]
            direct = []
            for _ in range(args.runs):
                start = time.perf_counter()
                app.predict(str(clip), str(model_dir), 5, settings=settings)
                direct.append(time.perf_counter() - start)
        finally:
            with contextlib.redirect_stdout(io.StringIO()):  # keep gradio's "Closing server" out of the table
                demo.close()
        row = f"{preset:16} {params / 1e6:7.1f}M {first * 1000:9.0f} ms {_stats(http):>32}"
        print(f"{row} {_stats(direct):>28}")


if __name__ == "__main__":
    main()
