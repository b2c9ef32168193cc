"""Upload -> labels on the Space and the model's forward on CPU, per model size and inference path.

Three measurements, for random-weight models of each preset (latency does not depend on what the weights
learned) and a 10-s 44.1 kHz stereo WAV (what a phone or a browser recording hands over):

1. **Forward paths**: the model alone on the clip's features (batch 1), median of ``--runs`` after a warm-up,
   for each of ``--paths``: ``eager`` (float32), ``bf16`` (autocast, :mod:`hf_audiorep.precision`),
   ``compile`` (``torch.compile``, float32), ``ort`` (ONNX Runtime, float32, the graph of
   ``hf_audiorep.export.export_onnx``), ``ort-int8`` (ONNX Runtime's dynamic int8 quantisation of that graph)
   and ``torch-int8`` (``torch.ao`` dynamic int8 quantisation of the Linear layers). "prepare" is the
   one-off cost (export, quantisation, compilation and first call); "max |d score|" the largest difference
   of any of the 527 sigmoid scores to eager's.
2. **The Space**: served on 127.0.0.1, the clip sent through ``gradio_client`` per ``--precisions``; the
   median and spread of the wall time of ``client.predict`` (upload, decode and resample, sliding-window
   tagging, spectrogram and figure, reply), the first call (which loads the checkpoint) apart, and the
   handler alone (no HTTP).
3. With ``--accuracy_model DIR`` (a trained tagger of the embedded corpus, e.g. an
   ``experiments/lora_table.py`` fine-tuning), what each path costs in accuracy: mAP on the corpus's test
   split at the model's window, the score differences to eager over those clips, and how often the top
   label and the set of the top 5 labels are eager's.

Run from the repository root (``--help`` for every option):

    PYTHONPATH=. .venv/bin/python benchmarks/bench_space.py --runs 7 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

import hf_audiorep
from hf_audiorep.data import AUDIOSET_ONTOLOGY
from hf_audiorep.data.decode import decode_audio
from hf_audiorep.precision import for_inference
from hf_audiorep.registry import feature_extractor_for

SPACE = Path(__file__).resolve().parents[1] / "spaces" / "audio-tagger"
PRESETS = ("audiomae-tiny", "audiomae-base")
PATHS = ("eager", "bf16", "compile", "ort", "ort-int8", "torch-int8")


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
    feature_extractor_for(config).save_pretrained(directory)
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


def _stats(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:8.0f} ms  [{min(times) * 1000:.0f}-{max(times) * 1000:.0f}]"


# ------------------------------------------------------------------------------------ forward paths


def _sigmoid(logits) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def _ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _path_runner(path: str, model, feature_extractor, features: torch.Tensor, work: Path):
    """A function ``features -> sigmoid scores`` for one inference path (built here: the one-off cost)."""

    def torch_runner(module):
        def run(x):
            with torch.inference_mode():
                return _sigmoid(module(input_values=x).logits.float().numpy())

        return run

    if path == "eager":
        return torch_runner(model)
    if path == "bf16":
        return torch_runner(for_inference(model, "bf16"))
    if path == "compile":
        return torch_runner(torch.compile(model))
    if path == "torch-int8":
        quantize = torch.ao.quantization.quantize_dynamic
        return torch_runner(quantize(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8))
    if path in ("ort", "ort-int8"):
        from hf_audiorep.export import export_onnx

        graph = work / "model.onnx"
        if not graph.exists():
            seconds = features.shape[1] * getattr(feature_extractor, "frame_shift_ms", 10.0) / 1000
            # A front end without a fixed window (BEATs, Zipformer) gives as many frames as the clip has: a
            # symbolic time axis then, since the exporter's example clip need not give the same count.
            variable = getattr(feature_extractor, "target_length", None) is None
            export_onnx(
                model, feature_extractor, graph, seconds=seconds, dynamic_batch=False, dynamic_length=variable
            )
        if path == "ort-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = work / "model.int8.onnx"
            quantize_dynamic(str(graph), str(quantized), weight_type=QuantType.QInt8)
            graph = quantized
        session = _ort_session(graph)
        return lambda x: _sigmoid(session.run(["logits"], {"input_values": x.numpy()})[0])
    raise ValueError(f"unknown path {path!r}; choose from {', '.join(PATHS)}")


def forward_paths(preset: str, model_dir: Path, clip: Path, paths, runs: int, work: Path) -> None:
    model = AutoModelForAudioClassification.from_pretrained(model_dir).eval()
    feature_extractor = AutoFeatureExtractor.from_pretrained(model_dir)
    wave = decode_audio(str(clip), feature_extractor.sampling_rate)
    features = feature_extractor(wave, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
    features = features["input_values"]
    reference = None
    for path in paths:
        start = time.perf_counter()
        try:
            run = _path_runner(path, model, feature_extractor, features, work)
            scores = run(features)  # the first call: compilation, session and kernel set-up
        except Exception as err:  # one path failing (an exporter, a kernel) must not hide the others
            print(f"{preset:16} {path:11} failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
            continue
        prepare = time.perf_counter() - start
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            run(features)
            times.append(time.perf_counter() - start)
        reference = scores if path == "eager" else reference
        diff = "" if reference is None else f"{np.abs(scores - reference).max():.1e}"
        print(f"{preset:16} {path:11} {prepare:9.1f} s {_stats(times):>28} {diff:>14}", flush=True)


# ------------------------------------------------------------------------------------------ the Space


def _request(client, clip: Path, model_dir: Path) -> float:
    from gradio_client import handle_file

    start = time.perf_counter()
    labels, _, message = client.predict(handle_file(str(clip)), str(model_dir), 5, api_name="/predict")
    elapsed = time.perf_counter() - start
    if not labels or "confidences" not in labels:
        raise RuntimeError(f"no labels came back: {message}")
    return elapsed


def space_latency(app, preset: str, params: int, model_dir: Path, clip: Path, precision: str, args, tmp):
    from gradio_client import Client

    settings = app.TaggerSettings(
        model_ids=(str(model_dir),), max_seconds=max(30.0, args.seconds), precision=precision
    )
    demo = app.build_demo(
        [str(model_dir)], max_seconds=settings.max_seconds, examples=False, precision=precision
    )
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
    resolved = app.load_model(str(model_dir), precision)[0].inference_precision
    row = f"{preset:16} {f'{precision} ({resolved})':12} {params / 1e6:7.1f}M {first * 1000:9.0f} ms"
    print(f"{row} {_stats(http):>28} {_stats(direct):>28}", flush=True)


# ------------------------------------------------------------------------------------------- accuracy


def accuracy(model_dir: Path, paths, work: Path, seconds: float | None = None) -> None:
    from hf_audiorep.data.embedded import load_embedded_corpus
    from hf_audiorep.evaluation.metrics import mean_average_precision
    from hf_audiorep.inference import model_window_seconds

    model = AutoModelForAudioClassification.from_pretrained(model_dir).eval()
    feature_extractor = AutoFeatureExtractor.from_pretrained(model_dir)
    seconds = seconds or model_window_seconds(feature_extractor)
    test = load_embedded_corpus(clip_seconds=seconds)["test"]
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    targets = np.zeros((len(test), len(names)))
    waves = []
    for i, row in enumerate(test):
        targets[i, [names.index(n) for n in row["label_names"] if n in names]] = 1
        waves.append(np.asarray(row["audio"]["array"], dtype=np.float32))
    rate = feature_extractor.sampling_rate
    batches = [
        feature_extractor(waves[i : i + 16], sampling_rate=rate, return_tensors="pt")["input_values"]
        for i in range(0, len(waves), 16)
    ]
    print(f"# {model_dir}: {len(test)} test clips of {seconds:g} s, {len(names)} labels")
    header = f"{'path':11} {'mAP':>7} {'max |d score|':>14} {'mean |d score|':>15}"
    print(f"{header} {'same top-1':>11} {'same top-5 set':>15}")
    reference = None
    for path in paths:
        try:
            if path.startswith("ort"):  # a graph of one clip at a time: exported with batch 1
                run = _path_runner(path, model, feature_extractor, batches[0][:1], work)
                scores = np.concatenate([run(x[None]) for batch in batches for x in batch])
            else:
                run = _path_runner(path, model, feature_extractor, batches[0], work)
                scores = np.concatenate([run(batch) for batch in batches])
        except Exception as err:
            print(f"{path:11} failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
            continue
        reference = scores if path == "eager" else reference
        top = np.sort(np.argsort(-scores, axis=1)[:, :5], axis=1)
        top_ref = np.sort(np.argsort(-reference, axis=1)[:, :5], axis=1)
        same = float((top == top_ref).all(axis=1).mean())
        same_top1 = float((scores.argmax(axis=1) == reference.argmax(axis=1)).mean())
        diff = np.abs(scores - reference)
        mAP = mean_average_precision(scores, targets).mAP
        row = f"{path:11} {mAP:7.4f} {diff.max():14.1e} {diff.mean():15.1e}"
        print(f"{row} {same_top1:11.1%} {same:15.1%}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--presets", nargs="*", default=list(PRESETS), help="model presets to time (none: skip)"
    )
    parser.add_argument("--runs", type=int, default=7, help="timed calls per measurement (after the first)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--paths", nargs="*", default=list(PATHS), choices=PATHS, help="forward paths to time (none: skip)"
    )
    parser.add_argument(
        "--precisions",
        nargs="*",
        default=["fp32", "auto"],
        help="the Space's --precision settings to time through HTTP (none: skip the Space)",
    )
    parser.add_argument(
        "--accuracy_model", default=None, help="a trained tagger of the embedded corpus: accuracy per path"
    )
    parser.add_argument(
        "--accuracy_seconds",
        type=float,
        default=None,
        help="clip length of the corpus it is scored on (default: the model's window; give the length it "
        "was trained on, whose corpus is already cached)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    app = _load_app()
    tmp = Path(tempfile.mkdtemp(prefix="bench_space_"))
    clip = _clip(tmp / "clip.wav", args.seconds)
    cpu = platform.processor() or platform.machine()
    print(
        f"# bench_space: {args.seconds:g}-s 44.1 kHz stereo WAV, CPU {cpu}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {args.runs} runs"
    )
    models = {}
    for preset in args.presets:
        models[preset] = (tmp / preset, _save_model(preset, tmp / preset))
    if args.paths:
        print(
            f"\n## forward on the clip's features\n{'model':16} {'path':11} {'prepare':>11} "
            f"{'median [min-max]':>28} {'max |d score|':>14}"
        )
        for preset, (model_dir, _) in models.items():
            work = tmp / f"{preset}-paths"
            work.mkdir()
            forward_paths(preset, model_dir, clip, args.paths, args.runs, work)
    if args.precisions:
        print(
            f"\n## upload -> labels\n{'model':16} {'precision':12} {'params':>8} {'first call':>12} "
            f"{'median [min-max] via HTTP':>28} {'handler only':>28}"
        )
        for preset, (model_dir, params) in models.items():
            for precision in args.precisions:
                space_latency(app, preset, params, model_dir, clip, precision, args, tmp)
    if args.accuracy_model:
        print("\n## accuracy of each path")
        work = tmp / "accuracy"
        work.mkdir()
        accuracy(Path(args.accuracy_model), args.paths or ["eager", "bf16"], work, args.accuracy_seconds)


if __name__ == "__main__":
    main()
