"""Probe a frozen encoder layer by layer: Convex Gated Probing (CGP) and the probes it is compared with.

The encoder runs once per clip and its hidden states are cached (float16, memory-mapped, sized up front
against --cache_budget_gb); the probe head then trains on the cache for many epochs. Any encoder that returns
hidden_states can be probed: a model of this library, AST, wav2vec2, ... (a directory or a Hub id), or a
randomly initialised library preset, the floor a pre-trained encoder must beat. Runs with no arguments on the
embedded corpus (a random audiomae-tiny, CGP). On a CPU the probe's epochs take most of the time:
--token_pooling k makes the cache and each epoch about k times smaller. The linear probe is fitted to its
optimum by default (--optimizer auto: scikit-learn's L-BFGS logistic regression on the pooled vectors, its
L2 strength chosen by cross-validation on the train clips), in seconds to a minute; the other heads train
for --epochs of AdamW.

    python recipes/probe.py

The five probes on the same cache (the first run writes it, the others reuse it):

    for probe in linear weighted_sum attentive prototype cgp; do
        python recipes/probe.py --model_name_or_path outputs/pretrain-audiomae --probe $probe \\
            --cache_dir outputs/probe-cache --output_dir outputs/probe-$probe
    done

Writes to --output_dir: eval_results.json (test mAP / accuracy, the protocol, the cache's size, the encoder's
and the probe's time), layer_weights.json and layer_weights.png (for the weighted-sum and CGP probes), and
the head (probe_head.safetensors, probe_config.json). With --push_to_hub (library encoders), the encoder is
published with a card that reports the metric and names the probe protocol.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from transformers import AutoModel, set_seed

import hf_audiorep
from hf_audiorep.data.arguments import AUTO_EVAL_SPLIT, DataArguments, StreamFactory, load_sources
from hf_audiorep.data.sources import check_one_label_per_clip
from hf_audiorep.evaluation.probing import (
    CacheBudgetError,
    LayerFeatureEncoder,
    build_feature_cache,
    build_probe,
    cached_features,
    dataset_fingerprint,
    encoder_fingerprint,
    evaluate_probe,
    layer_weights_report,
    plan_cache,
    remove_layer_weights,
    save_probe_head,
    train_probe,
    write_layer_weights,
)
from hf_audiorep.evaluation.probing.cache import GB
from hf_audiorep.hub import push_run
from hf_audiorep.hub_errors import check_model_source, run_recipe, start_processes
from hf_audiorep.inference import model_clip_seconds
from hf_audiorep.registry import feature_extractor_for
from hf_audiorep.training import TrainingArguments
from hf_audiorep.training.argument_parser import RecipeArgumentParser
from hf_audiorep.training.checkpoint import write_json_atomic

logger = logging.getLogger("probe")

PROBE_NAMES = {
    "linear": "linear-probe",
    "weighted_sum": "weighted-sum-probe",
    "attentive": "attentive-probe",
    "prototype": "prototype-probe",
    "cgp": "CGP-probe",
}


@dataclass
class EncoderArguments:
    model_name_or_path: str | None = None
    """the frozen encoder: a saved model directory or Hub id whose model returns hidden_states (this library's
    models, AST, wav2vec2, ...); when unset, a randomly initialised --preset"""
    preset: str = "audiomae-tiny"
    """library preset probed with random weights when --model_name_or_path is unset"""
    max_length: int | None = None
    """frames the --preset encoder sees; unset: the preset's (1024 for audiomae-tiny)"""
    trust_remote_code: bool = False
    """allow the repository's own modeling code for an architecture that neither this library nor
    transformers knows"""
    encoder_batch_size: int = 16
    """clips per forward pass of the encoder while the cache is written"""

    def __post_init__(self):
        check_model_source(self.model_name_or_path, "--model_name_or_path")


