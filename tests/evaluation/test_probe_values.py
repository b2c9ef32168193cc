"""Value tests of `hf_audiorep/evaluation/probe.py`, the pre-training recipes' linear probe: which data
arguments the probe reads (split per role, labels, streaming), how many batches each role gives for a clip
limit, what the evaluator hands to `linear_probe_encoder`, and the exact `eval_results.json`, plot call and
report text. The corpus loading, the stream and the probe itself are replaced by recorders, so every test
runs in milliseconds; the expected values are written out by hand."""

from __future__ import annotations

import importlib
import json
import logging
from types import SimpleNamespace

import pytest

from hf_audiorep.data.arguments import EMBEDDED, DataArguments
from hf_audiorep.evaluation import PROBE_PLOT_NAME, ProbeArguments, probe_report, write_probe_results

probe = importlib.import_module("hf_audiorep.evaluation.probe")

NUM_BATCHES = 10  # batches every fake stream holds


class _Recorder:
    """Stands in for `load_sources` and `StreamFactory`: records what the probe asks for; each stream is
    NUM_BATCHES batches tagged with their role and index."""

    def __init__(self):
        self.loaded, self.factories, self.streams = [], [], []

    def load_sources(self, data, roles=("train", "eval", "test")):
        self.loaded.append((data, roles))
        return {"sources": "of " + data.dataset}

    def for_process(self, sources, data, training_args, sample_rate, state):
        self.factories.append((sources, data, training_args, sample_rate, state))

        def stream(role, train, batch_size=None, *, sharded=True):
            self.streams.append((role, train, batch_size, sharded))
            return iter([{"role": role, "batch": i} for i in range(NUM_BATCHES)])

        return stream


