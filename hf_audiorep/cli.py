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

    from .hub_errors import translate_hub_errors
    from .inference import label_names

    # "org/name" may be a Hub id; an absolute, relative or deeper path can only be a directory.
    if not Path(model_dir).exists() and (model_dir.startswith((".", "/", "~")) or model_dir.count("/") > 1):
        raise SystemExit(f"hf-audiorep: error: no such model directory: {model_dir}")
    try:
        # A Hub id that cannot be fetched becomes one line naming the model and what to check.
        with translate_hub_errors(model_dir, repo_type="model", hint="or pass a local model directory"):
            config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as err:  # a directory without a (valid) config.json
        raise SystemExit(f"hf-audiorep: error: cannot load a model from {model_dir}: {err}") from None
    if label_names(config) is None:
        raise SystemExit(
            f"{model_dir} has no classification labels (id2label): it is an encoder, not a tagger; "
            "fine-tune it first (recipes/finetune.py --model_name_or_path ...)"
        )
    model = AutoModelForAudioClassification.from_pretrained(model_dir).to(device).eval()
    feature_extractor = AutoFeatureExtractor.from_pretrained(model_dir)
    return model, feature_extractor


def _report(path, result, duration, args) -> None:
    """Print one file's result: its labels, how it was scored, and notices (cut, silent)."""
    notices = []
    if args.max_seconds is not None and duration is not None and duration > args.max_seconds:
        notices.append(
            f"only the first {args.max_seconds:g} s of {duration:.1f} s were tagged (--max_seconds)"
        )
    silent = result.silence_notice()
    if silent:
        notices.append(silent)
    top = result.top(args.top_k)
    if args.json:
        record = {
            "file": str(path),
            "seconds": round(result.seconds, 3),
            "windows": len(result.window_starts),
            "scores": result.activation,
            "labels": [{"label": lb, "score": s} for lb, s in top],
            "notices": notices,
        }
        print(json.dumps(record), flush=True)
        return
    print(
        f"{path}  ({result.seconds:.1f} s, {len(result.window_starts)} window(s), {result.activation} scores)"
    )
    for label, score in top:
        print(f"  {score:6.3f}  {label}")
    for notice in notices:
        print(f"  note: {notice}")
    sys.stdout.flush()


def _cmd_tag(args) -> int:
    from .inference import tag_file

    model, fe = _load(args.model, args.device)
    failed = 0
    for path in args.files:
        # One bad file never sinks the batch: it gets a one-line error and the next file is read.
        try:
            result, duration = tag_file(
                model, fe, path, max_seconds=args.max_seconds, hop_seconds=args.hop_seconds, progress=True
            )
        except (OSError, ValueError) as err:  # missing, not audio, damaged, too short
            # stderr only: --json output stays one result object per tagged file.
            message = str(err) if str(path) in str(err) else f"{path}: {err}"
            print(f"error: {message}", file=sys.stderr, flush=True)
            failed += 1
            continue
        _report(path, result, duration, args)
    if failed:
        print(f"{failed} of {len(args.files)} file(s) could not be tagged", file=sys.stderr)
    return 1 if failed else 0


def _cmd_info(args) -> int:
    from transformers import AutoConfig

    import hf_audiorep  # noqa: F401

    from .inference import label_names

    root = Path(args.model)
    config = AutoConfig.from_pretrained(root)
    names = label_names(config)
    info = {
        "model_type": config.model_type,
        "architectures": config.architectures,
        "num_labels": len(names) if names else 0,  # an encoder's placeholder LABEL_0/LABEL_1 are not classes
        "problem_type": config.problem_type if names else None,
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
    from .hub_errors import HubUnreachableError

    if args.dry_run is not None:
        out = prepare_repo(args.model, args.dry_run, repo_id=args.repo_id)
        for path in sorted(out.rglob("*")):
            if path.is_file():
                print(f"{path.relative_to(out)}  ({path.stat().st_size} bytes)")
        print(f"dry run: nothing was uploaded; the folder that would be uploaded is {out}")
        return 0
    try:
        commit = push_model(args.model, args.repo_id, private=args.private)
    except HubUnreachableError as err:
        # The message already names the repo and what to check; a traceback would only bury it.
        print(
            f"hf-audiorep push: error: {err}; --dry_run OUT_DIR builds the folder without uploading",
            file=sys.stderr,
        )
        return 1
    print(getattr(commit, "commit_url", commit))
    return 0


def _positive(kind):
    """An argparse type: ``kind`` (int or float) and > 0, so a bad option is refused once, up front."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-audiorep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tag = sub.add_parser(
        "tag",
        help="print the top labels of audio files, scored as the model was trained",
        description="Tag audio files of any length and format: long files are scored window by window as "
        "they are decoded (bounded memory). Multi-label models give sigmoid scores (a label's highest "
        "window), single-label models softmax probabilities (averaged over windows). A file that cannot be "
        "read gets a one-line error and the others are still tagged; the exit status is 1 if any failed.",
    )
    tag.add_argument("files", nargs="+", type=Path, help="audio files (WAV, FLAC, OGG, MP3, M4A, ...)")
    tag.add_argument("--model", required=True, help="a saved model directory (or a Hub id when online)")
    tag.add_argument("--top_k", type=_positive(int), default=5, help="how many labels to print per file")
    tag.add_argument(
        "--hop_seconds",
        type=_positive(float),
        default=None,
        help="window hop for long files (default: half a window)",
    )
    tag.add_argument(
        "--max_seconds",
        type=_positive(float),
        default=None,
        help="tag only the first N seconds of each file (default: all)",
    )
    tag.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    tag.add_argument(
        "--json", action="store_true", help="one JSON object per tagged file (errors go to stderr)"
    )
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
    from .hub_errors import HubUnreachableError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HubUnreachableError as err:
        print(f"hf-audiorep {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