@dataclass
class CacheArguments:
    layers: list[int] | None = None
    """indices into the encoder's hidden_states to cache and probe (0: the embedding output, i: block i,
    negative: from the end), all of one shape. Default: all of them where they share one shape; otherwise
    (a CNN such as CP-Mobile, whose stages differ in channels and resolution) the last one and those just
    before it of its shape, its last stage. A CNN's (channels, freq, time) map is probed as freq x time
    tokens of width channels"""
    token_pooling: int = 1
    """average each run of this many consecutive tokens into one before caching (shrinks the cache as much)"""
    cache_dir: str | None = None
    """where the feature cache is written (one sub-directory per split) and reused from while the encoder and
    the data are the same; default: OUTPUT_DIR/feature_cache"""
    cache_budget_gb: float = 8.0
    """largest feature cache allowed, in GB; a larger one is refused before any clip is encoded"""
    overwrite_cache: bool = False
    """re-encode the clips even when a matching cache exists"""
    max_train_clips: int | None = None
    """cache and train on the first N clips of the train split (default: all; needed for streamed data)"""
    max_test_clips: int | None = None
    """score on the first N clips of the test split (default: all; needed for streamed data)"""


@dataclass
class ProbeHeadArguments:
    probe: Literal["linear", "weighted_sum", "attentive", "prototype", "cgp"] = "cgp"
    """linear (mean-pooled last layer) | weighted_sum (SUPERB: softmax layer weights, mean pooling, linear) |
    attentive (learned-query attention pooling of the last layer) | prototype (prototype head on the last
    layer) | cgp (convex gated probing: convex gates over all layers + prototype head)"""
    problem_type: str = "multi_label_classification"
    """multi_label_classification (tagging, BCE, scored by mAP) or single_label_classification (CE, scored
    by accuracy and mAP)"""
    gate_granularity: Literal["layer", "layer_class"] = "layer"
    """cgp: one convex combination of the layers for all classes (layer) or one per class (layer_class)"""
    prototypes_per_class: int = 10
    """prototype and cgp: prototypes per class (J)"""
    prototype_topk: int = 1
    """prototype and cgp: tokens averaged into a prototype's score in training (evaluation takes the best;
    the CGP reference's 3 probed worse on every encoder measured: docs/benchmarks.md)"""
    attention_heads: int = 8
    """attentive: heads of the attention pooling (must divide the encoder width)"""
    center_positions: Literal["auto", "true", "false"] = "auto"
    """subtract from every token the train split's mean token at its position (per layer) before the head
    reads it: true, false, or auto (when those means hold more than half of the tokens' variance). What every
    clip shares at a position, mostly its position embedding, swamps the prototypes' cosine similarities
    where it dominates (BAT-small), and centring costs a little where it does not (docs/benchmarks.md)"""
    standardize: bool = True
    """linear, weighted_sum and attentive: standardise the pooled vector per dimension before the linear
    classifier (BatchNorm without affine, as MAE's linear probe). Without it the AdamW head stays far from
    its optimum where the clips differ little against what they share (docs/benchmarks.md)"""
    optimizer: Literal["auto", "adamw", "lbfgs"] = "auto"
    """adamw (--epochs passes of AdamW over the cache, any head) | lbfgs (the linear head fitted to the
    optimum of its L2-regularised logistic regression, --lbfgs_C) | auto (lbfgs for the linear head, adamw
    for the others). An AdamW linear head stops short of its optimum, further on a pre-trained encoder than
    on a random one (docs/benchmarks.md, "A linear probe fitted to its optimum")"""
    lbfgs_C: float | None = None
    """lbfgs: inverse L2 strength, scikit-learn's C (the penalty is |W|^2 / 2C against the loss summed over
    the clips, per class for tagging). Unset: the one of 0.01, 0.1, ..., 1000 with the best 3-fold
    cross-validated mAP on the train clips (the test split is never read for it); how much penalty a probe
    needs depends on the encoder (docs/benchmarks.md)"""
    epochs: int = 100
    """adamw: passes over the cached train split (30 under-trained every probe on the corpus:
    docs/benchmarks.md)"""
    probe_batch_size: int = 64
    """clips per probe training step"""
    learning_rate: float = 1e-2
    """AdamW peak learning rate (linear warmup over the first twentieth of the steps, then cosine decay)"""
    weight_decay: float = 3e-4
    """AdamW weight decay (not on biases, gates or prototype-class weights)"""
    seed: int = 0
    """seed of the random preset's weights, the head's initialisation and the minibatch order"""

    def __post_init__(self):
        if self.lbfgs_C is not None and not self.lbfgs_C > 0:
            raise ValueError(f"--lbfgs_C must be positive, got {self.lbfgs_C}")
        if self.optimizer == "lbfgs" and self.probe != "linear":
            raise ValueError(
                "--optimizer lbfgs fits the linear probe only (a convex fit); "
                f"--probe {self.probe} trains with --optimizer adamw (or auto)"
            )

    def fit_optimizer(self) -> str:
        """``optimizer`` as `train_probe` takes it (auto resolved for the chosen head)."""
        if self.optimizer == "auto":
            return "lbfgs" if self.probe == "linear" else "adamw"
        return self.optimizer

    def centring(self) -> bool | str:
        """``center_positions`` as `train_probe` takes it."""
        return {"true": True, "false": False}.get(self.center_positions, self.center_positions)

    def head_options(self) -> dict:
        """The keyword arguments of the chosen head."""
        if self.probe == "attentive":
            return {"num_heads": self.attention_heads, "standardize": self.standardize}
        if self.probe in ("linear", "weighted_sum"):
            return {"standardize": self.standardize}
        options = {"prototypes_per_class": self.prototypes_per_class, "topk": self.prototype_topk}
        if self.probe == "cgp":
            options["gate_granularity"] = self.gate_granularity
        return options  # prototype and cgp


