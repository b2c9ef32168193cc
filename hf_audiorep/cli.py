"""The ``hf-audiorep`` command: tag or caption audio files, inspect a saved model, build a tag vocabulary,
evaluate an encoder few-shot, export a classifier to ONNX (and int8) for devices."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

from .precision import PRECISIONS


class CommandError(Exception):
    """A failure the user can fix: :func:`main` prints it as one line, ``hf-audiorep <command>: error: ...``.

    ``status`` is the exit status: 2 for a bad argument (as argparse's own errors), 1 for anything else.
    Only known failure types become a ``CommandError``; anything else keeps its traceback, since it is a bug.
    """

    def __init__(self, message: str, status: int = 1):
        # A multi-line message (transformers writes some) would no longer read as one error line.
        super().__init__(" ".join(line.strip() for line in str(message).splitlines() if line.strip()))
        self.status = status


def no_such_model_directory(model_dir: str) -> str | None:
    """``"no such model directory: ..."`` when ``model_dir`` can only be a folder and is missing, else None.

    "org/name" may be a Hub id; an absolute, relative or deeper path can only be a directory. The Space
    (spaces/audio-tagger/app.py) says the same for its configured models."""
    if not Path(model_dir).exists() and (model_dir.startswith((".", "/", "~")) or model_dir.count("/") > 1):
        return f"no such model directory: {model_dir}"
    return None


@contextmanager
def _model_errors(model_dir: str, what: str = "a model"):
    """Loading ``model_dir``: what is known to go wrong becomes a :class:`CommandError` naming the model.

    That is a missing folder, a Hub id that cannot be fetched (a ``HubUnreachableError``, which
    :func:`main` prints), and a folder without a loadable model: no or a bad ``config.json``, missing
    weights or front end (transformers raises ``OSError`` or ``ValueError`` for those)."""
    from .hub_errors import translate_hub_errors

    missing = no_such_model_directory(model_dir)
    if missing:
        raise CommandError(missing)
    if Path(model_dir).is_file():
        raise CommandError(f"{model_dir} is a file; pass the model directory (the folder with config.json)")
    if Path(model_dir).is_dir() and not (Path(model_dir) / "config.json").is_file():
        raise CommandError(f"cannot load {what} from {model_dir}: it has no config.json (not a saved model)")
    try:
        with translate_hub_errors(model_dir, repo_type="model", hint="or pass a local model directory"):
            yield
    except (OSError, ValueError) as err:
        raise CommandError(f"cannot load {what} from {model_dir}: {err}") from None


def _load_config(model_dir: str):
    """The saved config of ``model_dir`` (a folder or a Hub id), or one line naming what is wrong."""
    from transformers import AutoConfig

    import hf_audiorep  # noqa: F401  (registers the Auto classes)

    with _model_errors(model_dir):
        return AutoConfig.from_pretrained(model_dir)


def _check_front_end(model_dir: str) -> None:
    # model.save_pretrained alone writes no feature extractor, a common mistake; transformers' own message
    # for it talks about the Hub and a local directory of the same name.
    root = Path(model_dir)
    if root.is_dir() and not any((root / name).is_file() for name in _FRONT_END_FILES):
        raise CommandError(
            f"{model_dir} has no preprocessor_config.json: save the feature extractor next to the model "
            f"(feature_extractor.save_pretrained({model_dir!r}))"
        )


#: where a saved model keeps its front end: a feature extractor alone, or inside a processor
_FRONT_END_FILES = ("preprocessor_config.json", "processor_config.json")


#: the file argument that reads standard input (``ffmpeg ... -f wav - | hf-audiorep tag -``)
STDIN = "-"
#: how standard input is named in the output
STDIN_NAME = "<stdin>"


def _check_max_seconds(max_seconds: float | None) -> None:
    """``--max_seconds`` shorter than any clip a model takes would fail every file alike, each blamed."""
    from .inference import MIN_SECONDS

    if max_seconds is not None and max_seconds < MIN_SECONDS:
        raise CommandError(
            f"argument --max_seconds: must be at least {MIN_SECONDS:g} (the shortest clip a model takes), "
            f"got {max_seconds:g}",
            status=2,
        )


def _check_stdin_argument(files: list[Path], command: str) -> bool:
    """Whether ``files`` reads standard input; refuses ``-`` given twice or from a terminal. A command calls
    it before loading its model, so that a mistyped command line fails at once."""
    stdin_count = sum(str(f) == STDIN for f in files)
    if stdin_count > 1:
        raise CommandError(f"standard input ({STDIN}) can be read once, it was given {stdin_count} times", 2)
    if stdin_count and (sys.stdin is None or sys.stdin.isatty()):
        raise CommandError(
            f"{STDIN} reads audio from standard input, which is a terminal here: pipe a file in "
            f"(cat clip.wav | hf-audiorep {command} {STDIN})",
            status=2,
        )
    return bool(stdin_count)


@contextmanager
def _readable_files(files: list[Path], command: str):
    """``(name shown, path read)`` per file argument. ``-`` is standard input, copied to a temporary file
    first so it is decoded as any file is (its format sniffed, long input in windows and bounded memory)."""
    if not _check_stdin_argument(files, command):
        yield [(f, f) for f in files]
        return
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hf-audiorep-") as folder:
        spooled = Path(folder) / "stdin"
        with open(spooled, "wb") as copy:
            shutil.copyfileobj(sys.stdin.buffer, copy, 1 << 20)
        yield [(Path(STDIN_NAME), spooled) if str(f) == STDIN else (f, f) for f in files]


def _report_unreadable(shown: Path, read: Path, err: Exception) -> None:
    """One line on stderr for a file that could not be used (stdout stays one result per file)."""
    message = str(err).replace(str(read), str(shown))
    if str(shown) not in message:
        message = f"{shown}: {message}"
    print(f"error: {message}", file=sys.stderr, flush=True)


_FILES_HELP = f"audio files (WAV, FLAC, OGG, MP3, M4A, ...); {STDIN} reads one from standard input"


def _load(model_dir: str, device: str, precision: str = "fp32"):
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from .inference import label_names
    from .precision import for_inference

    config = _load_config(model_dir)
    if label_names(config) is None:
        raise CommandError(
            f"{model_dir} has no classification labels (id2label): it is an encoder, not a tagger; "
            "fine-tune it first (recipes/finetune.py --model_name_or_path ...)"
        )
    _check_front_end(model_dir)
    with _model_errors(model_dir):
        model = AutoModelForAudioClassification.from_pretrained(model_dir)
        feature_extractor = AutoFeatureExtractor.from_pretrained(model_dir)
    return for_inference(model.to(device), precision), feature_extractor


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
            "precision": result.precision,
            "labels": [{"label": lb, "score": s} for lb, s in top],
            "notices": notices,
        }
        print(json.dumps(record, ensure_ascii=False), flush=True)
        return
    print(
        f"{path}  ({result.seconds:.1f} s, {len(result.window_starts)} window(s), "
        f"{result.activation} scores, {result.precision})"
    )
    for label, score in top:
        print(f"  {score:6.3f}  {label}")
    for notice in notices:
        print(f"  note: {notice}")
    sys.stdout.flush()


def _cmd_tag(args) -> int:
    from .inference import model_window_seconds, tag_file

    _check_stdin_argument(args.files, "tag")
    _check_max_seconds(args.max_seconds)
    model, fe = _load(args.model, args.device, args.precision)
    # The window is known once the model is loaded: a hop longer than it would fail every file alike.
    window = model_window_seconds(fe, model.config)
    if args.hop_seconds is not None and args.hop_seconds > window:
        raise CommandError(
            f"argument --hop_seconds: must be at most the model's window, {window:g} s, "
            f"got {args.hop_seconds:g}",
            status=2,
        )
    failed = 0
    with _readable_files(args.files, "tag") as files:
        for shown, path in files:
            # One bad file never sinks the batch: it gets a one-line error and the next file is read.
            try:
                result, duration = tag_file(
                    model, fe, path, max_seconds=args.max_seconds, hop_seconds=args.hop_seconds, progress=True
                )
            except (OSError, ValueError) as err:  # missing, not audio, damaged, too short
                _report_unreadable(shown, path, err)
                failed += 1
                continue
            _report(shown, result, duration, args)
    if failed:
        print(f"{failed} of {len(args.files)} file(s) could not be tagged", file=sys.stderr)
    return 1 if failed else 0


def _is_captioner(config) -> bool:
    # The saved architecture says what the weights are; a config without one (written by hand) is a
    # captioner when it describes a decoder.
    if config.architectures:
        return any(
            name.endswith(("ForConditionalGeneration", "ForSpeechSeq2Seq")) for name in config.architectures
        )
    return getattr(config, "decoder_config", None) is not None


def _load_captioner(model_dir: str, device: str):
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    config = _load_config(model_dir)
    if not _is_captioner(config):
        kind = ", ".join(config.architectures or [config.model_type])
        # Loading it anyway would give a decoder of random weights: refuse, naming what the model is.
        raise CommandError(
            f"{model_dir} ({kind}) has no caption decoder: it is not a captioner "
            "(an audio-to-text model such as ZipformerForConditionalGeneration); tag with hf-audiorep tag"
        )
    with _model_errors(model_dir, "the captioner"):  # missing weights or processor files
        processor = AutoProcessor.from_pretrained(model_dir)
        model = AutoModelForSpeechSeq2Seq.from_pretrained(model_dir)
    if not callable(getattr(processor, "batch_decode", None)):
        raise CommandError(
            f"{model_dir} has no tokenizer to turn tokens into text: save the "
            "captioner's processor (feature extractor and tokenizer) with it"
        )
    return model.to(device).eval(), processor


def _read_for_caption(path, sampling_rate: int, max_seconds: float | None):
    """A file's waveform (its first ``max_seconds`` only, when given, without decoding the rest) and its
    duration in seconds."""
    from .data.audio_file import read_head
    from .data.decode import decode_audio
    from .evaluation.captioning import check_captionable

    if max_seconds is None:
        waveform = decode_audio(path, sampling_rate)
        duration = len(waveform) / sampling_rate
    else:
        waveform, duration = read_head(path, sampling_rate, max_seconds)
    return check_captionable(waveform, sampling_rate), duration


def _cmd_caption(args) -> int:
    from .evaluation.captioning import caption_waveforms
    from .inference import describe_silence, sound_peak

    _check_stdin_argument(args.files, "caption")
    _check_max_seconds(args.max_seconds)
    model, processor = _load_captioner(args.model, args.device)
    if args.parallel and not callable(getattr(model, "parallel_generate", None)):
        raise SystemExit(
            f"hf-audiorep caption: error: {type(model).__name__} has no parallel (PAR) decoder; "
            "drop --parallel"
        )
    fe = processor.feature_extractor
    sampling_rate = fe.sampling_rate
    # The encoder takes at most config.max_length frames: a longer file is captioned from its start, and only
    # that much of it is decoded, so an hour-long file costs what the encoder reads.
    longest = model.config.max_length * getattr(fe, "frame_shift_ms", 10.0) / 1000
    max_seconds = longest if args.max_seconds is None else min(args.max_seconds, longest)
    failed = 0
    with _readable_files(args.files, "caption") as files:
        for start in range(0, len(files), args.batch_size):
            batch = []
            for shown, path in files[start : start + args.batch_size]:
                # One bad file never sinks the batch: it gets a one-line error and the next file is read.
                try:
                    batch.append((shown, *_read_for_caption(path, sampling_rate, max_seconds)))
                except (OSError, ValueError) as err:  # missing, not audio, damaged, too short
                    _report_unreadable(shown, path, err)
                    failed += 1
            captions = caption_waveforms(
                model,
                processor,
                [waveform for _, waveform, _ in batch],
                parallel=args.parallel,
                max_new_tokens=args.max_new_tokens,
            )
            for (path, waveform, duration), caption in zip(batch, captions, strict=True):
                notices = []
                if duration > max_seconds:
                    why = "--max_seconds" if max_seconds == args.max_seconds else "the encoder's limit"
                    notices.append(
                        f"only the first {max_seconds:g} s of {duration:.1f} s were captioned ({why})"
                    )
                if silent := describe_silence(sound_peak(waveform), "the caption describes silence"):
                    notices.append(silent)
                if args.json:
                    record = {
                        "file": str(path),
                        "seconds": round(duration, 3),
                        "caption": caption,
                        "notices": notices,
                    }
                    print(json.dumps(record, ensure_ascii=False), flush=True)
                    continue
                print(f"{path}: {caption}")
                for notice in notices:
                    print(f"  note: {notice}")
                sys.stdout.flush()
    if failed:
        print(f"{failed} of {len(args.files)} file(s) could not be captioned", file=sys.stderr)
    return 1 if failed else 0


def _parameter_count(config) -> int | None:
    """What ``sum(p.numel() for p in model.parameters())`` gives for the saved architecture.

    The weights file cannot say it: it also holds buffers (BatchNorm running statistics), and a sharded
    checkpoint is several files. So the model is built from its config on the meta device (no memory, no
    initialisation; tied weights stay tied, counted once, unlike accelerate's ``init_empty_weights``).
    None for an architecture neither this library nor transformers defines (remote code)."""
    import torch
    import transformers

    from .registry import architecture_for

    name = (config.architectures or [None])[0]
    try:
        candidates = architecture_for(config.model_type).classes
    except ValueError:  # a transformers model
        candidates = ()
    model_class = next((c for c in candidates if c.__name__ == name), None)
    if model_class is None and name is not None:
        model_class = getattr(transformers, name, None)
    with torch.device("meta"):
        if model_class is not None:
            model = model_class(config)
        elif name is None:  # a config written by hand: its base model
            model = transformers.AutoModel.from_config(config)
        else:
            return None
    return sum(p.numel() for p in model.parameters())


def _cmd_info(args) -> int:
    from .inference import label_names

    root = Path(args.model)
    config = _load_config(args.model)
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
    parameters = _parameter_count(config)
    if parameters is not None:
        info["parameters"] = parameters
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
        try:
            out = prepare_repo(args.model, args.dry_run, repo_id=args.repo_id)
        except ValueError as err:  # not a saved model directory, or OUT_DIR is taken
            raise CommandError(str(err)) from None
        for path in sorted(out.rglob("*")):
            if path.is_file():
                print(f"{path.relative_to(out)}  ({path.stat().st_size} bytes)")
        print(f"dry run: nothing was uploaded; the folder that would be uploaded is {out}")
        return 0
    try:
        commit = push_model(args.model, args.repo_id, private=args.private)
    except ValueError as err:  # checked before any upload: not a saved model directory
        raise CommandError(str(err)) from None
    except HubUnreachableError as err:
        # The message already names the repo and what to check; a traceback would only bury it.
        print(
            f"hf-audiorep push: error: {err}; --dry_run OUT_DIR builds the folder without uploading",
            file=sys.stderr,
        )
        return 1
    print(getattr(commit, "commit_url", commit))
    return 0


def _load_tag_input(args):
    """The clips ``build-tags`` reads: the embedded corpus, a JSON-lines manifest, a saved dataset, an audio
    folder (or Parquet/WebDataset folder), or a Hub dataset."""
    name = args.dataset
    if name == "embedded":
        from .data.embedded import load_embedded_corpus

        if args.num_clips is None:
            corpus = load_embedded_corpus(seed=args.seed)
        else:
            # Only the asked split is generated; the others are left empty.
            counts = {f"num_{s}": 0 for s in ("train", "validation", "test", "heldout")}
            if f"num_{args.split}" not in counts:
                raise ValueError(
                    f"the embedded corpus has the splits train, validation, test, heldout, not {args.split!r}"
                )
            counts[f"num_{args.split}"] = args.num_clips
            corpus = load_embedded_corpus(seed=args.seed, **counts)
        if args.split not in corpus:
            raise ValueError(f"the embedded corpus has no split {args.split!r}; it has {sorted(corpus)}")
        return corpus[args.split]
    data = _load_local_or_hub(
        name,
        args.split,
        audio_column=args.audio_column if args.captioner else None,
        audio_root=args.audio_root,
    )
    if args.num_clips is not None and args.num_clips < len(data):
        data = data.select(range(args.num_clips))
    return data


def _load_local_or_hub(name: str, split: str, audio_column: str | None = None, audio_root: str | None = None):
    """A split of a Lhotse cut manifest, a JSON-lines or CSV manifest, a saved dataset, an audio (or
    Parquet/WebDataset) folder, or a Hub dataset.

    Cut manifests are read with their audio (found under ``audio_root``) only when ``audio_column`` is
    asked for (a captioner listens to it); otherwise their text alone, keeping every cut."""
    import datasets

    from .data.lhotse_cuts import load_lhotse_cuts
    from .data.sources import cut_manifests_for_split

    cut_manifests = cut_manifests_for_split(name, split)
    if cut_manifests is not None:
        return load_lhotse_cuts(cut_manifests, audio_root, require_audio=audio_column is not None)
    if audio_root is not None:
        raise ValueError(f"--audio_root is read for Lhotse cut manifests only, and {name} is not one")
    path = Path(name)
    manifest_suffixes = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")
    if path.is_file() and path.name.endswith(manifest_suffixes):
        if not path.name.endswith(".gz") and not path.read_text(encoding="utf-8").strip():
            raise ValueError(f"{path} is empty: the input has no clips")
        data = datasets.load_dataset("json", data_files=str(path), split="train")
    elif path.is_file() and path.suffix in (".csv", ".tsv"):
        data = datasets.load_dataset(
            "csv", data_files=str(path), split="train", delimiter="\t" if path.suffix == ".tsv" else ","
        )
    elif path.is_dir() and any(
        (path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")
    ):
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"{path} has no split {split!r}; it has {sorted(data)}")
            data = data[split]
    elif path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        if not path.exists():
            raise ValueError(f"no such file or folder: {name}")
        from .data.sources import load_audio_source

        data = load_audio_source(name, split, audio_column=audio_column).dataset
    else:  # a Hub dataset
        from .data.sources import load_audio_source

        data = load_audio_source(name, split).dataset
    return data


def _read_prompt(value: str | None):
    if value is None:
        return None
    return Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value


def _cmd_build_tags(args) -> int:
    from .data.tags import AudioCaptioner, KeywordTagExtractor, LLMTagExtractor, TagSystemBuilder

    try:
        if args.extractor == "default":
            extractor = KeywordTagExtractor(min_term_df=args.min_term_df, min_term_npmi=args.min_term_npmi)
        else:
            kwargs = {
                "batch_size": args.batch_size,
                "max_new_tokens": args.max_new_tokens,
                "device": args.device,
            }
            if args.prompt is not None:
                kwargs["prompt"] = _read_prompt(args.prompt)
            extractor = LLMTagExtractor(args.extractor, progress=True, **kwargs)
        captioner = None
        if args.captioner is not None:
            captioner = AudioCaptioner(
                args.captioner, task=args.captioner_task, batch_size=args.batch_size, device=args.device
            )
        builder = TagSystemBuilder(
            extractor,
            captioner=captioner,
            caption_column=args.caption_column,
            tags_column=args.tags_column,
            audio_column=args.audio_column,
            batch_size=max(args.batch_size, 64),
        )
        data = _load_tag_input(args)
        if _length_or_none(data) == 0:
            raise ValueError(f"{args.dataset}: the input has no clips")
        results = builder.sweep(data, args.k)
    except (ValueError, OSError) as err:  # bad input, a missing file or model
        raise SystemExit(f"hf-audiorep build-tags: error: {err}") from None
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"dataset": args.dataset, "split": args.split, "k": list(results), "results": {}}
    for k, result in results.items():
        path = result.tag_system.save(out / f"label_{k}.json")
        summary["results"][str(k)] = {"label_file": path.name, **result.summary}
        s = result.summary
        print(
            f"K={k}: {s['vocabulary_size']} tags (of {s['num_candidate_tags']} candidates), "
            f"{s['num_kept']} clips kept, {s['num_dropped']} dropped "
            f"({s['num_clips_without_tags']} without any tag) -> {path}"
        )
        print("  top: " + ", ".join(result.tag_system.names[:15]))
    (out / "summary.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(f"summary: {out / 'summary.json'}")
    if args.push_to_hub:
        for k, result in results.items():
            result.tag_system.push_to_hub(args.push_to_hub, f"label_{k}.json", private=args.private or None)
        print(f"pushed {len(results)} label file(s) to {args.push_to_hub}")
    return 0


def _load_few_shot_input(args):
    """The clips of ``few-shot``: a split of the embedded corpus (only that split is generated) or of any
    input ``build-tags`` reads."""
    import inspect

    from .data.arguments import EMBEDDED, EMBEDDED_SCENES
    from .data.embedded import load_embedded_corpus, load_embedded_scenes

    load = {EMBEDDED: load_embedded_corpus, EMBEDDED_SCENES: load_embedded_scenes}.get(args.dataset)
    if load is None:
        data = _load_local_or_hub(args.dataset, args.split)
        if args.num_clips is not None and args.num_clips < len(data):
            data = data.select(range(args.num_clips))
        return data
    defaults = inspect.signature(load).parameters
    counts = {name: 0 for name in defaults if name.startswith("num_") and name != "num_proc"}
    asked = f"num_{args.split}"
    if asked not in counts:
        splits = ", ".join(name.removeprefix("num_") for name in counts)
        raise ValueError(f"the {args.dataset} corpus has the splits {splits}, not {args.split!r}")
    # A clip depends on (seed, split, index) only, so this split alone holds the same clips as in the full
    # corpus, without rendering the others.
    counts[asked] = args.num_clips if args.num_clips is not None else defaults[asked].default
    return load(seed=args.corpus_seed, **counts)[args.split]


def _load_encoder(model: str, device: str):
    """The frozen encoder of a saved model directory or Hub id, of any kind (this library, transformers,
    CLAP); an error is one line naming the model."""
    from .objectives.teachers import FrozenTeacher

    _check_front_end(model)  # every kind of encoder needs its front end
    try:
        with _model_errors(model, "an encoder"):  # no config.json, no feature extractor
            return FrozenTeacher.from_pretrained(model, device=device)
    except TypeError as err:  # not an audio model
        raise CommandError(f"cannot load an encoder from {model}: {err}") from None


def _undecodable_clips(data, sampling_rate: int) -> list[str]:
    """The clips of ``data`` that cannot be decoded, each named by its file (or row) and why."""
    from datasets import Audio

    from .data.decode import CorruptAudioError, decode_audio
    from .data.sources import find_audio_column

    column = find_audio_column(data, None)
    if isinstance(data.features[column], Audio):
        data = data.cast_column(column, Audio(decode=False))  # the path, not the decoded samples
    failed = []
    for row, value in enumerate(data[column]):
        try:
            decode_audio(value, sampling_rate)
        except CorruptAudioError as err:  # what the embedding pass leaves out
            name = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
            name = name or f"row {row}"
            failed.append(str(err) if name in str(err) else f"{name}: {err}")
    return failed


def _cmd_few_shot(args) -> int:
    from .data.arguments import EMBEDDED_SCENES
    from .evaluation.few_shot import few_shot_encoder

    if args.label_column is None:
        args.label_column = "scene" if args.dataset == EMBEDDED_SCENES else "labels"
    try:
        data = _load_few_shot_input(args)
        encoder = _load_encoder(args.model, args.device)
        result = few_shot_encoder(
            encoder,
            None,
            data,
            label_column=args.label_column,
            n_way=args.n_way,
            k_shot=args.k_shot,
            n_query=args.n_query,
            num_episodes=args.episodes,
            seed=args.seed,
            methods=args.methods,
            batch_size=args.batch_size,
        )
    except (ValueError, OSError) as err:  # a bad label column, too few classes, a missing input
        raise SystemExit(f"hf-audiorep few-shot: error: {err}") from None
    if result.num_clips < len(data):
        # The embedding pass only counts the clips it leaves out; reading them again, only when some were
        # left out, names them so they can be fixed.
        for message in _undecodable_clips(data, encoder.sampling_rate):
            print(f"few-shot: left out a clip: {message}", file=sys.stderr)
    print(f"{args.model} on {args.dataset} [{args.split}], classes from {args.label_column!r}")
    print(result.format_table())
    if args.output is not None:
        record = {
            "model": args.model,
            "dataset": args.dataset,
            "split": args.split,
            "label_column": args.label_column,
            **result.to_dict(),
        }
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"results: {output}")
    return 0


def _export_clips(args, feature_extractor):
    """Features of 2 x --calibration-clips clips: the first half calibrates int8, the second checks it."""
    from .export import calibration_features, embedded_scene_features

    count = 2 * args.calibration_clips
    if args.calibration_data == "noise":
        return calibration_features(feature_extractor, num_clips=count, seconds=args.seconds)
    return embedded_scene_features(feature_extractor, count, seconds=args.seconds)


def _print_latency(name: str, path: Path, features, repeats: int) -> None:
    from .export import onnx_latency

    print(f"  {name} latency: {onnx_latency(path, features[:1], repeats):.3f} ms per clip (CPU, 1 thread)")


def _cmd_export(args) -> int:
    import importlib.util

    needed = ("onnx", "onnxruntime", "onnxscript") if args.format == "onnx" else ()
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"hf-audiorep export: error: needs {', '.join(missing)}: pip install 'hf_audiorep[export]'"
        )
    if args.int8 and args.format != "onnx":
        raise SystemExit("hf-audiorep export: error: --int8 quantises the ONNX graph, not --format pt2")
    if args.accuracy_split and args.format != "onnx":
        raise SystemExit(
            "hf-audiorep export: error: --accuracy-split measures the ONNX graphs, not --format pt2"
        )
    if args.format == "pt2":
        return _export_pt2(args)
    from .export import check_onnx_parity, export_onnx, quantize_int8, top1_agreement

    model, feature_extractor = _load(args.model, "cpu")
    out = Path(args.output_dir)
    try:
        fp32 = export_onnx(
            model,
            feature_extractor,
            out / "model.onnx",
            seconds=args.seconds,
            opset=args.opset,
            dynamic_length=args.dynamic_length,
        )
        features = _export_clips(args, feature_extractor)
    except (ValueError, OSError) as err:  # an unwritable folder, an unsupported opset, too many clips
        raise SystemExit(f"hf-audiorep export: error: {err}") from None
    calibration, check = features[: args.calibration_clips], features[args.calibration_clips :]
    print(f"{fp32}  ({fp32.stat().st_size:,} bytes)")
    clip = _export_clip_text(args, model, feature_extractor)
    print(
        f"  input_values {_frames_text(check, args)} per clip of {clip}; "
        f"front end: {out / 'preprocessor_config.json'}"
    )
    print(f"  fp32 vs torch: max abs diff of the logits {check_onnx_parity(model, fp32, check):.3g}")
    _print_latency("fp32", fp32, check, args.repeats)
    if args.int8:
        int8 = quantize_int8(fp32, out / "model.int8.onnx", calibration)
        print(f"{int8}  ({int8.stat().st_size:,} bytes)")
        agreement = top1_agreement(model, int8, check)
        print(
            f"  int8 vs torch: top-1 agreement {agreement:.1%} on {len(check)} {args.calibration_data} clips "
            f"(calibrated on {len(calibration)} others)"
        )
        _print_latency("int8", int8, check, args.repeats)
    if args.accuracy_split:
        graphs = {"fp32": fp32, **({"int8": out / "model.int8.onnx"} if args.int8 else {})}
        _print_scene_accuracy(args, model, feature_extractor, graphs)
    return 0


def _print_scene_accuracy(args, model, feature_extractor, graphs: dict) -> None:
    from .export import embedded_scene_split, scene_accuracy

    features, scenes = embedded_scene_split(feature_extractor, args.accuracy_split, seconds=args.seconds)
    try:
        accuracy = scene_accuracy(model, features, scenes, graphs)
    except ValueError as err:  # not a classifier of the corpus's scenes
        raise SystemExit(f"hf-audiorep export: error: --accuracy-split: {err}") from None
    values = ", ".join(f"{name} {accuracy[name]:.1%}" for name in ("torch", *graphs))
    print(
        f"  top-1 accuracy on the embedded scene corpus's {args.accuracy_split} split ({accuracy['clips']} "
        f"clips; {accuracy['left_out']} of scenes the model lacks left out): {values}"
    )


def _export_clip_text(args, model, feature_extractor) -> str:
    """The clip length the graph was traced with: ``--seconds``, unless the front end cuts every clip to its
    own ``target_length`` frames, which decide instead (saying so, rather than echoing a length not used)."""
    from .inference import model_window_seconds

    if not getattr(feature_extractor, "target_length", None):
        return f"{args.seconds:g} s"
    window = model_window_seconds(feature_extractor, model.config)
    return f"{window:g} s (the model's window, fixed by its front end's target_length; --seconds not used)"


def _frames_text(features, args, frames: tuple[int, int | None] | None = None) -> str:
    """``(frames, bins)``, or with ``--dynamic-length`` the range of frames the graph takes."""
    if not args.dynamic_length:
        return str(tuple(features.shape[1:]))
    if frames is None:
        return f"(frames, {features.shape[-1]}) (any length the model takes)"
    low, high = frames
    return f"(frames, {features.shape[-1]}) with {low} <= frames <= {'any' if high is None else high}"


def _export_pt2(args) -> int:
    """``--format pt2``: a `torch.export` program, its front end and config, and its parity with PyTorch."""
    from .export import calibration_features, check_program_parity, export_program, frame_range, save_program

    model, feature_extractor = _load(args.model, "cpu")
    out = Path(args.output_dir)
    try:
        example = calibration_features(feature_extractor, num_clips=2, seconds=args.seconds)
        program = export_program(model, example, dynamic_length=args.dynamic_length)
        path = save_program(program, out / "model.pt2")
        feature_extractor.save_pretrained(out)
        model.config.save_pretrained(out)
        check = _export_clips(args, feature_extractor)[args.calibration_clips :]
    except (ValueError, OSError) as err:  # an unwritable folder, too many clips
        raise SystemExit(f"hf-audiorep export: error: {err}") from None
    print(f"{path}  ({path.stat().st_size:,} bytes)")
    print(
        f"  input_values {_frames_text(check, args, frame_range(program))} per clip; "
        f"front end: {out / 'preprocessor_config.json'}"
    )
    print(f"  pt2 vs torch: max abs diff of the logits {check_program_parity(model, program, check):.3g}")
    return 0


def _length_or_none(data):
    try:
        return len(data)
    except TypeError:
        return None


def _positive(kind):
    """An argparse type: ``kind`` (int or float) and > 0, so a bad option is refused once, up front."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            article = "an" if kind.__name__[0] in "aeiou" else "a"
            raise argparse.ArgumentTypeError(f"expected {article} {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _at_least_two_or_all(text: str):
    """``--n-way``: an integer >= 2 (one class is no classification), or ``all``."""
    if text == "all":
        return None
    value = _positive(int)(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 or 'all', got {text}")
    return value


def _positive_or_all(text: str):
    return None if text == "all" else _positive(int)(text)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _device(text: str) -> str:
    """``--device``: a torch device this machine has, so that a typo or a missing GPU is refused up front
    instead of surfacing as a traceback once the model is loaded."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:1, mps)"
        ) from None
    if device.type == "meta":
        raise argparse.ArgumentTypeError("meta tensors hold no data: pick a device that computes, e.g. cpu")
    try:
        torch.empty(0, device=device)  # what .to(device) would meet: no driver, no such GPU, no backend
    except (RuntimeError, AssertionError, NotImplementedError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise argparse.ArgumentTypeError(f"{text} is not available here: {reason}") from None
    return text


def _repo_id(text: str) -> str:
    """A Hub repository id as the Hub itself checks it (offline), so a dry run never writes a bad one into
    the model card."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


class _EitherSpelling(argparse.ArgumentParser):
    """A command whose long options also take their other spelling, ``--top_k`` or ``--top-k``, as the
    recipes' HfArgumentParser does: users type both, and one command taking only one would be a trap."""

    def add_argument(self, *names, **kwargs):
        spelled = []
        for name in names:
            spelled.append(name)
            if name.startswith("--"):
                word = name[2:]
                spelled.append("--" + (word.replace("_", "-") if "_" in word else word.replace("-", "_")))
        return super().add_argument(*dict.fromkeys(spelled), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-audiorep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_EitherSpelling)
    tag = sub.add_parser(
        "tag",
        help="print the top labels of audio files, scored as the model was trained",
        description="Tag audio files of any length and format: long files are scored window by window as "
        "they are decoded (bounded memory). Multi-label models give sigmoid scores (a label's highest "
        "window), single-label models softmax probabilities (averaged over windows). A file that cannot be "
        "read gets a one-line error and the others are still tagged; the exit status is 1 if any failed.",
    )
    tag.add_argument("files", nargs="+", type=Path, help=_FILES_HELP)
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
    tag.add_argument("--device", type=_device, default="cpu", help="torch device, e.g. cpu or cuda")
    tag.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="number format of the forward pass: auto = bf16 for the ViTs and BEATs on a CPU with AMX "
        "(about 2x faster; scores within a few hundredths of float32, mostly thousandths), fp32 otherwise; "
        "fp32 for float32 scores everywhere",
    )
    tag.add_argument(
        "--json", action="store_true", help="one JSON object per tagged file (errors go to stderr)"
    )
    tag.set_defaults(func=_cmd_tag)
    _add_caption(sub)
    info = sub.add_parser("info", help="describe a saved model directory")
    info.add_argument("model", help="a saved model directory (or a Hub id when online)")
    info.set_defaults(func=_cmd_info)
    push = sub.add_parser("push", help="publish a saved model directory to the Hub (with remote code)")
    push.add_argument("model", help="a saved model directory")
    push.add_argument("repo_id", type=_repo_id, help="the Hub repository, e.g. user/audiomae-as20k")
    push.add_argument("--private", action="store_true")
    push.add_argument(
        "--dry_run", metavar="OUT_DIR", default=None, help="only build the upload folder in OUT_DIR"
    )
    push.set_defaults(func=_cmd_push)
    _add_build_tags(sub)
    _add_few_shot(sub)
    _add_export(sub)
    return parser


def _add_caption(sub) -> None:
    caption = sub.add_parser(
        "caption",
        help="print a caption of each audio file, written by a saved captioner",
        description="Caption audio files with a saved audio-to-text model (a "
        "ZipformerForConditionalGeneration directory with its processor): autoregressive decoding (greedy, "
        "the model's generation config) or, with --parallel, one parallel (PAR) pass. Files are decoded, "
        "mixed to mono and resampled to the model's rate, then captioned --batch_size at a time. A file that "
        "cannot be read gets a one-line error and the others are still captioned; the exit status is 1 if "
        "any failed.",
    )
    caption.add_argument("model", help="a saved captioner directory (or a Hub id when online)")
    caption.add_argument("files", nargs="+", type=Path, help=_FILES_HELP)
    caption.add_argument(
        "--parallel",
        action="store_true",
        help="parallel (PAR) decoding: every token in one pass, instead of one token at a time",
    )
    caption.add_argument(
        "--max_new_tokens",
        type=_positive(int),
        default=None,
        help="caption length limit in tokens (default: the model's; 64 for --parallel)",
    )
    caption.add_argument(
        "--batch_size", type=_positive(int), default=8, help="files captioned together (default: 8)"
    )
    caption.add_argument(
        "--max_seconds",
        type=_positive(float),
        default=None,
        help="caption only the first N seconds of each file (default and at most: what the encoder takes in "
        "one pass, config.max_length frames: 30 s for the UTS Zipformer)",
    )
    caption.add_argument(
        "--device", type=_device, default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)"
    )
    caption.add_argument(
        "--json", action="store_true", help="one JSON object per captioned file (errors go to stderr)"
    )
    caption.set_defaults(func=_cmd_caption)


def _add_build_tags(sub) -> None:
    build = sub.add_parser(
        "build-tags",
        help="mine a UTS tag vocabulary (label_<K>.json) from captions or tags",
        description="Build a Unified Tag System: captions (a column, or a captioner run on the audio) -> "
        "tags (the offline extractor or a text-generation model) -> score df*log((N+1)/(df+1)) -> the "
        "top K tags. "
        "Writes label_<K>.json (Auden's id -> tag file) with a label_<K>.meta.json sidecar per K, and "
        "summary.json (clips kept and dropped, df statistics, top tags).",
    )
    build.add_argument(
        "--dataset",
        default="embedded",
        help="'embedded' (the generated corpus), a JSON-lines manifest (.jsonl), a Lhotse cut manifest "
        "(.jsonl.gz: its columns are id, caption, tags and, with --captioner, audio), a folder saved by "
        "datasets' save_to_disk, an audio folder with a metadata file, or a Hub dataset id "
        "(default: embedded)",
    )
    build.add_argument(
        "--audio_root",
        default=None,
        help="Lhotse cut manifests with --captioner: the folder their audio is found in (see "
        "hf_audiorep/data/lhotse_cuts.py); cuts without audio are dropped. Captions or tags in the "
        "manifest need no audio",
    )
    build.add_argument("--split", default="train", help="the split to read (default: train)")
    build.add_argument(
        "--caption_column",
        default="caption",
        help="the caption column; a dotted path reads nested records, e.g. supervisions.0.caption "
        "(default: caption)",
    )
    build.add_argument(
        "--tags_column",
        default=None,
        help="use this column's tags as they are (a list or a ';'-separated string) instead of "
        "extracting them",
    )
    build.add_argument("--audio_column", default="audio", help="the audio column the captioner reads")
    build.add_argument(
        "--k",
        type=_positive(int),
        nargs="+",
        default=[800],
        help="vocabulary size(s); several give a sweep from one extraction, e.g. --k 800 1500 3000 "
        "(default: 800)",
    )
    build.add_argument(
        "--extractor",
        default="default",
        help="'default' (offline keywords and multi-word terms) or a text-generation model id or local path",
    )
    build.add_argument(
        "--prompt", default=None, help="the LLM extractor's prompt (text or a file) with {caption}"
    )
    build.add_argument(
        "--max_new_tokens", type=_positive(int), default=48, help="the LLM extractor's answer length"
    )
    build.add_argument(
        "--min_term_df",
        type=_positive(int),
        default=3,
        help="default extractor: captions a two-word term must occur in (default: 3)",
    )
    build.add_argument(
        "--min_term_npmi",
        type=float,
        default=0.5,
        help="default extractor: how exclusively its two words must co-occur, normalised PMI (default: 0.5)",
    )
    build.add_argument(
        "--captioner",
        default=None,
        help="a model id or path of an audio-to-text pipeline that writes the captions",
    )
    build.add_argument(
        "--captioner_task",
        default=None,
        help="the captioner's pipeline task, e.g. automatic-speech-recognition",
    )
    build.add_argument("--batch_size", type=_positive(int), default=8, help="clips per model call")
    build.add_argument("--device", default=None, help="torch device of the models, e.g. cpu or cuda")
    build.add_argument(
        "--num_clips",
        type=_positive(int),
        default=None,
        help="embedded: generate this many clips of the split; otherwise: read only the first N clips",
    )
    build.add_argument("--seed", type=int, default=0, help="embedded corpus seed (default: 0)")
    build.add_argument("--output_dir", required=True, help="where label_<K>.json and summary.json go")
    build.add_argument("--push_to_hub", metavar="REPO_ID", default=None, help="also upload the label files")
    build.add_argument("--private", action="store_true", help="create the Hub repository as private")
    build.set_defaults(func=_cmd_build_tags)


def _add_few_shot(sub) -> None:
    from .evaluation.few_shot import FEW_SHOT_METHODS

    few = sub.add_parser(
        "few-shot",
        help="few-shot open-set accuracy of a frozen encoder on held-out classes",
        description="Embed every clip of a split once with a frozen encoder (any model of this library, a "
        "transformers audio model or CLAP), then run N-way K-shot episodes on its classes: nearest "
        "prototype by cosine similarity and logistic regression on the L2-normalised support clips, each "
        "scored by macro accuracy on the query clips. Prints the mean over episodes with a 95% "
        "t-interval; --output also writes every episode's accuracy as JSON.",
    )
    few.add_argument("model", help="a saved model directory (or a Hub id when online)")
    few.add_argument(
        "--dataset",
        default="embedded",
        help="'embedded' (the generated event corpus), 'embedded-scenes' (the generated scene corpus), a "
        "folder saved by datasets' save_to_disk, a JSON-lines manifest, an audio folder with a metadata "
        "file, or a Hub dataset id (default: embedded)",
    )
    few.add_argument(
        "--split",
        default="heldout",
        help="the split to read; the embedded corpus's heldout split holds single-event clips of classes "
        "no training split has (default: heldout)",
    )
    few.add_argument(
        "--label-column",
        "--label_column",
        dest="label_column",
        default=None,
        help="the column with each clip's class: a class label, a string, or a list holding exactly one "
        "label (default: scene for embedded-scenes, else labels)",
    )
    few.add_argument(
        "--n-way",
        "--n_way",
        dest="n_way",
        type=_at_least_two_or_all,
        default=5,
        help="classes per episode, or 'all' for every class with enough clips (default: 5)",
    )
    few.add_argument(
        "--k-shot",
        "--k_shot",
        dest="k_shot",
        type=_positive(int),
        default=5,
        help="support clips per class (default: 5)",
    )
    few.add_argument(
        "--n-query",
        "--n_query",
        dest="n_query",
        type=_positive_or_all,
        default=15,
        help="query clips per class, or 'all' for every clip not in the support; a class with fewer than "
        "k-shot + n-query clips is left out (default: 15)",
    )
    few.add_argument(
        "--episodes", type=_positive(int), default=100, help="how many episodes to average (default: 100)"
    )
    few.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help="episode seed: the same seed draws the same episodes for every encoder (default: 0)",
    )
    few.add_argument(
        "--methods",
        nargs="+",
        choices=FEW_SHOT_METHODS,
        default=list(FEW_SHOT_METHODS),
        help="the classifiers (default: both)",
    )
    few.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=_positive(int),
        default=16,
        help="clips per forward pass (default: 16)",
    )
    few.add_argument(
        "--device", type=_device, default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)"
    )
    few.add_argument(
        "--num-clips",
        "--num_clips",
        dest="num_clips",
        type=_positive(int),
        default=None,
        help="embedded: generate this many clips of the split; otherwise: read only the first N clips",
    )
    few.add_argument(
        "--corpus-seed",
        "--corpus_seed",
        dest="corpus_seed",
        type=_non_negative_int,
        default=0,
        help="embedded corpus seed (default: 0)",
    )
    few.add_argument("--output", default=None, help="write the results as JSON to this file")
    few.set_defaults(func=_cmd_few_shot)


