"""Audio tagger: a Gradio Space for the classification checkpoints of hf_audiorep.

Upload or record a sound (any format FFmpeg or libsndfile reads, any rate, mono or stereo); the app
resamples it to the model's rate, scores it with sliding windows (:func:`hf_audiorep.inference.tag_waveform`)
and shows the top labels with their sigmoid scores, the spectrogram, and each top label's score over time
when the clip is longer than the model's window.

Which checkpoints it serves (Hub ids or local directories) comes from ``--model`` arguments, else from
``HF_AUDIOREP_MODELS`` (comma-separated) or ``HF_AUDIOREP_MODEL``. With none, the page says what to set:
the Space never trains a model. ``HF_AUDIOREP_MAX_SECONDS`` and ``HF_AUDIOREP_MAX_MEGABYTES`` bound uploads;
``HF_AUDIOREP_PRECISION`` (default ``auto``: bfloat16 for the ViTs and BEATs on a CPU with AMX, else
float32; see :mod:`hf_audiorep.precision`) sets the number format the models run in.

Importing this module has no side effects; ``python app.py`` builds the demo and launches it.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import torch

# The Space runs `python app.py` from its own folder; tests import this file by path. Either way its
# sibling modules must be importable.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from figures import render_figure  # noqa: E402

from hf_audiorep.cli import no_such_model_directory  # noqa: E402
from hf_audiorep.data.audio_file import read_head  # noqa: E402
from hf_audiorep.data.decode import CorruptAudioError  # noqa: E402
from hf_audiorep.inference import (  # noqa: E402
    MIN_SECONDS,
    TaggingResult,
    describe_duration,
    label_names,
    log_mel_spectrogram,
    model_window_seconds,
    tag_waveform,
)
from hf_audiorep.precision import PRECISIONS, for_inference  # noqa: E402

__all__ = [
    "DEFAULT_MAX_MEGABYTES",
    "DEFAULT_MAX_SECONDS",
    "DEFAULT_TOP_K",
    "NO_MODEL_MESSAGE",
    "TaggerSettings",
    "build_demo",
    "configured_model_ids",
    "load_model",
    "predict",
]

DEFAULT_MAX_SECONDS = 30.0
DEFAULT_MAX_MEGABYTES = 20.0
DEFAULT_TOP_K = 5
MAX_TOP_K = 20
#: the longest caption generated for a clip
CAPTION_TOKENS = 60

NO_MODEL_MESSAGE = (
    "No model is configured, so nothing can be tagged. Set the environment variable `HF_AUDIOREP_MODEL` "
    "to a Hub id or a local directory holding an audio-classification checkpoint (`HF_AUDIOREP_MODELS=a,b` "
    "for several), or start the app with `python app.py --model <id or dir>`. The Space does not train a "
    "model itself."
)


# ------------------------------------------------------------------------------------------ settings


def configured_model_ids(
    cli_models: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Model ids from the command line, else ``HF_AUDIOREP_MODELS`` (comma-separated), else
    ``HF_AUDIOREP_MODEL``; duplicates and blanks are dropped, order is kept."""
    environ = os.environ if environ is None else environ
    if cli_models:
        raw = list(cli_models)
    elif environ.get("HF_AUDIOREP_MODELS", "").strip():
        raw = environ["HF_AUDIOREP_MODELS"].split(",")
    else:
        raw = [environ.get("HF_AUDIOREP_MODEL", "")]
    return list(dict.fromkeys(m.strip() for m in raw if m.strip()))