@dataclass
class RunArguments:
    output_dir: str = "outputs/probe"
    """where eval_results.json, the layer weights and the probe head go"""
    cpu: bool = False
    """run on the CPU even when an accelerator is available"""
    push_to_hub: bool = False
    """publish the encoder (a model of this library) with a card reporting the probe's test metric and
    protocol"""
    hub_model_id: str | None = None
    """Hub repository to push to (default: the name of --output_dir's folder)"""
    hub_private_repo: bool = False
    """create the Hub repository as private"""
    hub_token: str | None = None
    """Hub token with write access (default: HF_TOKEN or the saved login); never written anywhere"""

    def __post_init__(self):
        # The loop's own arguments validate the Hub id and derive its default before any clip is encoded.
        self.hub = TrainingArguments(
            output_dir=self.output_dir,
            push_to_hub=self.push_to_hub,
            hub_model_id=self.hub_model_id,
            hub_private_repo=self.hub_private_repo,
            hub_token=self.hub_token,
        )


def _encoder(args: EncoderArguments, cache_args: CacheArguments, device) -> LayerFeatureEncoder:
    if args.model_name_or_path:
        encoder = LayerFeatureEncoder.from_pretrained(
            args.model_name_or_path, device=device, trust_remote_code=args.trust_remote_code
        )
    else:
        overrides = {"max_length": args.max_length} if args.max_length else {}
        config = hf_audiorep.config_from_preset(args.preset, **overrides)
        encoder = LayerFeatureEncoder(
            AutoModel.from_config(config).to(device), feature_extractor_for(config), "hf_audiorep"
        )
    return encoder.select(cache_args.layers, cache_args.token_pooling)


def _default_layers(encoder: LayerFeatureEncoder, data_args: DataArguments, cache_args: CacheArguments):
    """Without --layers: every hidden state, unless they differ in shape (a CNN's stages), when they could not
    be stacked; then the last stage's (`LayerFeatureEncoder.default_layers`), said in the log."""
    rate = encoder.sampling_rate
    layers = encoder.default_layers(round(data_args.clip_seconds * rate), rate)
    if layers is not None:
        logger.info(
            "the hidden states of %s differ in shape: probing %s, the last one and those before it of its "
            "shape (--layers chooses others of one shape)",
            type(encoder.model).__name__,
            layers,
        )
        encoder.select(layers, cache_args.token_pooling)


