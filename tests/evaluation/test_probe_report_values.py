"""Value tests of the probe pictures and the probed encoder: `evaluation/probing/report.py` (the layer-weight
report: its JSON numbers and what its bar chart / heat map draw), `evaluation/plot.py` (the probe curve: where
each point, curve, baseline and tick lands) and `evaluation/probing/probed_encoder.py` (features rounded as
the cache stores them, handed to the head). Drawing is checked through the calls made on Pillow's
``ImageDraw`` (recorded, then passed on), not through pixels; expected coordinates are written out from each
function's documented layout. Fake heads and encoders keep every test in milliseconds."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from hf_audiorep.evaluation.probing.encoder import LayerFeatureEncoder

report = importlib.import_module("hf_audiorep.evaluation.probing.report")
plot = importlib.import_module("hf_audiorep.evaluation.plot")
probed_encoder = importlib.import_module("hf_audiorep.evaluation.probing.probed_encoder")

BLUE, RED, GREEN = "#1f77b4", "#d62728", "#2ca02c"


class _Draw:
    """Records every call made on an ``ImageDraw.Draw`` and passes it on."""

    def __init__(self, draw, calls):
        self._draw, self._calls = draw, calls

    def __getattr__(self, name):
        method = getattr(self._draw, name)

        def record(*args, **kwargs):
            self._calls.append((name, args, kwargs))
            return method(*args, **kwargs)

        return record


@pytest.fixture
def drawn(monkeypatch):
    calls = []
    real = ImageDraw.Draw
    monkeypatch.setattr(ImageDraw, "Draw", lambda image, *a, **k: _Draw(real(image, *a, **k), calls))
    return calls


def _flat(xy):
    out = []
    for item in xy:
        out.extend(item if isinstance(item, tuple) else [item])
    return [float(v) for v in out]


def _of(calls, kind, **match):
    """(coordinates, kwargs) of the recorded ``kind`` calls whose kwargs hold ``match``."""
    found = [(args, kwargs) for name, args, kwargs in calls if name == kind]
    return [
        (_flat(args[0]) if kind != "text" else (list(args[0]), args[1]), kwargs)
        for args, kwargs in found
        if all(kwargs.get(k) == v for k, v in match.items())
    ]


def _texts(calls):
    return {args[1]: [float(v) for v in args[0]] for name, args, _ in calls if name == "text"}


# -- report.py: the layer-weight report ------------------------------------------------------------------


class _Head:
    name = "cgp"

    def __init__(self, weights):
        self.weights = weights

    def layer_weights(self):
        return self.weights


NAMES = ["embeddings", "layer 1", "layer 2", "layer 3"]


def test_layer_weights_report_of_one_weight_per_layer():
    weights = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    result = report.layer_weights_report(_Head(weights), NAMES, ["a", "b"])
    assert result == {
        "probe": "cgp",
        "layers": NAMES,
        "granularity": "layer",
        # float32, as a head's weights are
        "weights": np.array([0.1, 0.4, 0.2, 0.3], dtype=np.float32).tolist(),
    }
    assert type(result["layers"]) is list
    assert report.layer_weights_report(_Head(None), NAMES, ["a"]) is None
    with pytest.raises(ValueError, match=r"^3 layer names for 4 layer weights$"):
        report.layer_weights_report(_Head(weights), NAMES[:3], ["a"])


def test_layer_weights_report_of_one_combination_per_class():
    table = np.array([[0.1, 0.5, 0.2], [0.2, 0.1, 0.3], [0.3, 0.3, 0.1], [0.4, 0.1, 0.4]])  # layers x classes
    head = _Head(torch.tensor(table, dtype=torch.float64))
    result = report.layer_weights_report(head, NAMES, ("dog", "cat", "rain"))
    f32 = table.astype(np.float32)
    assert result == {
        "probe": "cgp",
        "layers": NAMES,
        "granularity": "layer_class",
        "weights": {"dog": f32[:, 0].tolist(), "cat": f32[:, 1].tolist(), "rain": f32[:, 2].tolist()},
        "mean_over_classes": pytest.approx(table.mean(axis=1).tolist(), rel=1e-6),
    }
    assert list(result["weights"]) == ["dog", "cat", "rain"]
    with pytest.raises(ValueError, match=r"^2 class names for 3 classes of layer weights$"):
        report.layer_weights_report(head, NAMES, ["dog", "cat"])


def test_write_layer_weights_writes_the_json_and_plots_the_right_rows(tmp_path, monkeypatch):
    plotted = []

    def fake_plot(weights, layers, path, title, class_names=None):
        plotted.append((weights, layers, path, title, class_names))
        return path

    monkeypatch.setattr(report, "plot_layer_weights", fake_plot)
    per_layer = {"probe": "cgp", "layers": ["a", "b"], "granularity": "layer", "weights": [0.25, 0.75]}
    out = tmp_path / "new" / "dir"
    json_path, png = report.write_layer_weights(per_layer, out, "my probe")
    assert json_path == out / "layer_weights.json" and png == out / "layer_weights.png"
    assert json_path.read_text() == json.dumps(per_layer, indent=2) + "\n"
    assert plotted == [([0.25, 0.75], ["a", "b"], out / "layer_weights.png", "my probe", None)]

    per_class = {
        "probe": "cgp",
        "layers": ["a", "b"],
        "granularity": "layer_class",
        "weights": {"dog": [0.1, 0.9], "cat": [0.6, 0.4]},
        "mean_over_classes": [0.35, 0.65],
    }
    report.write_layer_weights(per_class, out, "t")
    assert json.loads(json_path.read_text()) == per_class
    assert plotted[1] == (
        [[0.1, 0.9], [0.6, 0.4]],
        ["a", "b"],
        out / "layer_weights.png",
        "t",
        ["dog", "cat"],
    )
    assert (report.LAYER_WEIGHTS_JSON, report.LAYER_WEIGHTS_PNG) == (
        "layer_weights.json",
        "layer_weights.png",
    )


def test_bar_chart_draws_each_layer_weight_to_scale(tmp_path, drawn):
    weights = [0.1, 0.4, 0.2, 0.3]
    path = report.plot_layer_weights(weights, NAMES, tmp_path / "sub" / "bars.png", "CGP weights")
    assert path == tmp_path / "sub" / "bars.png"
    with Image.open(path) as image:
        assert image.size == (480, 400)  # max(480, 80 + 36 per bar) x 400
    # Plot area 60 px in from each side: 360 x 280; the axis tops at 1.1 x the largest weight; a bar per
    # 90 px slot, 15 % of the slot empty on each side.
    top = 0.4 * 1.1
    bars = _of(drawn, "rectangle", fill=BLUE)
    assert [xy for xy, _ in bars] == [
        pytest.approx([60 + 90 * i + 13.5, 340 - 280 * w / top, 60 + 90 * (i + 1) - 13.5, 340])
        for i, w in enumerate(weights)
    ]
    texts = _texts(drawn)
    for i in range(5):
        assert texts[f"{top * i / 4:.3f}"] == pytest.approx([6, 340 - 70 * i - 6])
    for i, label in enumerate(["emb", "1", "2", "3"]):
        assert texts[label] == pytest.approx([60 + 90 * i + 13.5, 348])
    assert texts["CGP weights"] == [60, 20] and texts["hidden state"] == [200, 376]
    assert texts["layer weight"] == [6, 36]
    lines = [xy for xy, kw in _of(drawn, "line") if kw.get("fill") == "black"]
    assert lines[:2] == [[60, 340, 420, 340], [60, 60, 60, 340]]
    assert lines[2:] == [pytest.approx([56, 340 - 70 * i, 60, 340 - 70 * i]) for i in range(5)]


def test_bar_chart_of_many_or_zero_weights(tmp_path, drawn):
    names = ["embeddings", *[f"layer {i}" for i in range(1, 15)]]
    with Image.open(report.plot_layer_weights([1.0] * 15, names, tmp_path / "a.png", "t")) as image:
        assert image.size == (80 + 36 * 15, 400)
    drawn.clear()
    # All zero: an axis of 1.1e-12 instead of a division by zero; flat bars.
    report.plot_layer_weights([0.0, 0.0], ["layer 1", "layer 2"], tmp_path / "b.png", "t")
    assert [xy[1] for xy, _ in _of(drawn, "rectangle", fill=BLUE)] == [340, 340]
    assert "0.000" in _texts(drawn)


def _colour(value, high):
    share = min(1.0, max(0.0, value / high))
    return tuple(round(255 - (255 - c) * share) for c in (31, 119, 180))


def test_heat_map_colours_each_class_and_layer_by_its_weight(tmp_path, drawn):
    rows = [[0.1, 0.5, 0.2], [-0.1, 0.3, 0.25]]  # classes x layers
    names = ["embeddings", "layer 1", "layer 2"]
    classes = ["dog", "a very long class name of thirty"]
    path = report.plot_layer_weights(rows, names, tmp_path / "heat.png", "per class", class_names=classes)
    # Cells 40 x 14 px (600 // 3 layers capped at 40; 900 // 2 classes capped at 14), from x 180 and y 60.
    with Image.open(path) as image:
        assert image.size == (180 + 3 * 40 + 90, 60 + 2 * 14 + 40)
    cells = [(xy, kw["fill"]) for xy, kw in _of(drawn, "rectangle")][:6]
    expected = [
        ([180 + 40 * c, 60 + 14 * r, 180 + 40 * c + 39, 60 + 14 * r + 13], _colour(rows[r][c], 0.5))
        for r in range(2)
        for c in range(3)
    ]
    assert cells == expected
    assert cells[1][1] == (31, 119, 180) and cells[3][1] == (255, 255, 255)  # the largest; below 0: white
    scale = [(xy, kw["fill"]) for xy, kw in _of(drawn, "rectangle")][6:]
    assert scale == [
        ([320, 60 + 3 * s, 334, 60 + 3 * s + 3], _colour(0.5 * (1 - s / 39), 0.5)) for s in range(40)
    ]
    texts = _texts(drawn)
    assert texts["dog"] == [6, 60] and texts["a very long class name of th"] == [6, 74]
    assert texts["emb"] == [182, 44] and texts["1"] == [222, 44] and texts["2"] == [262, 44]
    assert texts["0.500"] == [338, 56] and texts["0"] == [338, 174]
    assert texts["per class"] == [6, 20] and texts["hidden state (columns) x class (rows)"] == [180, 104]


def test_heat_map_of_many_classes_or_zero_weights(tmp_path, drawn):
    rows = [[0.0, 0.0] for _ in range(100)]
    classes = [f"class {i}" for i in range(100)]
    path = report.plot_layer_weights(
        rows, ["layer 1", "layer 2"], tmp_path / "h.png", "t", class_names=classes
    )
    # 900 // 100 = 9 px rows: too thin for names, so a 40 px margin; all zero: the scale tops at 1.
    with Image.open(path) as image:
        assert image.size == (40 + 2 * 40 + 90, 60 + 100 * 9 + 40)
    texts = _texts(drawn)
    assert not any(name in texts for name in classes)
    assert "1.000" in texts
    first = _of(drawn, "rectangle")[0]
    assert first == ([40, 60, 79, 68], {"fill": (255, 255, 255)})
    drawn.clear()
    report.plot_layer_weights(
        [[1.0] * 70] * 2, [f"layer {i}" for i in range(70)], tmp_path / "w.png", "t", ["a", "b"]
    )
    assert _of(drawn, "rectangle")[1][0][:3] == [180 + 14, 60, 180 + 14 + 13]  # 600 // 70 = 8: at least 14 px


# -- plot.py: the probe curve ----------------------------------------------------------------------------


def _xy(step, value, max_step, low, high):
    return 60 + 600 * step / max_step, 380 - 320 * (value - low) / (high - low)


def test_plot_curves_places_points_curves_baselines_and_ticks(tmp_path, drawn):
    curves = {"cat": [(0, 0.1), (10, 0.3), (15, 0.2)], "none": [], "bat": [(0, 0.15), (20, 0.12)]}
    path = plot.plot_curves(curves, tmp_path / "deep" / "p.png", "probe", baselines={"init": 0.05})
    assert path == tmp_path / "deep" / "p.png"
    with Image.open(path) as image:
        assert image.size == (720, 440 + 3 * 16 + 8)  # the legend's three rows under the plot
    low, high = 0.05 - 0.02, 0.3 + 0.02  # every value and baseline, 0.02 beyond

    def xy(step, value):
        return _xy(step, value, 20, low, high)

    dots = _of(drawn, "ellipse")
    expected = [
        (pytest.approx([x - 3, y - 3, x + 3, y + 3]), {"fill": colour})
        for name, colour in (("cat", BLUE), ("bat", RED))
        for x, y in (xy(s, v) for s, v in curves[name])
    ]
    assert dots == expected
    assert _of(drawn, "line", width=3)[:2] == [
        (pytest.approx(_flat([xy(s, v) for s, v in curves["cat"]])), {"fill": BLUE, "width": 3}),
        (pytest.approx(_flat([xy(s, v) for s, v in curves["bat"]])), {"fill": RED, "width": 3}),
    ]
    # The baseline: dashes of 6 px every 12 px across the plot at its level, in the third colour.
    y = xy(0, 0.05)[1]
    assert _of(drawn, "line", fill=GREEN, width=2) == [
        (pytest.approx([x, y, min(x + 6, 660), y]), {"fill": GREEN, "width": 2}) for x in range(60, 660, 12)
    ]
    texts = _texts(drawn)
    for i in range(5):
        value = low + (high - low) * i / 4
        assert texts[f"{value:.3f}"] == pytest.approx([6, xy(0, value)[1] - 6])
        assert texts[str(5 * i)] == pytest.approx([60 + 150 * i - 10, 388])
    # Legend: under the plot, a row per curve then per baseline (the empty curve left out), in its colour.
    assert texts["cat"] == [85, 440] and texts["bat"] == [85, 456] and texts["init"] == [85, 472]
    assert "none" not in texts
    legend = _of(drawn, "line", width=3)[2:]
    assert legend == [
        ([60, 446 + 16 * r, 80, 446 + 16 * r], {"fill": c, "width": 3})
        for r, c in enumerate((BLUE, RED, GREEN))
    ]
    assert texts["probe"] == [60, 20] and texts["training step"] == [300, 416]
    assert texts["linear-probe mAP"] == [6, 36]
    assert _of(drawn, "rectangle") == [([60, 60, 660, 380], {"outline": "black"})]


def test_plot_curves_labels_one_point_curves_and_many_colours(tmp_path, drawn):
    # A curve of one point at step 0: a dot, no line, and the step axis runs to 1, not 0.
    plot.plot_curves({"a": [(0, 0.5)]}, tmp_path / "p.png", "t", xlabel="epoch", ylabel="acc")
    assert _of(drawn, "line", width=3) == [([60, 446, 80, 446], {"fill": BLUE, "width": 3})]  # the legend's
    assert _of(drawn, "ellipse") == [
        (pytest.approx([57, 377 - 320 * 0.5, 63, 383 - 320 * 0.5]), {"fill": BLUE})
    ]
    texts = _texts(drawn)
    assert texts["epoch"] == [300, 416] and texts["acc"] == [6, 36]
    assert [t for t in texts if t.isdigit()] == ["0", "1"]
    # Ticks at round(1 * i / 4) = 0, 0, 0, 1, 1: the last "0" at x 60, the "1" at x 660 (labels 10 px left).
    assert texts["0"] == [50, 388] and texts["1"] == [650, 388]
    drawn.clear()
    # Seven curves cycle through the six colours.
    curves = {f"c{i}": [(0, 0.1 * i), (5, 0.1)] for i in range(7)}
    plot.plot_curves(curves, tmp_path / "q.png", "t")
    colours = [kw["fill"] for _, kw in _of(drawn, "line", width=3)[:7]]
    assert colours == [BLUE, RED, GREEN, "#9467bd", "#ff7f0e", "#8c564b", BLUE]
    with pytest.raises(ValueError, match="^plot_curves needs at least one non-empty curve$"):
        plot.plot_curves({"a": [], "b": []}, tmp_path / "r.png", "t", baselines={"x": 0.1})


# -- probed_encoder.py -----------------------------------------------------------------------------------


class _Encoder(LayerFeatureEncoder):
    """Fixed features and mask; records its calls. (No model: `__init__` of the real class is skipped.)"""

    def __init__(self, features, mask):
        self.features, self.mask, self.calls = features, mask, []

    def layer_features(self, waveforms, lengths, sample_rate):
        self.calls.append((waveforms, lengths, sample_rate))
        return self.features, self.mask


class _RecordingHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))
        self.seen = []

    def forward(self, features, mask):
        self.seen.append((features, mask))
        return features.sum(dim=(1, 2, 3)) * self.scale


def _features():
    # 0.1 + small steps: none of them a float16 number
    return (0.1 + 1e-4 * torch.arange(2 * 3 * 4 * 5, dtype=torch.float32)).reshape(2, 3, 4, 5)


def test_probed_encoder_hands_the_cache_rounded_features_to_the_head():
    features, mask = _features(), torch.tensor([[True] * 4, [True, True, False, False]])
    encoder, head = _Encoder(features, mask), _RecordingHead()
    probed = probed_encoder.ProbedEncoder(encoder, head)
    assert probed.encoder is encoder and probed.head is head and probed.storage_dtype == torch.float16
    assert [n for n, _ in probed.named_parameters()] == ["head.scale"]
    waveforms, lengths = torch.zeros(2, 100), torch.tensor([100, 50])
    logits = probed(waveforms, lengths, 16000)
    assert encoder.calls == [(waveforms, lengths, 16000)]
    seen, seen_mask = head.seen[0]
    rounded = torch.from_numpy(features.numpy().astype(np.float16).astype(np.float32))
    assert seen.dtype == torch.float32 and torch.equal(seen, rounded) and not torch.equal(seen, features)
    assert seen_mask is mask
    torch.testing.assert_close(logits, rounded.sum(dim=(1, 2, 3)) * 2.0)


def test_probed_encoder_without_rounding_and_with_another_dtype():
    features, mask = _features(), torch.ones(2, 4, dtype=torch.bool)
    head = _RecordingHead()
    probed_encoder.ProbedEncoder(_Encoder(features, mask), head, None)(
        torch.zeros(2, 10), torch.tensor([10, 10]), 8000
    )
    assert torch.equal(head.seen[0][0], features)
    probed_encoder.ProbedEncoder(_Encoder(features, mask), head, storage_dtype=torch.bfloat16)(
        torch.zeros(2, 10), torch.tensor([10, 10]), 8000
    )
    bits = features.numpy().view(np.uint32)
    # bfloat16: the top 16 bits of a float32, rounded to nearest even
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).view(np.float32)
    np.testing.assert_array_equal(head.seen[1][0].numpy(), rounded)
    assert head.seen[1][0].dtype == torch.float32


def test_probed_encoder_refuses_anything_but_a_layer_feature_encoder():
    with pytest.raises(TypeError, match="^encoder must be a LayerFeatureEncoder, got Linear$"):
        probed_encoder.ProbedEncoder(torch.nn.Linear(2, 2), _RecordingHead())