@dataclass(frozen=True)
class TaggerSettings:
    """What the handler needs besides the upload: the models it may load and the upload limits."""

    model_ids: tuple[str, ...] = ()
    max_seconds: float = DEFAULT_MAX_SECONDS
    max_megabytes: float = DEFAULT_MAX_MEGABYTES
    precision: str = "auto"  # hf_audiorep.precision.PRECISIONS

    def __post_init__(self):
        if isinstance(self.model_ids, str):
            raise TypeError("model_ids must be a sequence of model ids, not a single string")
        object.__setattr__(self, "model_ids", tuple(self.model_ids))
        if not (math.isfinite(self.max_seconds) and self.max_seconds >= 1.0):
            raise ValueError(f"max_seconds must be a finite number >= 1, got {self.max_seconds}")
        if not (math.isfinite(self.max_megabytes) and self.max_megabytes > 0):
            raise ValueError(f"max_megabytes must be a positive number, got {self.max_megabytes}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TaggerSettings:
        """The settings the environment gives (`ENVIRONMENT`); a bad value is a ValueError naming its
        variable."""
        environ = os.environ if environ is None else environ
        return cls(
            model_ids=tuple(configured_model_ids(environ=environ)),
            **{name: setting_from_environment(name, environ) for name in ENVIRONMENT},
        )


#: each setting of `TaggerSettings` that an environment variable gives: the variable, and the default when it
#: is unset or blank. `TaggerSettings.from_env` and the start command (`main`) both read them from here.
ENVIRONMENT = {
    "max_seconds": ("HF_AUDIOREP_MAX_SECONDS", DEFAULT_MAX_SECONDS),
    "max_megabytes": ("HF_AUDIOREP_MAX_MEGABYTES", DEFAULT_MAX_MEGABYTES),
    "precision": ("HF_AUDIOREP_PRECISION", "auto"),
}


def parse_setting(name: str, text: str) -> float | str:
    """``text`` as the value of the `TaggerSettings` field ``name``, checked by `TaggerSettings` itself so
    that the command line, the environment and the settings agree; a ValueError says what is wrong."""
    value: float | str = text
    if name != "precision":
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    TaggerSettings(**{name: value})
    return value


def setting_from_environment(name: str, environ: Mapping[str, str]) -> float | str:
    """The value of setting ``name`` from its variable in `ENVIRONMENT`, else its default."""
    variable, default = ENVIRONMENT[name]
    text = environ.get(variable, "").strip()
    if not text:
        return default
    try:
        return parse_setting(name, text)
    except ValueError as err:
        raise ValueError(f"environment variable {variable}: {err}") from None


# ------------------------------------------------------------------------------------------- models

_load_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def _load_cached(model_id: str, precision: str):
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification

    import hf_audiorep  # noqa: F401  (registers the library's architectures with the Auto classes)

    # The command line's words for a missing folder, not transformers' "Repo id must be in the form ...".
    missing = no_such_model_directory(model_id)
    if missing:
        raise ValueError(missing)
    try:
        AutoConfig.from_pretrained(model_id)
        trust_remote_code = False
    except ValueError:
        # An architecture this hf_audiorep does not know: the repository's own modeling code (hub.py ships
        # it with every model) is used. Only ids configured by the Space's operator ever get here.
        AutoConfig.from_pretrained(model_id, trust_remote_code=True)
        trust_remote_code = True
    model = AutoModelForAudioClassification.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    feature_extractor = AutoFeatureExtractor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    if label_names(model.config) is None:
        raise ValueError(f"{model_id} has no label names (id2label): it is an encoder, not a tagger")
    return for_inference(model, precision), feature_extractor


def load_model(model_id: str, precision: str = "auto"):
    """``(model, feature_extractor)`` of a configured checkpoint, loaded once and kept (4 at most), ready to
    run at ``precision`` (:func:`hf_audiorep.precision.for_inference`)."""
    with _load_lock:  # two first requests must not load the same weights twice
        return _load_cached(model_id, precision)


@functools.lru_cache(maxsize=4)
def _load_captioner_cached(model_id: str):
    from transformers import AutoConfig, AutoModelForSpeechSeq2Seq, AutoProcessor

    import hf_audiorep  # noqa: F401  (registers the library's architectures with the Auto classes)

    try:
        config = AutoConfig.from_pretrained(model_id)
        trust_remote_code = False
    except ValueError:  # as for tagging: the repository's own code, for a configured id only
        config = AutoConfig.from_pretrained(model_id, trust_remote_code=True)
        trust_remote_code = True
    if getattr(config, "decoder_config", None) is None:
        return None
    model = AutoModelForSpeechSeq2Seq.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    return model.eval(), AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)


def load_captioner(model_id: str):
    """``(captioner, processor)`` when the checkpoint has a caption decoder (a UTS AR / PAR / multi-task
    model, whose MTC head also tags), else None; loaded once and kept."""
    with _load_lock:
        return _load_captioner_cached(model_id)