def _num_clips(source, limit: int | None, role: str) -> int:
    if limit is not None and limit < 1:
        raise ValueError(f"--max_{role}_clips must be >= 1, got {limit}")
    if source.is_streaming:
        if limit is None:
            raise ValueError(
                f"a streamed {role} split has no known length, so the cache cannot be sized: "
                f"set --max_{role}_clips"
            )
        return limit
    return len(source.dataset) if limit is None else min(limit, len(source.dataset))


def _fingerprint(
    encoder_hash: str, data_args: DataArguments, source, role: str, clips: int, rate: int
) -> str:
    """What a split's cached features depend on besides the encoder: which clips, how long, at what rate,
    and (when the split can be listed) the clips' labels and audio files themselves, since the same path can
    hold other files later. A streamed split is known by its arguments only."""
    data = {**dataclasses.asdict(data_args), "role": role, "clips": clips, "sample_rate": rate}
    for speed_only in ("num_decode_threads", "shuffle_buffer"):
        del data[speed_only]
    data["classes"] = list(source.label_names)  # the columns of the cached multi-hot labels
    if not source.is_streaming:
        data["records"] = dataset_fingerprint(source.dataset, source.audio_column, source.label_column, clips)
    return hashlib.sha256((encoder_hash + json.dumps(data, sort_keys=True, default=str)).encode()).hexdigest()


def _caches(encoder, sources, data_args, cache_args, batch_size: int, seed: int, cache_dir: Path) -> dict:
    """The train and test feature caches: reused when they match, else planned against the budget, then
    written."""
    rate = encoder.sampling_rate
    clips = {
        role: _num_clips(sources[role], getattr(cache_args, f"max_{role}_clips"), role)
        for role in ("train", "test")
    }
    encoder_hash = encoder_fingerprint(encoder)
    prints = {
        role: _fingerprint(encoder_hash, data_args, sources[role], role, n, rate) for role, n in clips.items()
    }
    stream = StreamFactory(
        sources, data_args, batch_size=batch_size, sample_rate=rate, seed=seed, rank=0, world_size=1
    )
    num_samples = round(data_args.clip_seconds * rate)
    shape = encoder.feature_shape(num_samples, rate)
    missing = {
        role: n
        for role, n in clips.items()
        if cache_args.overwrite_cache or cached_features(cache_dir / role, prints[role]) is None
    }
    if missing:
        plan = plan_cache(
            missing, shape, cache_args.cache_budget_gb * GB, cache_dir, cache_args.token_pooling
        )
        logger.info("feature cache to write: %s", plan.describe())
    return {
        role: build_feature_cache(
            encoder,
            stream(role, train=False, sharded=False),
            cache_dir / role,
            num_clips=n,
            feature_shape=shape,
            sample_rate=rate,
            fingerprint=prints[role],
            overwrite=role in missing,
        )
        for role, n in clips.items()
    }


def _protocol(head, head_args: ProbeHeadArguments, caches, data_args, cache_args, training: dict) -> str:
    layers = caches["train"].meta["layer_indices"]
    pooling = (
        f", tokens averaged in groups of {cache_args.token_pooling}" if cache_args.token_pooling > 1 else ""
    )
    centred = (
        "; tokens centred on the train split's mean token at each position"
        if head.position_means is not None
        else ""
    )
    clips = f"{len(caches['train'])} {data_args.train_split} clips"
    if head_args.fit_optimizer() == "lbfgs":
        chosen = " chosen by 3-fold cross-validation on the train clips" if training["C_scores"] else ""
        regression = f"L-BFGS logistic regression, C={training['C']:g}{chosen}"
        fit = f"head fitted to its optimum ({regression}) on {clips}"
    else:
        fit = f"head trained {head_args.epochs} epochs on {clips}"
    return f"{head.description}; frozen encoder, hidden states {layers}{pooling}{centred}; {fit}"


