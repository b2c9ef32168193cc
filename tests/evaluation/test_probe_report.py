"""What a pre-training run leaves and prints about its probe: the initialisation beside the result."""

import json

from PIL import Image

from hf_audiorep.evaluation import (
    PROBE_PLOT_NAME,
    ProbeArguments,
    plot_curves,
    probe_report,
    write_probe_results,
)


def test_results_report_the_initialisation_the_curve_and_the_final_probe(tmp_path):
    history = [
        {"step": 0, "probe_mAP": 0.18},
        {"step": 50, "probe_mAP": 0.22},
        {"step": 100, "probe_mAP": 0.31},
    ]
    summary = {"probe_mAP": 0.31, "train_loss": 1.0}
    results = write_probe_results(tmp_path, ProbeArguments(), summary, history)
    assert results["probe_mAP_initialization"] == 0.18
    assert json.loads((tmp_path / "eval_results.json").read_text()) == results
    # The legend under the plot: a row for the curve, one for the initialisation.
    assert Image.open(tmp_path / PROBE_PLOT_NAME).size == (720, 440 + 2 * 16 + 8)

    report = probe_report(results, tmp_path)
    lines = report.splitlines()
    assert any("initialisation (step 0)" in line and "0.1800" in line for line in lines)
    assert any("step 50" in line and "0.2200" in line for line in lines)
    assert any("final" in line and "0.3100" in line and "+0.1300" in line for line in lines)
    assert str(tmp_path / "eval_results.json") in report and str(tmp_path / PROBE_PLOT_NAME) in report


def test_without_an_initial_probe_there_is_no_baseline_to_claim(tmp_path):
    results = write_probe_results(
        tmp_path, ProbeArguments(), {"probe_mAP": 0.3}, [{"step": 100, "probe_mAP": 0.3}]
    )
    assert "probe_mAP_initialization" not in results
    assert not (tmp_path / PROBE_PLOT_NAME).exists(), "one point is not a curve"
    report = probe_report(results, tmp_path)
    assert "initialisation" not in report and "0.3000" in report


def test_plot_draws_curves_and_baselines(tmp_path):
    path = plot_curves(
        {"a": [(0, 0.1), (10, 0.2)], "b": [(0, 0.15), (10, 0.12)]},
        tmp_path / "p.png",
        "title",
        baselines={"init": 0.1},
    )
    pixels = Image.open(path).convert("RGB").getcolors(1 << 20)
    assert len(pixels) > 3, "more than a blank frame"