def _caption(model_id: str, waveform: np.ndarray) -> tuple[str, float] | None:
    """The generated caption (AR decoding) of the clip's start, as much as the encoder takes in one pass
    (``config.max_length`` frames), and the seconds captioned; None for a model without a decoder."""
    from hf_audiorep.evaluation.captioning import caption_waveforms

    loaded = load_captioner(model_id)
    if loaded is None:
        return None
    captioner, processor = loaded
    fe = processor.feature_extractor
    longest = int(captioner.config.max_length * fe.frame_shift_ms / 1000 * fe.sampling_rate)
    head = waveform[:longest]
    caption = caption_waveforms(captioner, processor, [head], max_new_tokens=CAPTION_TOKENS)[0]
    return caption, len(head) / fe.sampling_rate


# ------------------------------------------------------------------------------------------- upload


class UploadError(ValueError):
    """An upload the app cannot tag; the message is shown to the user as it is."""


def _read_upload(path, sampling_rate: int, settings: TaggerSettings) -> tuple[np.ndarray, list[str]]:
    """Decode an uploaded file to mono at ``sampling_rate``, cut to ``settings.max_seconds``; returns the
    waveform and the notices for the user (cut). Raises UploadError for what cannot be tagged."""
    if path is None or (isinstance(path, str) and not path.strip()):
        raise UploadError("Upload or record a clip first.")
    if isinstance(path, Mapping):  # a FileData-like dict, as some API clients send it
        path = path.get("path")
    if not isinstance(path, str | os.PathLike):
        raise UploadError(f"Expected an audio file, got {type(path).__name__}.")
    file = Path(path)
    if not file.is_file():
        raise UploadError("The uploaded file could not be found on the server; please upload it again.")
    size = file.stat().st_size
    if size == 0:
        raise UploadError("The uploaded file is empty (0 bytes).")
    if size > settings.max_megabytes * 1e6:
        raise UploadError(
            f"The file is {size / 1e6:.1f} MB; this Space accepts files up to {settings.max_megabytes:g} MB. "
            "Cut or compress the clip and upload it again."
        )
    try:
        # Only what will be scored is decoded: an hour-long upload costs its first max_seconds.
        waveform, seconds = read_head(str(file), sampling_rate, settings.max_seconds)
    except CorruptAudioError as err:
        # The decoder's reason without the server-side temporary path it names.
        reason = str(err).replace(f"cannot decode {file}: ", "").replace(str(file), "the upload")
        raise UploadError(
            f"This file could not be read as audio: {reason}. Upload a WAV, FLAC, OGG, MP3 or M4A clip."
        ) from None
    except (OSError, RuntimeError) as err:
        raise UploadError(f"This file could not be read as audio: {err}") from None
    if len(waveform) < MIN_SECONDS * sampling_rate:
        raise UploadError(
            f"The clip lasts {describe_duration(len(waveform), sampling_rate)}; "
            f"upload at least {MIN_SECONDS:g} s of audio."
        )
    notices = []
    if seconds > settings.max_seconds:
        notices.append(
            f"The clip lasts {seconds:.1f} s; only its first {settings.max_seconds:g} s were tagged "
            "(the limit is `HF_AUDIOREP_MAX_SECONDS`)."
        )
    return waveform, notices


# ------------------------------------------------------------------------------------------ handler


def _figure(result: TaggingResult, log_mel: np.ndarray, seconds: float, window: float, top_k: int):
    if len(result.window_starts) > 1:
        top = [label for label, _ in result.top(top_k)]
        index = {label: i for i, label in enumerate(result.labels)}
        timeline = {label: result.window_scores[:, index[label]] for label in top}
        centres = np.minimum(result.window_starts + window / 2, seconds)
        return render_figure(log_mel, seconds, timeline, centres)
    return render_figure(log_mel, seconds)