@pytest.fixture
def recorder(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(probe, "load_sources", rec.load_sources)
    monkeypatch.setattr(probe, "StreamFactory", SimpleNamespace(for_process=rec.for_process))
    return rec


TRAIN_ARGS = SimpleNamespace(per_device_batch_size=4, seed=7)
STATE = SimpleNamespace(process_index=1, num_processes=2)


def _run_data(**overrides) -> DataArguments:
    """A pre-training run's data arguments: every field the probe must override set to something else."""
    fields = dict(
        dataset="org/pretraining-audio",
        dataset_config="unbalanced",
        train_split="unbalanced_train",
        eval_split="validation",
        test_split="run_test",
        label_column="tags",
        streaming=True,
        clip_seconds=1.5,
        num_labeled_clips=100,
        unlabeled_dataset="train_remainder",
        shuffle_buffer=33,
        num_decode_threads=2,
    )
    fields.update(overrides)
    return DataArguments(**fields)


# --- ProbeArguments ---------------------------------------------------------------------------------------


def test_probe_argument_defaults_fit_on_train_and_score_on_the_whole_test_split():
    args = ProbeArguments()
    assert (args.probe_dataset, args.probe_dataset_config) == (EMBEDDED, None)
    assert (args.probe_train_split, args.probe_test_split) == ("train", "test")
    assert (args.probe_train_clips, args.probe_test_clips) == (800, None)


def test_clip_limits_of_one_are_accepted_and_of_zero_refused():
    args = ProbeArguments(probe_train_clips=1, probe_test_clips=1)
    assert (args.probe_train_clips, args.probe_test_clips) == (1, 1)
    assert ProbeArguments(probe_test_clips=None).probe_test_clips is None
    with pytest.raises(ValueError, match=r"--probe_train_clips must be >= 1, got 0"):
        ProbeArguments(probe_train_clips=0)
    with pytest.raises(ValueError, match=r"--probe_test_clips must be >= 1 or unset, got 0"):
        ProbeArguments(probe_test_clips=0)
    with pytest.raises(ValueError, match=r"--probe_train_clips must be >= 1, got -3"):
        ProbeArguments(probe_train_clips=-3, probe_test_clips=5)


def test_describe_names_the_dataset_config_test_split_and_protocol():
    args = ProbeArguments(
        probe_dataset="org/labelled",
        probe_dataset_config="balanced",
        probe_train_split="balanced_train",
        probe_test_split="eval",
        probe_train_clips=250,
    )
    assert args.describe() == {
        "dataset": "org/labelled/balanced",
        "split": "eval",
        "protocol": "linear probe (logistic regression, C=1) on 250 balanced_train clips, frozen encoder",
    }
    assert ProbeArguments().describe() == {
        "dataset": "embedded",
        "split": "test",
        "protocol": "linear probe (logistic regression, C=1) on 800 train clips, frozen encoder",
    }
    assert (
        ProbeArguments(probe_C="0.01")
        .describe()["protocol"]
        .startswith("linear probe (logistic regression, C=0.01) on 800")
    )
    assert (
        ProbeArguments(probe_C="auto")
        .describe()["protocol"]
        .startswith(
            "linear probe (logistic regression, C by 3-fold cross-validation on the train clips) on 800"
        )
    )


@pytest.mark.parametrize("given", ["0", "-2", "many"])
def test_a_probe_C_that_is_not_a_positive_number_or_auto_is_refused(given):
    with pytest.raises(ValueError, match=f"--probe_C must be a positive number or 'auto', got '{given}'"):
        ProbeArguments(probe_C=given)


# --- probe_batches: which data, which split per role, how many batches ------------------------------------


def test_probe_data_reads_the_probe_dataset_splits_unlabelled_options_off(recorder):
    probe_args = ProbeArguments(
        probe_dataset="org/labelled",
        probe_dataset_config="balanced",
        probe_train_split="balanced_train",
        probe_test_split="eval",
    )
    data = _run_data()
    probe.probe_batches(probe_args, data, TRAIN_ARGS, 16000, STATE)
    expected = DataArguments(
        dataset="org/labelled",
        dataset_config="balanced",
        train_split="balanced_train",
        eval_split=None,
        test_split="eval",
        label_column=None,  # another dataset: its label column is detected, not the run's
        streaming=True,  # a Hub dataset: the run's streaming choice holds
        clip_seconds=1.5,
        num_labeled_clips=None,  # the probe is fitted on labelled clips
        unlabeled_dataset=None,
        shuffle_buffer=33,
        num_decode_threads=2,
    )
    assert len(recorder.loaded) == 1
    seen, roles = recorder.loaded[0]
    assert seen == expected
    assert roles == ("train", "test")
    assert data == _run_data(), "the run's own data arguments are left alone"
    (factory,) = recorder.factories
    assert factory[0] == {"sources": "of org/labelled"}
    assert factory[1] == expected
    assert factory[2] is TRAIN_ARGS and factory[3] == 16000 and factory[4] is STATE


def test_probe_on_the_run_dataset_keeps_its_label_column(recorder):
    probe_args = ProbeArguments(probe_dataset="org/pretraining-audio")
    probe.probe_batches(probe_args, _run_data(), TRAIN_ARGS, 16000, STATE)
    seen = recorder.loaded[0][0]
    assert seen.label_column == "tags"
    assert seen.streaming is True


def test_the_embedded_probe_corpus_is_never_streamed(recorder):
    probe.probe_batches(ProbeArguments(), _run_data(streaming=True), TRAIN_ARGS, 16000, STATE)
    assert recorder.loaded[0][0].streaming is False
    assert recorder.loaded[0][0].dataset == EMBEDDED


def test_a_run_that_does_not_stream_does_not_stream_its_probe(recorder):
    probe_args = ProbeArguments(probe_dataset="org/labelled")
    probe.probe_batches(probe_args, _run_data(streaming=False), TRAIN_ARGS, 16000, STATE)
    assert recorder.loaded[0][0].streaming is False


def test_each_role_is_read_unsharded_in_evaluation_mode(recorder):
    clips = probe.probe_batches(ProbeArguments(), _run_data(), TRAIN_ARGS, 16000, STATE)
    train = list(clips("train", None))
    test = list(clips("test", None))
    assert train == [{"role": "train", "batch": i} for i in range(NUM_BATCHES)]
    assert test == [{"role": "test", "batch": i} for i in range(NUM_BATCHES)]
    # role, train mode off, the factory's batch size, every process the whole split
    assert recorder.streams == [("train", False, None, False), ("test", False, None, False)]


@pytest.mark.parametrize(
    ("limit", "batches"), [(1, 1), (3, 1), (4, 1), (5, 2), (12, 3), (13, 4), (40, 10), (100, 10)]
)
def test_a_clip_limit_gives_the_batches_that_hold_that_many_clips(recorder, limit, batches):
    """Batches of 4 clips: ceil(limit / 4) batches, the first ones, in order."""
    clips = probe.probe_batches(ProbeArguments(), _run_data(), TRAIN_ARGS, 16000, STATE)
    assert list(clips("test", limit)) == [{"role": "test", "batch": i} for i in range(batches)]


# --- build_linear_probe -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["", None])
def test_an_empty_probe_dataset_turns_the_probe_off(recorder, dataset):
    assert (
        probe.build_linear_probe(ProbeArguments(probe_dataset=dataset), _run_data(), TRAIN_ARGS, 16000, STATE)
        is None
    )
    assert recorder.loaded == [] and recorder.factories == []


@pytest.mark.parametrize(
    ("train_clips", "test_clips", "train_batches", "test_batches"), [(6, None, 2, 10), (12, 5, 3, 2)]
)
def test_the_evaluator_fits_on_train_and_scores_on_test_of_the_base_model(
    recorder, monkeypatch, train_clips, test_clips, train_batches, test_batches
):
    calls = []

    def fake_probe_encoder(model, train, test, feature_extractor, C, baselines):
        calls.append((model, list(train), list(test), feature_extractor, C))
        return {"probe_mAP": 0.5}

    monkeypatch.setattr(probe, "linear_probe_encoder", fake_probe_encoder)
    probe_args = ProbeArguments(probe_train_clips=train_clips, probe_test_clips=test_clips, probe_C="auto")
    data = _run_data()
    evaluate = probe.build_linear_probe(probe_args, data, TRAIN_ARGS, 22050, STATE)
    # the data is prepared once, when the evaluator is built
    assert len(recorder.loaded) == 1 and recorder.loaded[0][0].dataset == EMBEDDED
    assert recorder.factories[0][2:] == (TRAIN_ARGS, 22050, STATE)

    encoder, extractor = object(), object()
    model = SimpleNamespace(base_model=encoder)
    assert evaluate(model, extractor) == {"probe_mAP": 0.5}
    ((seen_model, train, test, seen_extractor, C),) = calls
    assert seen_model is encoder and seen_extractor is extractor and C == "auto"
    assert train == [{"role": "train", "batch": i} for i in range(train_batches)]
    assert test == [{"role": "test", "batch": i} for i in range(test_batches)]
    assert [(role, mode, sharded) for role, mode, _, sharded in recorder.streams] == [
        ("train", False, False),
        ("test", False, False),
    ]


def test_the_baselines_are_measured_at_the_first_evaluation_and_reported_at_every_one(recorder, monkeypatch):
    asked = []

    def fake_probe_encoder(model, train, test, feature_extractor, C, baselines):
        asked.append(baselines)
        result = {"probe_mAP": 0.1 * len(asked)}
        if baselines:
            result.update(probe_mAP_chance=0.07, probe_mAP_input_statistics=0.4)
        return result

    monkeypatch.setattr(probe, "linear_probe_encoder", fake_probe_encoder)
    evaluate = probe.build_linear_probe(ProbeArguments(), _run_data(), TRAIN_ARGS, 16000, STATE)
    model = SimpleNamespace(base_model=object())
    results = [evaluate(model, object()) for _ in range(3)]
    assert asked == [True, False, False], "no encoder in them: measured once"
    assert results == [
        {"probe_mAP": pytest.approx(0.1 * n), "probe_mAP_chance": 0.07, "probe_mAP_input_statistics": 0.4}
        for n in (1, 2, 3)
    ]


# --- write_probe_results ----------------------------------------------------------------------------------


@pytest.fixture
def plots(monkeypatch):
    calls = []

    def fake_plot(curves, path, title, baselines=None):
        calls.append({"curves": curves, "path": path, "title": title, "baselines": baselines})
        return path

    monkeypatch.setattr(probe, "plot_curves", fake_plot)
    return calls


def test_results_keep_the_probe_metrics_the_description_and_the_history(tmp_path, plots, caplog):
    history = [
        {"step": 0, "probe_mAP": 0.125},
        {"step": 25, "eval_loss": 2.5},
        {"step": 50.0, "probe_mAP": 0.25, "eval_loss": 2.0},
        {"step": 100, "probe_mAP": 0.5},
    ]
    summary = {"probe_mAP": 0.5, "probe_mAUC": 0.75, "train_loss": 1.0, "eval_probe_mAP": 0.1, "step": 100}
    args = ProbeArguments(probe_dataset="org/labelled", probe_test_split="eval", probe_train_clips=10)
    with caplog.at_level(logging.INFO, logger=probe.__name__):
        results = write_probe_results(str(tmp_path), args, summary, history)
    expected = {
        "probe_mAP": 0.5,
        "probe_mAUC": 0.75,
        "dataset": "org/labelled",
        "split": "eval",
        "protocol": "linear probe (logistic regression, C=1) on 10 train clips, frozen encoder",
        "eval_history": history,
        "probe_mAP_initialization": 0.125,
    }
    assert results == expected
    assert json.loads((tmp_path / "eval_results.json").read_text()) == expected
    assert plots == [
        {
            "curves": {"this run": [(0, 0.125), (50, 0.25), (100, 0.5)]},
            "path": tmp_path / PROBE_PLOT_NAME,
            "title": "linear-probe mAP on org/labelled (eval)",
            "baselines": {"initialisation": 0.125},
        }
    ]
    assert all(type(step) is int for step, _ in plots[0]["curves"]["this run"])
    assert [r.getMessage() for r in caplog.records] == [
        'linear probe: {"probe_mAP": 0.5, "probe_mAUC": 0.75}'
    ]


def test_the_initialisation_is_the_step_zero_row_that_has_a_probe(tmp_path, plots):
    history = [
        {"step": 0, "eval_loss": 3.0},  # an evaluation at step 0 without a probe
        {"step": 0, "probe_mAP": 0.2},
        {"step": 10, "probe_mAP": 0.3},
    ]
    results = write_probe_results(tmp_path, ProbeArguments(), {"probe_mAP": 0.3}, history)
    assert results["probe_mAP_initialization"] == 0.2
    assert plots[0]["baselines"] == {"initialisation": 0.2}
    assert plots[0]["curves"] == {"this run": [(0, 0.2), (10, 0.3)]}


def test_without_a_step_zero_probe_there_is_no_baseline(tmp_path, plots):
    history = [{"step": 0, "eval_loss": 3.0}, {"step": 1, "probe_mAP": 0.2}, {"step": 10, "probe_mAP": 0.3}]
    results = write_probe_results(tmp_path, ProbeArguments(), {"probe_mAP": 0.3}, history)
    assert "probe_mAP_initialization" not in results
    assert plots == [
        {
            "curves": {"this run": [(1, 0.2), (10, 0.3)]},
            "path": tmp_path / PROBE_PLOT_NAME,
            "title": "linear-probe mAP on embedded (test)",
            "baselines": None,
        }
    ]


def test_the_trivial_baselines_are_kept_and_drawn_beside_the_initialisation(tmp_path, plots):
    row = {"probe_mAP_chance": 0.07, "probe_mAP_input_statistics": 0.4}
    history = [{"step": 0, "probe_mAP": 0.2, **row}, {"step": 10, "probe_mAP": 0.3, **row}]
    results = write_probe_results(tmp_path, ProbeArguments(), {"probe_mAP": 0.3, **row}, history)
    assert results["probe_mAP_chance"] == 0.07 and results["probe_mAP_input_statistics"] == 0.4
    assert plots[0]["baselines"] == {
        "chance (a constant score)": 0.07,
        "input features' mean and std (no encoder)": 0.4,
        "initialisation": 0.2,
    }


def test_two_probes_make_a_curve_and_one_does_not(tmp_path, plots):
    write_probe_results(tmp_path, ProbeArguments(), {}, [{"step": 5, "probe_mAP": 0.4}, {"step": 9}])
    assert plots == []
    write_probe_results(
        tmp_path, ProbeArguments(), {}, [{"step": 5, "probe_mAP": 0.4}, {"step": 9, "probe_mAP": 0.5}]
    )
    assert len(plots) == 1 and plots[0]["curves"] == {"this run": [(5, 0.4), (9, 0.5)]}


# --- probe_report -----------------------------------------------------------------------------------------


HEADER = (
    "linear probe on embedded (test): linear probe (logistic regression) on 800 train clips, frozen encoder"
)


def _results(**overrides):
    results = {
        "dataset": "embedded",
        "split": "test",
        "protocol": "linear probe (logistic regression) on 800 train clips, frozen encoder",
        "eval_history": [
            {"step": 0, "probe_mAP": 0.18},
            {"step": 20, "eval_loss": 1.0},
            {"step": 50, "probe_mAP": 0.22},
            {"step": 75, "probe_mAP": 0.255},
            {"step": 100, "probe_mAP": 0.31},
        ],
        "probe_mAP": 0.31,
        "probe_mAP_initialization": 0.18,
    }
    results.update(overrides)
    return results


def test_report_text_with_the_initialisation_every_probe_and_the_curve(tmp_path):
    (tmp_path / PROBE_PLOT_NAME).write_bytes(b"png")
    assert probe_report(_results(), tmp_path) == "\n".join(
        [
            HEADER,
            "  step                     probe mAP",
            "  initialisation (step 0)  0.1800",
            "  step 50                  0.2200",
            "  step 75                  0.2550",
            "  this run (final)         0.3100  (+0.1300 over the initialisation)",
            f"numbers: {tmp_path}/eval_results.json",
            f"curve:   {tmp_path}/{PROBE_PLOT_NAME}",
            f"model:   {tmp_path} (AutoModel.from_pretrained gives the encoder)",
        ]
    )


def test_report_text_with_the_trivial_baselines(tmp_path):
    results = _results(probe_mAP_chance=0.0731, probe_mAP_input_statistics=0.41)
    assert probe_report(results, tmp_path).splitlines()[1:8] == [
        "  step                                       probe mAP",
        "  chance (a constant score)                  0.0731",
        "  input features' mean and std (no encoder)  0.4100",
        "  initialisation (step 0)                    0.1800",
        "  step 50                                    0.2200",
        "  step 75                                    0.2550",
        "  this run (final)                           0.3100  (+0.1300 over the initialisation, "
        "-0.1000 over the input statistics)",
    ]


def test_report_text_without_an_initialisation_or_a_curve(tmp_path):
    results = _results(
        eval_history=[{"step": 40, "probe_mAP": 0.5}, {"step": 80, "probe_mAP": 0.45}], probe_mAP=0.45
    )
    del results["probe_mAP_initialization"]
    assert probe_report(results, str(tmp_path)) == "\n".join(
        [
            HEADER,
            "  step              probe mAP",
            "  step 40           0.5000",
            "  this run (final)  0.4500",
            f"numbers: {tmp_path}/eval_results.json",
            f"model:   {tmp_path} (AutoModel.from_pretrained gives the encoder)",
        ]
    )


def test_report_shows_a_fall_below_the_initialisation_and_no_final_row_without_a_final_probe(tmp_path):
    worse = probe_report(_results(eval_history=[{"step": 0, "probe_mAP": 0.18}], probe_mAP=0.13), tmp_path)
    assert worse.splitlines()[1:4] == [
        "  step                     probe mAP",
        "  initialisation (step 0)  0.1800",
        "  this run (final)         0.1300  (-0.0500 over the initialisation)",
    ]
    results = _results(eval_history=[{"step": 0, "probe_mAP": 0.18}, {"step": 30, "probe_mAP": 0.2}])
    del results["probe_mAP"]
    assert probe_report(results, tmp_path).splitlines()[1:4] == [
        "  step                     probe mAP",
        "  initialisation (step 0)  0.1800",
        f"numbers: {tmp_path}/eval_results.json",
    ]