#: probe.py's own help for the shared data options it reads otherwise than training does, or not at all
_PROBE_HELP = {
    "test_split": "split the probe is scored on (required: probing cannot skip it)",
    "eval_split": "not used by probe.py, which scores on --test_split only",
    "max_duration": "not used by probe.py (the cache holds fixed-length clips of --clip_seconds)",
    "num_buckets": "not used by probe.py (see --max_duration)",
    "bucket_buffer_duration": "not used by probe.py (see --max_duration)",
}


def _parser() -> RecipeArgumentParser:
    parser = RecipeArgumentParser(
        (EncoderArguments, CacheArguments, ProbeHeadArguments, DataArguments, RunArguments)
    )
    for action in parser._actions:
        if action.dest in _PROBE_HELP:
            action.help = _PROBE_HELP[action.dest]
    return parser


def _check_arguments(parser, cache_args: CacheArguments, data_args: DataArguments) -> None:
    """Refuses, as argparse refuses a bad option (usage, one line, exit status 2), what probe.py cannot do."""
    if not cache_args.cache_budget_gb > 0:
        parser.error(f"--cache_budget_gb must be positive, got {cache_args.cache_budget_gb:g}")
    if data_args.eval_split != AUTO_EVAL_SPLIT:
        parser.error("probe.py evaluates on --test_split only; --eval_split is not used: leave it out")
    if data_args.max_duration is not None or data_args.bucket_buffer_duration is not None:
        parser.error(
            "probe.py caches fixed-length clips of --clip_seconds; --max_duration and "
            "--bucket_buffer_duration are not used: leave them out"
        )
    if not data_args.test_split or data_args.test_split.lower() == "none":
        parser.error("probing scores the head on a test split, which cannot be skipped: set --test_split")


def main(argv: list[str] | None = None) -> dict:
    parser = _parser()
    encoder_args, cache_args, head_args, data_args, run_args = parser.parse_args_into_dataclasses(args=argv)
    _check_arguments(parser, cache_args, data_args)
    try:
        return _run(encoder_args, cache_args, head_args, data_args, run_args)
    except CacheBudgetError as err:
        # The user's sizing, not a fault: one line with what fits, as argparse reports a bad option.
        raise SystemExit(f"{parser.prog}: error: {err}") from None