def _add_export(sub) -> None:
    export = sub.add_parser(
        "export",
        help="export a classifier to ONNX (and int8) for devices, with parity and latency checks",
        description="Write OUTPUT_DIR/model.onnx: the model on its features (input_values in, logits out; "
        "dynamic batch, clips of --seconds), with preprocessor_config.json and config.json beside it so a "
        "runtime computes the same log-mel/fbank features. --int8 also writes model.int8.onnx, statically "
        "quantised (int8 weights per channel, uint8 activations calibrated on --calibration-clips clips). "
        "Prints the file sizes, the fp32 graph's largest logit difference to PyTorch, int8's top-1 "
        "agreement with PyTorch on as many other clips, and CPU latency per clip on one thread.",
    )
    export.add_argument("model", help="a saved classifier directory (or a Hub id when online)")
    export.add_argument("output_dir", help="where model.onnx and its configs go (created if missing)")
    export.add_argument("--int8", action="store_true", help="also write the int8 model, model.int8.onnx")
    export.add_argument(
        "--seconds",
        type=_positive(float),
        default=1.0,
        help="clip length the graph takes, in seconds (default: 1.0, DCASE's segments)",
    )
    export.add_argument(
        "--opset", type=_positive(int), default=None, help="ONNX opset version (default: torch's exporter's)"
    )
    export.add_argument(
        "--calibration-clips",
        "--calibration_clips",
        dest="calibration_clips",
        type=_positive(int),
        default=32,
        help="clips that calibrate the int8 activation ranges; as many others check parity and agreement "
        "(default: 32)",
    )
    export.add_argument(
        "--calibration-data",
        "--calibration_data",
        dest="calibration_data",
        choices=("embedded", "noise"),
        default="embedded",
        help="'embedded': validation clips of the embedded acoustic-scene corpus (resampled to the model's "
        "rate); 'noise': seeded Gaussian noise, no corpus needed (default: embedded)",
    )
    export.add_argument(
        "--accuracy-split",
        "--accuracy_split",
        dest="accuracy_split",
        choices=("validation", "test"),
        default=None,
        help="also print the top-1 accuracy of PyTorch, the fp32 graph and (with --int8) the int8 graph on "
        "this split of the embedded acoustic-scene corpus, for a scene classifier trained on it (clips of "
        "scenes the model lacks are left out); 'test' is disjoint from the calibration clips (default: off)",
    )
    export.add_argument(
        "--repeats", type=_positive(int), default=50, help="timed runs per latency (default: 50)"
    )
    export.add_argument(
        "--format",
        choices=("onnx", "pt2"),
        default="onnx",
        help="'onnx': model.onnx through torch's ONNX exporter (default); 'pt2': model.pt2, a torch.export "
        "program (torch.export.load; no --int8, no latency)",
    )
    export.add_argument(
        "--dynamic-length",
        "--dynamic_length",
        dest="dynamic_length",
        action="store_true",
        help="a symbolic time axis: the graph takes clips of any length the model accepts (printed), not "
        "only clips of --seconds; no attention mask either way",
    )
    export.set_defaults(func=_cmd_export)


def main(argv: list[str] | None = None) -> int:
    from .hub_errors import HubUnreachableError

    args = build_parser().parse_args(argv)
    # transformers' "Loading weights" bar would sit among the command's own output for a model loaded
    # in a fraction of a second; the commands show their own bars where work is long.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return args.func(args)
    except CommandError as err:
        # The one place a known failure becomes one line; anything else keeps its traceback.
        message = f"hf-audiorep {args.command}: error: {err}"
        if err.status == 1:
            raise SystemExit(message) from None  # printed on stderr, status 1, as the commands' own exits
        print(message, file=sys.stderr)
        return err.status
    except HubUnreachableError as err:
        print(f"hf-audiorep {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