def predict(
    audio,
    model_id: str | None = None,
    top_k: int = DEFAULT_TOP_K,
    settings: TaggerSettings | None = None,
):
    """Tag one uploaded clip. The Gradio event handler, also callable directly.

    Args:
        audio: path of the uploaded or recorded file (``gr.Audio(type="filepath")``).
        model_id: one of ``settings.model_ids``; None or "" = the first.
        top_k: how many labels to return.
        settings: models and limits; default :meth:`TaggerSettings.from_env`.

    Returns:
        ``(labels, figure, message)``: ``{label: sigmoid score}`` of the top ``top_k`` labels (None when
        nothing was tagged), a PIL image (spectrogram, plus scores over time for clips longer than the
        model's window), and a Markdown message: what was done, notices (cut, silent), or why nothing was.
        Bad uploads never raise: the message says what is wrong, and the server keeps serving.
    """
    settings = settings if settings is not None else TaggerSettings.from_env()
    if not settings.model_ids:
        return None, None, NO_MODEL_MESSAGE
    model_id = model_id or settings.model_ids[0]
    if model_id not in settings.model_ids:
        # Only configured checkpoints are loaded: an API caller must not make the server fetch any repo.
        return None, None, f"Unknown model `{model_id}`; this Space serves: {', '.join(settings.model_ids)}."
    try:
        top_k = int(top_k)
    except (TypeError, ValueError):
        return None, None, f"The number of labels must be a whole number, got {top_k!r}."
    top_k = min(max(top_k, 1), MAX_TOP_K)
    try:
        model, feature_extractor = load_model(model_id, settings.precision)
    except (OSError, ValueError, ImportError, RuntimeError) as err:
        return None, None, f"The model `{model_id}` could not be loaded: {err}"

    sampling_rate = int(feature_extractor.sampling_rate)
    try:
        waveform, notices = _read_upload(audio, sampling_rate, settings)
    except UploadError as err:
        return None, None, f"**Cannot tag this upload.** {err}"

    try:
        result = tag_waveform(model, feature_extractor, waveform, sampling_rate)
    except (ValueError, RuntimeError) as err:  # a model that cannot take this clip: say so, keep serving
        return None, None, f"The model `{model_id}` could not tag this clip: {err}"
    seconds = len(waveform) / sampling_rate
    model_window = model_window_seconds(feature_extractor, model.config)  # the one tag_waveform used
    window = min(model_window, seconds)
    figure = _figure(result, log_mel_spectrogram(feature_extractor, waveform), seconds, window, top_k)
    windows = len(result.window_starts)
    if windows > 1:
        how = f"in {windows} overlapping windows of {window:.2f} s; a label's score is its " + (
            "mean window probability" if result.activation == "softmax" else "highest window score"
        )
    else:
        how = f"in one pass (the model's window is {model_window:.2f} s)"
    summary = f"Tagged {seconds:.1f} s with `{model_id}` {how}. {result.describe_scoring()}"
    if result.describe_precision():
        summary = f"{summary} {result.describe_precision()}"
    try:
        captioned = _caption(model_id, waveform)
    except (OSError, ValueError, RuntimeError) as err:  # the tags stand; say why there is no caption
        notices.append(f"No caption: {err}")
        captioned = None
    if captioned is not None:
        caption, caption_seconds = captioned
        if caption_seconds < seconds:
            notices.append(f"The caption describes the first {caption_seconds:.1f} s (the encoder's limit).")
        summary = f"**Caption:** {caption or '(empty)'}\n\n{summary}"
    silent = result.silence_notice()
    if silent:
        notices.append(f"{silent[0].upper()}{silent[1:]}.")
    message = "\n\n".join([summary] + [f"⚠️ {notice}" for notice in notices])
    return dict(result.top(top_k)), figure, message


# --------------------------------------------------------------------------------------------- page


def _example_paths() -> list[str]:
    from example_clips import write_examples

    return [str(p) for p in write_examples()]


