"""A linear probe of the frozen encoder as the evaluation of a self-supervised pre-training run.

Pre-training losses (reconstruction, bootstrap regression) do not say whether the representation is any
good; the field's measure is a linear classifier on frozen embeddings. Both pre-training recipes take
`ProbeArguments` and run `build_linear_probe`'s evaluator at every eval and at the end, then write
`eval_results.json` with `write_probe_results`, which the Hub card reports as a linear-probe mAP.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.arguments import EMBEDDED, DataArguments, StreamFactory, load_sources
from ..training.checkpoint import write_json_atomic
from .linear_probe import AUTO_C, linear_probe_encoder, parse_C
from .plot import plot_curves

logger = logging.getLogger(__name__)

#: the probe-mAP-vs-step plot a pre-training run leaves in its output directory
PROBE_PLOT_NAME = "probe_curve.png"
#: the trivial baselines `build_linear_probe`'s evaluator reports beside the encoder's probe (see
#: `linear_probe_encoder`), with the names a report gives them
BASELINES = {
    "probe_mAP_chance": "chance (a constant score)",
    "probe_mAP_input_statistics": "input features' mean and std (no encoder)",
}


@dataclass
class ProbeArguments:
    probe_dataset: str | None = EMBEDDED
    """labelled dataset of the linear probe run at every eval and at the end ('' to skip the probe)"""
    probe_dataset_config: str | None = None
    """Hub config of --probe_dataset"""
    probe_train_split: str = "train"
    """split the probe is fitted on"""
    probe_test_split: str = "test"
    """split the probe is scored on"""
    probe_train_clips: int = 800
    """clips the probe is fitted on (the first N of --probe_train_split)"""
    probe_test_clips: int | None = None
    """clips the probe is scored on (default: the whole --probe_test_split)"""
    probe_C: str = "1"
    """the probe's inverse L2 strength (logistic regression's C), or 'auto': chosen by 3-fold
    cross-validation on the probe's train clips, what a comparison of different encoders wants"""

    def __post_init__(self) -> None:
        self.probe_C = parse_C(self.probe_C, "--probe_C")
        if self.probe_train_clips < 1:
            raise ValueError(f"--probe_train_clips must be >= 1, got {self.probe_train_clips}")
        if self.probe_test_clips is not None and self.probe_test_clips < 1:
            raise ValueError(f"--probe_test_clips must be >= 1 or unset, got {self.probe_test_clips}")

    def describe(self) -> dict[str, str]:
        """Where and how the probe was measured, for eval_results.json and the model card."""
        config = f"/{self.probe_dataset_config}" if self.probe_dataset_config else ""
        penalty = (
            "C by 3-fold cross-validation on the train clips"
            if self.probe_C == AUTO_C
            else f"C={self.probe_C:g}"
        )
        return {
            "dataset": f"{self.probe_dataset}{config}",
            "split": self.probe_test_split,
            "protocol": f"linear probe (logistic regression, {penalty}) on {self.probe_train_clips} "
            f"{self.probe_train_split} clips, frozen encoder",
        }


