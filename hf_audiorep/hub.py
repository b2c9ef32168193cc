"""Publishing a saved model to the Hugging Face Hub, usable with or without ``hf_audiorep`` installed.

:func:`prepare_repo` builds the exact folder that gets uploaded: safetensors weights, ``config.json`` and
``preprocessor_config.json`` with an ``auto_map`` for every head, for a family with text its processor or
tokenizer (with ``AutoProcessor`` / ``AutoTokenizer`` in the ``auto_map``), the flat remote-code bundle
of modeling files, and a model card. :func:`push_model` uploads that folder. Keeping the two apart lets the
folder be inspected (``hf-audiorep push DIR REPO --dry_run OUT``) and tested without any network.
:func:`push_run` is what a recipe's ``--push_to_hub`` calls once the run and its test evaluation are
written. A Hub that cannot be reached (no network, offline mode, a bad token) raises
``hub_errors.HubUnreachableError``, whose one-line message names the repository and what to check.
"""

from __future__ import annotations

import ast
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from transformers import (
    AutoModelForAudioClassification,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

from .hub_errors import HubUnreachableError, translate_hub_errors
from .registry import Architecture, architecture_for

__all__ = ["prepare_repo", "push_model", "push_run", "remote_code_files"]

logger = logging.getLogger(__name__)

#: weight formats that execute pickled code on load; the Hub copy must be safetensors only.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_REQUIRED = ("model.safetensors", "config.json")


def _module_file(cls: type) -> Path:
    module = sys.modules[cls.__module__]
    if getattr(module, "__file__", None) is None:
        raise ValueError(f"{cls.__qualname__} is not defined in a file and cannot be shipped as remote code")
    return Path(module.__file__)


def _sibling_imports(path: Path) -> list[Path]:
    """Files a module reaches through single-dot relative imports (the only kind remote code supports)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        if node.level > 1:
            # transformers flattens the bundle into one folder, so a parent-package import cannot resolve.
            raise ValueError(f"{path.name} uses a multi-dot relative import, which remote code cannot ship")
        # `from .x import y` names module x; `from . import x, z` names modules x and z.
        names = [node.module] if node.module else [alias.name for alias in node.names]
        for name in names:
            target = path.parent / f"{name.split('.')[0]}.py"
            if not target.is_file():
                raise ValueError(f"{path.name} imports .{name}, which is not a sibling module file")
            found.append(target)
    return found


def remote_code_files(*classes: type) -> list[Path]:
    """Every source file needed to import ``classes`` from a flat folder: their modules plus the transitive
    closure of their single-dot relative imports, in a stable order."""
    pending = [_module_file(cls) for cls in classes]
    seen: dict[Path, None] = {}
    while pending:
        path = pending.pop(0)
        if path in seen:
            continue
        seen[path] = None
        pending.extend(_sibling_imports(path))
    names = [p.name for p in seen]
    if len(set(names)) != len(names):
        raise ValueError(f"remote-code files would collide once flattened: {sorted(names)}")
    return list(seen)


def _auto_ref(cls: type) -> str:
    # transformers' auto_map format: "<module file stem>.<ClassName>", resolved inside the repo folder.
    return f"{_module_file(cls).stem}.{cls.__name__}"


def _tokenizer_auto_ref(cls: type) -> list[str | None]:
    # AutoTokenizer's entry is a (slow, fast) pair; transformers loads whichever is set, the fast one first.
    ref = _auto_ref(cls)
    return [None, ref] if issubclass(cls, PreTrainedTokenizerFast) else [ref, None]


def _has_labels(config: dict, head_cls: type | None) -> bool:
    if head_cls is not None and head_cls.__name__ in (config.get("architectures") or []):
        return True
    # Every config carries the generic LABEL_0/LABEL_1 pair by default; only real names mean a classifier.
    labels = (config.get("id2label") or {}).values()
    return any(label != f"LABEL_{i}" for i, label in enumerate(labels))


def _split_dataset(dataset: str) -> tuple[str, str | None]:
    """``finetune.py`` writes ``<hub id>[/<config>]``; Hub ids hold exactly one slash."""
    parts = dataset.split("/")
    if len(parts) > 2:
        return "/".join(parts[:2]), "/".join(parts[2:])
    return dataset, None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _usage(repo_id: str, base_name: str, fe_name: str, has_labels: bool) -> str:
    with_lib = (
        "```python\n"
        "import hf_audiorep  # registers the classes; no remote code is run\n"
        "from transformers import AutoFeatureExtractor, AutoModel\n\n"
        f'feature_extractor = AutoFeatureExtractor.from_pretrained("{repo_id}")\n'
        f'model = AutoModel.from_pretrained("{repo_id}")  # {base_name}\n'
        'inputs = feature_extractor(waveform, sampling_rate=16000, return_tensors="pt")\n'
        "embedding = model(**inputs).pooler_output\n"
        "```\n"
    )
    without_lib = (
        "```python\n"
        "from transformers import AutoFeatureExtractor, AutoModel\n\n"
        f'feature_extractor = AutoFeatureExtractor.from_pretrained("{repo_id}", trust_remote_code=True)\n'
        f'model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)\n'
        "```\n"
    )
    text = (
        "## Usage\n\n"
        f"With `hf_audiorep` installed ({fe_name} computes the log-mel input):\n\n{with_lib}\n"
        "Without it, the modeling code shipped in this repository is used:\n\n"
        f"{without_lib}"
    )
    if has_labels:
        text += (
            "\nTagging audio (multi-label, so scores are sigmoids, not a softmax):\n\n"
            "```python\n"
            "from transformers import pipeline\n\n"
            f'tagger = pipeline("audio-classification", model="{repo_id}", function_to_apply="sigmoid")\n'
            'tagger("clip.wav", top_k=5)\n'
            "```\n"
        )
    return text


def _training_section(training: dict[str, Any], training_command: str | None) -> list[str]:
    """The card's "Training" section: which recipe, with which command, for how long.

    An explicit ``training_command`` (the publisher's word) wins over the one the run recorded in
    ``train_results.json``; the recorded one is what a recipe's ``--push_to_hub`` publishes.
    """
    command = training_command or training.get("training_command") or training.get("command")
    if isinstance(command, list):
        command = " ".join(str(part) for part in command)
    recipe = training.get("recipe")
    if not command and not recipe:
        return []
    lines = ["## Training", ""]
    if recipe:
        lines += [f"Trained with hf_audiorep's `{recipe}` recipe (`recipes/{recipe}.py`).", ""]
    if command:
        lines += ["The command that produced this model:", "", "```bash", str(command), "```", ""]
    steps, world = training.get("global_step"), training.get("world_size")
    if steps is not None:
        where = f" on {world} process{'es' if world != 1 else ''}" if world else ""
        precision = training.get("mixed_precision")
        lines += [f"{steps} optimizer steps{where}, mixed precision `{precision or 'no'}`.", ""]
    return lines


def _model_card(
    model_dir: Path,
    config: dict,
    architecture: Architecture,
    *,
    repo_id: str,
    license: str,
    datasets: list[str] | None,
    base_model: str | None,
    training_command: str | None,
) -> ModelCard:
    model_type = config["model_type"]
    has_labels = _has_labels(config, architecture.heads.get(AutoModelForAudioClassification))
    evaluation = _read_json(model_dir / "eval_results.json")
    training = _read_json(model_dir / "train_results.json")
    name = repo_id.split("/")[-1]

    eval_results = []
    lines = [f"# {name}", "", f"A `{model_type}` audio model trained with hf_audiorep.", ""]
    dataset_type, dataset_config = _split_dataset(str(evaluation.get("dataset", "unknown")))
    split = evaluation.get("split", "test")
    # Fine-tuned models record test_mAP; pre-trained encoders record the linear-probe mAP of their frozen
    # embeddings (with the probe protocol), which the card must not present as a fine-tuned score.
    for key, metric_name, clips_key in (
        ("test_mAP", "mAP", "test_num_clips"),
        ("probe_mAP", "linear-probe mAP", "probe_num_clips"),
    ):
        if key not in evaluation:
            continue
        value = float(evaluation[key])
        # A probe run names its protocol's metric (e.g. "CGP-probe mAP"): not a fine-tuned score either.
        metric_name = evaluation.get("metric_name", metric_name) if key == "test_mAP" else metric_name
        eval_results.append(
            EvalResult(
                task_type="audio-classification",
                dataset_type=dataset_type,
                dataset_name=dataset_type.split("/")[-1],
                dataset_config=dataset_config,
                dataset_split=split,
                metric_type="mAP",
                metric_name=metric_name,
                metric_value=value,
            )
        )
        clips = evaluation.get(clips_key, "an unknown number of")
        protocol = f" Protocol: {evaluation['protocol']}." if "protocol" in evaluation else ""
        lines += [
            "## Evaluation",
            "",
            f"{metric_name} {value:.4f} on the `{split}` split of `{dataset_type}`"
            f"{f' ({dataset_config})' if dataset_config else ''}, measured on {clips} evaluation clips."
            f"{protocol}",
            "",
        ]
        if key == "probe_mAP":
            lines[-1:-1] = _probe_baselines(evaluation)
    if eval_results and datasets is None and "/" in dataset_type:
        datasets = [dataset_type]
    eval_results = eval_results or None
    if architecture.card_notes:
        lines += ["## Implementation notes", "", architecture.card_notes, ""]
    lines += _training_section(training, training_command)
    lines.append(
        _usage(repo_id, architecture.base_model.__name__, architecture.feature_extractor.__name__, has_labels)
    )

    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="audio-classification" if has_labels else "feature-extraction",
        license=license,
        tags=["hf_audiorep", "audio", model_type],
        datasets=datasets,
        metrics=["mAP"] if eval_results else None,
        base_model=base_model,
        model_name=name,
        eval_results=eval_results,
    )
    # Built from the YAML directly rather than ModelCard.from_template: no Jinja, no network, no placeholders.
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


#: what a pre-training run's probe is read against (its eval_results.json keys), as the card names them
_PROBE_BASELINES = (
    ("probe_mAP_initialization", "the encoder's random initialisation"),
    ("probe_mAP_input_statistics", "the input features' mean and standard deviation, without an encoder"),
    ("probe_mAP_chance", "a constant score"),
)


def _probe_baselines(evaluation: dict[str, Any]) -> list[str]:
    """The card's line giving the same probe's baselines on the same clips, where the run measured them."""
    known = [f"{name} {float(evaluation[key]):.4f}" for key, name in _PROBE_BASELINES if key in evaluation]
    return ["", "The same probe on the same clips: " + "; ".join(known) + "."] if known else []


def _check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise ValueError(f"{model_dir} is not a directory")
    missing = [name for name in _REQUIRED if not (model_dir / name).is_file()]
    if missing:
        pickled = sorted(p.name for p in model_dir.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        hint = (
            f"; found pickled weights {pickled}, which are not published: re-save with "
            "model.save_pretrained(dir) to get model.safetensors"
            if pickled
            else ""
        )
        raise ValueError(f"{model_dir} is missing {', '.join(missing)}{hint}")
    _read_preprocessor(model_dir)  # the front end, or the error that names it missing


def _read_preprocessor(model_dir: Path) -> dict[str, Any]:
    """The saved front end: ``preprocessor_config.json``, or the feature extractor inside the
    ``processor_config.json`` that ``processor.save_pretrained`` writes for a model with text."""
    if (model_dir / "preprocessor_config.json").is_file():
        return _read_json(model_dir / "preprocessor_config.json")
    if (model_dir / "processor_config.json").is_file():
        inside = _read_json(model_dir / "processor_config.json").get("feature_extractor")
        if isinstance(inside, dict):
            return inside
    raise ValueError(
        f"{model_dir} is missing preprocessor_config.json; save the feature extractor (or the processor) "
        "next to the model"
    )


def _architecture_of(model_dir: Path) -> tuple[dict[str, Any], Architecture]:
    """The saved ``config.json`` and the registry record of its ``model_type``."""
    config = _read_json(model_dir / "config.json")
    if "model_type" not in config:
        raise ValueError(f"{model_dir / 'config.json'} has no model_type")
    try:
        return config, architecture_for(config["model_type"])
    except ValueError as err:
        raise ValueError(f"{model_dir / 'config.json'}: {err}") from None


#: config fields holding a model's text part; a config that has them, all unset, is an audio-only checkpoint
#: of a family with text (a UTS encoder or tagger), published without a processor
TEXT_SUBCONFIGS = ("decoder_config", "text_config")


def _audio_only(model_dir: Path) -> bool:
    config = _read_json(model_dir / "config.json")
    fields = [name for name in TEXT_SUBCONFIGS if name in config]
    return bool(fields) and all(config[name] is None for name in fields)


def _text_processing(
    model_dir: Path,
    architecture: Architecture,
    processor: ProcessorMixin | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> ProcessorMixin | PreTrainedTokenizerBase | None:
    """The processor (or, for a family with a tokenizer only, the tokenizer) to publish beside the model:
    the one given, else the one saved in ``model_dir``; None for a family without text, and for an
    audio-only checkpoint of a family with text when none was given or saved (`_audio_only`)."""
    kind = "processor" if architecture.processor is not None else "tokenizer"
    cls = getattr(architecture, kind)
    for name, value in (("processor", processor), ("tokenizer", tokenizer)):
        if value is not None and cls is None:
            raise ValueError(f"{architecture.name} has no {name} to publish (its registry record names none)")
        if value is not None and name != kind:
            raise ValueError(
                f"{architecture.name} publishes its tokenizer inside its processor: pass processor="
            )
    if cls is None:
        return None
    given = processor if kind == "processor" else tokenizer
    if given is None:
        saved = model_dir / f"{kind}_config.json"  # what save_pretrained writes for either
        if not saved.is_file() and _audio_only(model_dir):
            return None
        if not saved.is_file():
            raise ValueError(
                f"{model_dir} has no {saved.name}: save the {cls.__name__} next to the model "
                f"({kind}.save_pretrained(dir)) or pass {kind}= to prepare_repo"
            )
        given = cls.from_pretrained(model_dir)
    if not isinstance(given, cls):
        raise ValueError(
            f"expected a {cls.__name__} ({architecture.name}'s {kind}), got {type(given).__name__}"
        )
    if kind == "processor":
        _check_front_end(given, _read_preprocessor(model_dir))
    return given


def _front_end_fields(feature_extractor: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in feature_extractor.items() if k not in ("auto_map", "processor_class")}


def _check_front_end(processor: ProcessorMixin, preprocessor: dict[str, Any]) -> None:
    """transformers reads a processor's feature extractor from ``processor_config.json`` before
    ``preprocessor_config.json``: both must describe the model's one front end."""
    nested = json.loads(processor.to_json_string()).get("feature_extractor")
    if nested is None:
        return
    nested, expected = _front_end_fields(nested), _front_end_fields(preprocessor)
    changed = sorted(k for k in nested.keys() | expected.keys() if nested.get(k) != expected.get(k))
    if changed:
        raise ValueError(
            f"the processor's feature extractor differs from the model's preprocessor_config.json in "
            f"{changed}: publish the processor built on the model's feature extractor"
        )


def _save_text_processing(
    out: Path,
    architecture: Architecture,
    text_processing: ProcessorMixin | PreTrainedTokenizerBase,
    preprocessor: dict[str, Any],
) -> None:
    """``save_pretrained`` of the processor or tokenizer into ``out``, its Auto classes in the auto_map."""
    text_processing.save_pretrained(out)
    if architecture.processor is not None:
        path = out / "processor_config.json"
        processor = _read_json(path)
        if "feature_extractor" in processor:  # the same front end, naming its class for remote code too
            processor["feature_extractor"] = preprocessor
        processor["auto_map"] = {"AutoProcessor": _auto_ref(architecture.processor)}
        _write_json(path, processor)
    if architecture.tokenizer is not None:
        path = out / "tokenizer_config.json"
        if not path.is_file():
            raise ValueError(
                f"saving the {architecture.name} {type(text_processing).__name__} wrote no {path.name}"
            )
        tokenizer = _read_json(path)
        tokenizer["auto_map"] = {"AutoTokenizer": _tokenizer_auto_ref(architecture.tokenizer)}
        _write_json(path, tokenizer)


def prepare_repo(
    model_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    repo_id: str,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
    base_model: str | None = None,
    training_command: str | None = None,
    processor: ProcessorMixin | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Build the folder that :func:`push_model` uploads and return its path.

    It holds ``model.safetensors``, ``config.json`` and ``preprocessor_config.json`` (both with an
    ``auto_map`` naming every Auto class the architecture supports), the modeling source files copied
    flat so ``trust_remote_code=True`` works without hf_audiorep, and a ``README.md`` model card. Pickled
    weights (``.bin``/``.pt``) are never copied. ``out_dir`` must be empty or absent; when None a new
    temporary directory is created and left for the caller to remove.

    A family with text (its registry record names a processor or tokenizer class) also publishes that
    processor or tokenizer, written with ``save_pretrained``: ``processor`` / ``tokenizer`` when given,
    else the one saved in ``model_dir``. Its configs carry the ``auto_map`` too (``AutoProcessor`` in
    ``processor_config.json``, ``AutoTokenizer`` in ``tokenizer_config.json``) and its module ships with
    the modeling files.
    """
    model_dir = Path(model_dir)
    _check_model_dir(model_dir)
    config, architecture = _architecture_of(model_dir)
    text_processing = _text_processing(model_dir, architecture, processor, tokenizer)
    if out_dir is None:
        out = Path(tempfile.mkdtemp(prefix="hf_audiorep_hub_"))
    else:
        out = Path(out_dir)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"out_dir {out} exists and is not an empty directory")
        out.mkdir(parents=True, exist_ok=True)

    auto_classes = {"AutoConfig": architecture.config_class}
    auto_classes.update({auto.__name__: cls for auto, cls in architecture.auto_models.items()})
    # transformers records only the class that was saved; every head is listed so any Auto class loads.
    config["auto_map"] = {auto: _auto_ref(cls) for auto, cls in auto_classes.items()}
    _write_json(out / "config.json", config)

    preprocessor = _read_preprocessor(model_dir)
    preprocessor["auto_map"] = {"AutoFeatureExtractor": _auto_ref(architecture.feature_extractor)}
    _write_json(out / "preprocessor_config.json", preprocessor)
    if text_processing is not None:
        _save_text_processing(out, architecture, text_processing, preprocessor)

    shutil.copy2(model_dir / "model.safetensors", out / "model.safetensors")
    # A generating model's decoding settings (its start token, length limit): without them transformers
    # rebuilds them from config.json, which holds none of the decoder's.
    if (model_dir / "generation_config.json").is_file():
        shutil.copy2(model_dir / "generation_config.json", out / "generation_config.json")
    for source in remote_code_files(*architecture.classes):
        shutil.copy2(source, out / source.name)

    card = _model_card(
        model_dir,
        config,
        architecture,
        repo_id=repo_id,
        license=license,
        datasets=datasets,
        base_model=base_model,
        training_command=training_command,
    )
    card.save(out / "README.md")
    return out


def push_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    **card_kwargs: Any,
):
    """Upload a saved model to ``repo_id`` (created if needed) and return the ``CommitInfo``.

    ``card_kwargs`` (license, datasets, base_model, training_command; processor / tokenizer for a family
    with text) go to :func:`prepare_repo`.
    """
    # Before any network call: a bad folder (or a missing processor) creates no empty repo.
    _check_model_dir(Path(model_dir))
    _, architecture = _architecture_of(Path(model_dir))
    text_processing = _text_processing(
        Path(model_dir), architecture, card_kwargs.pop("processor", None), card_kwargs.pop("tokenizer", None)
    )
    if text_processing is not None:
        card_kwargs["processor" if architecture.processor is not None else "tokenizer"] = text_processing
    api = HfApi(token=token)
    # No network, offline mode or a bad token come out as one HubUnreachableError naming the repo.
    with translate_hub_errors(repo_id, repo_type="model", upload=True):
        url = api.create_repo(repo_id, exist_ok=True, private=private)
    # A bare name ("my-model") is created in the token's namespace; the card must show the full id.
    resolved = getattr(url, "repo_id", None)
    if isinstance(resolved, str) and resolved:
        repo_id = resolved
    with tempfile.TemporaryDirectory(prefix="hf_audiorep_push_") as tmp:
        folder = prepare_repo(model_dir, Path(tmp) / "repo", repo_id=repo_id, **card_kwargs)
        with translate_hub_errors(repo_id, repo_type="model", upload=True):
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                commit_message=commit_message or f"Upload {Path(model_dir).name} with hf_audiorep",
            )


def push_run(args, **card_kwargs: Any):
    """Publish a finished recipe run when ``args.push_to_hub`` is set; the last call of every recipe.

    ``args`` is the run's :class:`~hf_audiorep.training.TrainingArguments`. It runs after the recipe wrote
    ``eval_results.json``, so the card carries the test mAP, and only on the main process (the others return
    None at once). The card's training command is the one the loop recorded in ``train_results.json``.
    Returns the ``CommitInfo``, or None when nothing was pushed.
    """
    if not getattr(args, "push_to_hub", False):
        return None
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return None
    if not args.hub_model_id:
        raise ValueError("push_to_hub is set but hub_model_id is empty")
    try:
        commit = push_model(
            args.output_dir,
            args.hub_model_id,
            private=args.hub_private_repo,
            token=args.hub_token,
            **card_kwargs,
        )
    except HubUnreachableError as err:
        # The run itself is complete and saved: say so, and how to publish it once the Hub is reachable.
        raise HubUnreachableError(
            f"{err}. The run is saved in {args.output_dir}; publish it later with "
            f"`hf-audiorep push {args.output_dir} {args.hub_model_id}`",
            err.repo_id,
        ) from err
    logger.info("pushed %s to %s", args.output_dir, getattr(commit, "commit_url", args.hub_model_id))
    return commit