def build_demo(
    model_ids: Sequence[str] | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    max_megabytes: float = DEFAULT_MAX_MEGABYTES,
    examples: bool = True,
    precision: str = "auto",
) -> gr.Blocks:
    """The Space's page. ``model_ids`` None reads ``HF_AUDIOREP_MODELS`` / ``HF_AUDIOREP_MODEL``.

    ``examples`` synthesises a few example clips (about a second, cached on disk). Pass
    ``max_file_size=int(max_megabytes * 1e6)`` (bytes) to ``launch`` as well, so oversized files are
    refused before they are uploaded (``main`` does).
    """
    settings = TaggerSettings(
        model_ids=tuple(configured_model_ids(model_ids)),
        max_seconds=max_seconds,
        max_megabytes=max_megabytes,
        precision=precision,
    )

    def tag(audio, model_id, top_k):
        return predict(audio, model_id, top_k, settings=settings)

    with gr.Blocks(title="hf_audiorep audio tagger") as demo:
        gr.Markdown(
            "# Audio tagger\n"
            "Upload or record a sound: the model lists what it hears, with a score per label (a tagger's "
            "labels are independent, so its scores do not sum to 1; a single-label classifier's "
            "probabilities do; each result says which). Clips longer than the model's window are scored "
            f"window by window; at most {settings.max_seconds:g} s and {settings.max_megabytes:g} MB."
        )
        if not settings.model_ids:
            gr.Markdown(f"⚠️ {NO_MODEL_MESSAGE}", elem_id="no-model")
        with gr.Row():
            with gr.Column(scale=2):
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="audio")
                model = gr.Dropdown(
                    choices=list(settings.model_ids),
                    value=settings.model_ids[0] if settings.model_ids else None,
                    label="model",
                    interactive=len(settings.model_ids) > 1,
                    visible=bool(settings.model_ids),
                )
                top_k = gr.Slider(1, MAX_TOP_K, value=DEFAULT_TOP_K, step=1, label="labels shown")
                run = gr.Button("Tag", variant="primary")
            with gr.Column(scale=3):
                # No headline in large type: a top score of 15 % must not read as the answer.
                labels = gr.Label(
                    num_top_classes=MAX_TOP_K, label="labels", elem_id="labels", show_heading=False
                )
                status = gr.Markdown(elem_id="status")
        figure = gr.Image(type="pil", label="spectrogram and scores over time", interactive=False)
        if examples and settings.model_ids:
            gr.Examples(
                examples=[[path] for path in _example_paths()],
                inputs=[audio],
                label="example clips (synthesised with the embedded corpus's sound recipes)",
            )
        gr.on(
            triggers=[run.click, audio.change],
            fn=tag,
            inputs=[audio, model, top_k],
            outputs=[labels, figure, status],
            api_name="predict",
            trigger_mode="always_last",
        )
    return demo


def _setting(name: str):
    """An argparse type for the ``name`` limit of `TaggerSettings`: a number it accepts, checked by
    `TaggerSettings` itself so the command line and the settings agree."""

    def parse(text: str) -> float:
        try:
            return parse_setting(name, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _arguments(parser: argparse.ArgumentParser, argv, environ: Mapping[str, str]) -> argparse.Namespace:
    """The parsed command line, with each setting it leaves out taken from its environment variable (else
    the default); a bad value of either is refused as a usage error naming where it came from."""
    args = parser.parse_args(argv)
    for name in ENVIRONMENT:
        if getattr(args, name) is None:
            try:
                setattr(args, name, setting_from_environment(name, environ))
            except ValueError as err:
                parser.error(str(err))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the hf_audiorep audio tagger.")
    parser.add_argument(
        "--model", action="append", help="Hub id or directory of a checkpoint; repeat for several"
    )
    parser.add_argument(
        "--max_seconds",
        type=_setting("max_seconds"),
        default=None,
        help="longer clips are cut to this many seconds, with a notice (default: HF_AUDIOREP_MAX_SECONDS, "
        f"else {DEFAULT_MAX_SECONDS:g})",
    )
    parser.add_argument(
        "--max_megabytes",
        type=_setting("max_megabytes"),
        default=None,
        help=f"larger files are refused (default: HF_AUDIOREP_MAX_MEGABYTES, else {DEFAULT_MAX_MEGABYTES:g})",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="number format the models run in: auto (default; HF_AUDIOREP_PRECISION) = bf16 for the ViTs "
        "and BEATs on a CPU with AMX, fp32 otherwise; fp32 for float32 scores",
    )
    parser.add_argument("--no_examples", action="store_true", help="do not synthesise the example clips")
    parser.add_argument("--server_name", default=None, help="e.g. 0.0.0.0 to listen on every interface")
    parser.add_argument("--server_port", type=int, default=None)
    args = _arguments(parser, argv, os.environ)
    torch.set_grad_enabled(False)
    demo = build_demo(
        args.model,
        args.max_seconds,
        args.max_megabytes,
        examples=not args.no_examples,
        precision=args.precision,
    )
    demo.launch(
        server_name=args.server_name,
        server_port=args.server_port,
        # In bytes: gradio's size strings take whole numbers only ("20.0mb" is refused at start-up).
        max_file_size=int(args.max_megabytes * 1e6),
    )


if __name__ == "__main__":
    main()