def probe_batches(
    probe_args: ProbeArguments, data_args: DataArguments, train_args, sample_rate: int, state
) -> Callable[[str, int | None], Iterable[dict]]:
    """``clips(role, limit)``: the probe's evaluation batches of split ``role`` ("train" or "test"), enough
    of them for ``limit`` clips (all when None), unsharded and in a fixed order."""
    probe_data = dataclasses.replace(
        data_args,
        dataset=probe_args.probe_dataset,
        dataset_config=probe_args.probe_dataset_config,
        train_split=probe_args.probe_train_split,
        eval_split=None,
        test_split=probe_args.probe_test_split,
        num_labeled_clips=None,
        unlabeled_dataset=None,
        label_column=None if probe_args.probe_dataset != data_args.dataset else data_args.label_column,
        # The probe reads the labelled corpus at its default size unless the run asked for another.
        streaming=data_args.streaming and probe_args.probe_dataset != EMBEDDED,
    )
    sources = load_sources(probe_data, roles=("train", "test"))
    stream = StreamFactory.for_process(sources, probe_data, train_args, sample_rate, state)
    batch_size = train_args.per_device_batch_size

    def clips(role: str, limit: int | None):
        batches = stream(role, train=False, sharded=False)
        return batches if limit is None else itertools.islice(batches, -(-limit // batch_size))

    return clips


def build_linear_probe(
    probe_args: ProbeArguments, data_args: DataArguments, train_args, sample_rate: int, state
) -> Callable | None:
    """``evaluate(model, feature_extractor) -> {"probe_mAP", ...}`` on ``model.base_model``, or None when
    ``--probe_dataset ''`` turns the probe off.

    Every process fits the same probe on the whole (unsharded) probe splits: the result is identical on all
    ranks without a gather, at the price of redundant work on multi-GPU runs.
    """
    if not probe_args.probe_dataset:
        return None
    clips = probe_batches(probe_args, data_args, train_args, sample_rate, state)
    baselines: dict[str, float] = {}  # measured once, at the run's first evaluation: no encoder in them

    def evaluate(model, feature_extractor) -> dict:
        result = linear_probe_encoder(
            model.base_model,
            clips("train", probe_args.probe_train_clips),
            clips("test", probe_args.probe_test_clips),
            feature_extractor,
            C=probe_args.probe_C,
            baselines=not baselines,
        )
        baselines.update({key: result[key] for key in BASELINES if key in result})
        return {**result, **baselines}

    return evaluate


def write_probe_results(
    output_dir: str | Path, probe_args: ProbeArguments, summary: Mapping, eval_history: Sequence[Mapping]
) -> dict:
    """Writes ``eval_results.json``: the final probe metrics of ``summary``, where and how they were measured,
    and the history of every evaluation of the run. Returns what was written."""
    final = {k: v for k, v in summary.items() if k.startswith("probe_")}
    results = {**final, **probe_args.describe(), "eval_history": list(eval_history)}
    initial = next((row for row in eval_history if row.get("step") == 0 and "probe_mAP" in row), None)
    if initial is not None:
        # The run's own baseline: the same encoder, probed the same way, before any training.
        results["probe_mAP_initialization"] = initial["probe_mAP"]
    write_json_atomic(Path(output_dir, "eval_results.json"), results)
    curve = [(int(row["step"]), float(row["probe_mAP"])) for row in eval_history if "probe_mAP" in row]
    if len(curve) > 1:
        lines = {name: results[key] for key, name in BASELINES.items() if key in results}
        if initial is not None:
            lines["initialisation"] = initial["probe_mAP"]
        plot_curves(
            {"this run": curve},
            Path(output_dir, PROBE_PLOT_NAME),
            f"linear-probe mAP on {results['dataset']} ({results['split']})",
            baselines=lines or None,
        )
    logger.info("linear probe: %s", json.dumps(final))
    return results


def probe_report(results: Mapping, output_dir: str | Path) -> str:
    """The few lines a pre-training run ends with: the trivial baselines, the probe of the initialisation
    and of the trained encoder side by side, and where the numbers, the curve and the model are."""
    rows = [("step", "probe mAP")]
    rows += [(name, f"{results[key]:.4f}") for key, name in BASELINES.items() if key in results]
    initial = results.get("probe_mAP_initialization")
    if initial is not None:
        rows.append(("initialisation (step 0)", f"{initial:.4f}"))
    history = [row for row in results["eval_history"] if "probe_mAP" in row]
    rows += [(f"step {row['step']}", f"{row['probe_mAP']:.4f}") for row in history[:-1] if row["step"] != 0]
    if "probe_mAP" in results:
        final = results["probe_mAP"]
        changes = [] if initial is None else [f"{final - initial:+.4f} over the initialisation"]
        if "probe_mAP_input_statistics" in results:
            changes.append(f"{final - results['probe_mAP_input_statistics']:+.4f} over the input statistics")
        rows.append(("this run (final)", f"{final:.4f}" + (f"  ({', '.join(changes)})" if changes else "")))
    width = max(len(name) for name, _ in rows)
    lines = [f"linear probe on {results['dataset']} ({results['split']}): {results['protocol']}"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    output_dir = Path(output_dir)
    lines.append(f"numbers: {output_dir / 'eval_results.json'}")
    if (output_dir / PROBE_PLOT_NAME).exists():
        lines.append(f"curve:   {output_dir / PROBE_PLOT_NAME}")
    lines.append(f"model:   {output_dir} (AutoModel.from_pretrained gives the encoder)")
    return "\n".join(lines)
