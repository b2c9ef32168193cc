"""The ``hf-audiorep`` command: tag audio files, inspect a saved model."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _load(model_dir: str, device: str):
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification

    import hf_audiorep  # noqa: F401  (registers the Auto classes)

    config = AutoConfig.from_pretrained(model_dir)
    if not config.id2label or config.num_labels < 1:
        raise SystemExit(f"{model_dir} has no classification labels (id2label); it cannot tag audio")
    model = AutoModelForAudioClassification.from_pretrained(model_dir).to(device).eval()
    feature_extractor = AutoFeatureExtractor.from_pretrained(model_dir)
    return model, feature_extractor


def _cmd_tag(args) -> int:
    from .data.decode import CorruptAudioError, decode_audio
    from .inference import tag_waveform

    model, fe = _load(args.model, args.device)
    status = 0
    for path in args.files:
        try:
            wave = decode_audio({"bytes": None, "path": str(path)}, fe.sampling_rate)
        except (CorruptAudioError, FileNotFoundError, OSError) as err:
            print(f"{path}: cannot read audio: {err}", file=sys.stderr)
            status = 1
            continue
        result = tag_waveform(model, fe, wave, fe.sampling_rate, hop_seconds=args.hop_seconds)
        top = result.top(args.top_k)
        if args.json:
            print(json.dumps({"file": str(path), "labels": [{"label": lb, "score": s} for lb, s in top]}))
        else:
            seconds = len(wave) / fe.sampling_rate
            print(f"{path}  ({seconds:.1f} s, {len(result.window_starts)} window(s))")
            for label, score in top:
                print(f"  {score:6.3f}  {label}")
    return status


def _cmd_info(args) -> int:
    from transformers import AutoConfig

    import hf_audiorep  # noqa: F401

    root = Path(args.model)
    config = AutoConfig.from_pretrained(root)
    info = {
        "model_type": config.model_type,
        "architectures": config.architectures,
        "num_labels": config.num_labels if config.id2label else 0,
        "problem_type": config.problem_type,
    }
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "max_length"):
        if hasattr(config, name):
            info[name] = getattr(config, name)
    weights = root / "model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            info["parameters"] = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    pre = root / "preprocessor_config.json"
    if pre.is_file():
        fe = json.loads(pre.read_text())
        info["feature_extractor"] = {
            k: fe.get(k) for k in ("feature_extractor_type", "sampling_rate", "num_mel_bins", "target_length")
        }
    for results in ("train_results.json", "eval_results.json"):
        if (root / results).is_file():
            info[results.removesuffix(".json")] = json.loads((root / results).read_text())
    print(json.dumps(info, indent=2, default=str))
    return 0


def _cmd_push(args) -> int:
    from .hub import prepare_repo, push_model

    if args.dry_run is not None:
        out = prepare_repo(args.model, args.dry_run, repo_id=args.repo_id)
        for path in sorted(out.rglob("*")):
            if path.is_file():
                print(f"{path.relative_to(out)}  ({path.stat().st_size} bytes)")
        return 0
    commit = push_model(args.model, args.repo_id, private=args.private)
    print(getattr(commit, "commit_url", commit))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-audiorep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tag = sub.add_parser("tag", help="print the top labels of audio files with sigmoid scores")
    tag.add_argument("files", nargs="+", type=Path)
    tag.add_argument("--model", required=True, help="a saved model directory (or a Hub id when online)")
    tag.add_argument("--top_k", type=int, default=5)
    tag.add_argument("--hop_seconds", type=float, default=None, help="window hop for long files")
    tag.add_argument("--device", default="cpu")
    tag.add_argument("--json", action="store_true", help="one JSON object per file")
    tag.set_defaults(func=_cmd_tag)
    info = sub.add_parser("info", help="describe a saved model directory")
    info.add_argument("model")
    info.set_defaults(func=_cmd_info)
    push = sub.add_parser("push", help="publish a saved model directory to the Hub (with remote code)")
    push.add_argument("model", help="a saved model directory")
    push.add_argument("repo_id", help="the Hub repository, e.g. user/audiomae-as20k")
    push.add_argument("--private", action="store_true")
    push.add_argument(
        "--dry_run", metavar="OUT_DIR", default=None, help="only build the upload folder in OUT_DIR"
    )
    push.set_defaults(func=_cmd_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