def _run(encoder_args, cache_args, head_args, data_args, run_args) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if head_args.problem_type not in ("multi_label_classification", "single_label_classification"):
        raise ValueError(
            "--problem_type must be multi_label_classification or single_label_classification, got "
            f"{head_args.problem_type!r}"
        )
    state = start_processes(cpu=run_args.cpu)
    if state.num_processes > 1:
        raise ValueError("the probe recipe runs in one process: start it with python or a 1-process launch")
    set_seed(head_args.seed)
    encoder = _encoder(encoder_args, cache_args, state.device)
    if run_args.push_to_hub and encoder.kind != "hf_audiorep":
        raise ValueError(
            "--push_to_hub publishes encoders of this library only (the card and remote code are its)"
        )
    if data_args.clip_seconds is None and getattr(encoder.feature_extractor, "target_length", None):
        data_args.resolve_clip_seconds(model_clip_seconds(encoder.feature_extractor))  # the encoder's window
    data_args.resolve_clip_seconds()
    if cache_args.layers is None:
        _default_layers(encoder, data_args, cache_args)
    sources = load_sources(data_args, roles=("train", "test"))
    if head_args.problem_type == "single_label_classification":
        for source in sources.values():
            check_one_label_per_clip(source)  # multi-hot targets would pass the softmax unnoticed
    if "test" not in sources:
        raise ValueError(
            f"probing scores the head on a test split, and {data_args.test_split!r} gave none: "
            "set --test_split"
        )
    output_dir = Path(run_args.output_dir)
    cache_dir = Path(cache_args.cache_dir) if cache_args.cache_dir else output_dir / "feature_cache"
    caches = _caches(
        encoder, sources, data_args, cache_args, encoder_args.encoder_batch_size, head_args.seed, cache_dir
    )

    train_cache, test_cache = caches["train"], caches["test"]
    set_seed(head_args.seed)
    head = build_probe(
        head_args.probe,
        train_cache.num_layers,
        train_cache.hidden_size,
        train_cache.num_labels,
        **head_args.head_options(),
    )
    multi_label = head_args.problem_type == "multi_label_classification"
    training = train_probe(
        head,
        train_cache,
        center_positions=head_args.centring(),
        epochs=head_args.epochs,
        batch_size=head_args.probe_batch_size,
        learning_rate=head_args.learning_rate,
        weight_decay=head_args.weight_decay,
        multi_label=multi_label,
        seed=head_args.seed,
        device=state.device,
        optimizer=head_args.fit_optimizer(),
        C=head_args.lbfgs_C,
    )
    test = evaluate_probe(head, test_cache, multi_label, head_args.probe_batch_size, state.device)

    label_names = list(sources["train"].label_names)
    layer_names = train_cache.meta["layer_names"]
    build = train_cache.meta["encoder_seconds"] + test_cache.meta["encoder_seconds"]
    encoded = len(train_cache) + len(test_cache)
    dataset = data_args.dataset + (f"/{data_args.dataset_config}" if data_args.dataset_config else "")
    results = {
        **test,
        "metric_name": f"{PROBE_NAMES[head.name]} mAP",
        "probe": head.name,
        "protocol": _protocol(head, head_args, caches, data_args, cache_args, training),
        "dataset": dataset,
        "split": data_args.test_split,
        "encoder": encoder_args.model_name_or_path or f"random:{encoder_args.preset}",
        "layers": train_cache.meta["layer_indices"],
        "token_pooling": cache_args.token_pooling,
        "center_positions": head_args.center_positions,
        "optimizer": head_args.fit_optimizer(),
        "lbfgs_C": training.get("C"),  # None: AdamW
        "lbfgs_C_cv_mAP": training.get("C_scores"),  # None unless chosen by cross-validation
        "standardized": getattr(head, "standardize", None),  # None: a prototype head, which never does
        "centred": training["centred"],
        "position_share": training["position_share"],
        "cache_dir": str(cache_dir),
        "cache_bytes": train_cache.nbytes + test_cache.nbytes,
        "encoder_seconds": build,
        "encoder_clips_per_second": encoded / max(build, 1e-9),
        "probe_train_seconds": training["seconds"],
        "probe_steps": training["steps"],
        "num_train_clips": len(train_cache),
        "train_loss": [row["loss"] for row in training["history"]],
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    report = layer_weights_report(head, layer_names, label_names)
    if report is not None:
        write_layer_weights(report, output_dir, f"{head.name} layer weights ({results['encoder']})")
    elif remove_layer_weights(output_dir):
        logger.info(
            "removed the layer weights of an earlier run from %s (--probe %s has none)", output_dir, head.name
        )
    save_probe_head(
        head,
        output_dir,
        layers=results["layers"],
        layer_names=layer_names,
        token_pooling=cache_args.token_pooling,  # the head reads pooled tokens: a reload must pool the same
        id2label=label_names,
    )
    write_json_atomic(output_dir / "eval_results.json", results)
    accuracy = f", accuracy {results['test_accuracy']:.4f}" if "test_accuracy" in results else ""
    logger.info(
        "%s: test mAP %.4f%s on %d clips; cache %.2f GB, encoder %.1f s (%.1f clips/s), probe %.1f s",
        head.name,
        results["test_mAP"],
        accuracy,
        results["test_num_clips"],
        results["cache_bytes"] / GB,
        build,
        results["encoder_clips_per_second"],
        training["seconds"],
    )
    if run_args.push_to_hub:
        # The card is the encoder's: its weights and front end beside the probe's eval_results.json.
        encoder.model.save_pretrained(output_dir)
        encoder.feature_extractor.save_pretrained(output_dir)
        push_run(run_args.hub)
    return results


if __name__ == "__main__":
    run_recipe(main)
