"""The learned layer weights of a probe, as JSON and as a picture: where the task's information lies.

A bar per layer for one combination of the layers (CGP with ``gate_granularity="layer"``, the SUPERB
weighted sum), a classes x layers heat map when every class has its own (``"layer_class"``). Drawn with
Pillow, like `hf_audiorep.evaluation.plot`, so a CPU run needs no plotting library.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .heads import ProbeHead

__all__ = [
    "LAYER_WEIGHTS_JSON",
    "LAYER_WEIGHTS_PNG",
    "layer_weights_report",
    "plot_layer_weights",
    "remove_layer_weights",
    "write_layer_weights",
]

LAYER_WEIGHTS_JSON, LAYER_WEIGHTS_PNG = "layer_weights.json", "layer_weights.png"
_BAR, _INK = "#1f77b4", "black"


def layer_weights_report(
    head: ProbeHead, layer_names: Sequence[str], label_names: Sequence[str]
) -> dict | None:
    """``{"probe", "layers", "weights"}`` with ``weights`` one value per layer, or for per-class weights one
    list per class name (and ``mean_over_classes``); None for a head that reads one layer."""
    weights = head.layer_weights()
    if weights is None:
        return None
    weights = weights.detach().float().cpu()
    if len(layer_names) != weights.shape[0]:
        raise ValueError(f"{len(layer_names)} layer names for {weights.shape[0]} layer weights")
    report = {"probe": head.name, "layers": list(layer_names)}
    if weights.ndim == 1:
        return {**report, "granularity": "layer", "weights": weights.tolist()}
    if len(label_names) != weights.shape[1]:
        raise ValueError(f"{len(label_names)} class names for {weights.shape[1]} classes of layer weights")
    per_class = {name: weights[:, c].tolist() for c, name in enumerate(label_names)}
    return {
        **report,
        "granularity": "layer_class",
        "weights": per_class,
        "mean_over_classes": weights.mean(dim=1).tolist(),
    }


def write_layer_weights(report: dict, output_dir: str | Path, title: str) -> tuple[Path, Path]:
    """``layer_weights.json`` and ``layer_weights.png`` of a `layer_weights_report` in ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / LAYER_WEIGHTS_JSON
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    weights = report["weights"]
    rows = list(weights.values()) if isinstance(weights, dict) else None
    png = plot_layer_weights(
        rows if rows is not None else weights,
        report["layers"],
        output_dir / LAYER_WEIGHTS_PNG,
        title,
        class_names=list(weights) if rows is not None else None,
    )
    return json_path, png


def remove_layer_weights(output_dir: str | Path) -> list[Path]:
    """Deletes ``layer_weights.json`` and ``.png`` from ``output_dir`` and returns those that were there:
    a head without layer weights writes none, and an earlier run's files in a reused directory would
    otherwise pass for this run's."""
    removed = []
    for name in (LAYER_WEIGHTS_JSON, LAYER_WEIGHTS_PNG):
        path = Path(output_dir) / name
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def _short(name: str) -> str:
    return "emb" if name == "embeddings" else name.removeprefix("layer ")


def plot_layer_weights(
    weights: Sequence[float] | Sequence[Sequence[float]],
    layer_names: Sequence[str],
    path: str | Path,
    title: str,
    class_names: Sequence[str] | None = None,
) -> Path:
    """A bar chart of one weight per layer, or (with ``class_names``, one row of weights per class) a heat
    map of classes x layers; written as a PNG to ``path``, which is returned."""
    if class_names is None:
        image = _bars([float(w) for w in weights], layer_names, title)
    else:
        image = _heat_map([[float(w) for w in row] for row in weights], layer_names, class_names, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _bars(weights: list[float], layer_names, title):
    from PIL import Image, ImageDraw

    width, height, margin = max(480, 80 + 36 * len(weights)), 400, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    top = max(max(weights), 1e-12) * 1.1
    plot_height, slot = height - 2 * margin, (width - 2 * margin) / len(weights)
    draw.line([margin, height - margin, width - margin, height - margin], fill=_INK)
    draw.line([margin, margin, margin, height - margin], fill=_INK)
    for i in range(5):
        value = top * i / 4
        y = height - margin - plot_height * i / 4
        draw.line([margin - 4, y, margin, y], fill=_INK)
        draw.text((6, y - 6), f"{value:.3f}", fill=_INK)
    for i, (value, name) in enumerate(zip(weights, layer_names, strict=True)):
        x0 = margin + slot * i + slot * 0.15
        x1 = margin + slot * (i + 1) - slot * 0.15
        draw.rectangle([x0, height - margin - plot_height * value / top, x1, height - margin], fill=_BAR)
        draw.text((x0, height - margin + 8), _short(name), fill=_INK)
    draw.text((margin, 20), title, fill=_INK)
    draw.text((width // 2 - 40, height - 24), "hidden state", fill=_INK)
    draw.text((6, margin - 24), "layer weight", fill=_INK)
    return image


def _heat_map(rows: list[list[float]], layer_names, class_names, title):
    from PIL import Image, ImageDraw

    cell_w = max(14, min(40, 600 // len(layer_names)))
    cell_h = max(2, min(14, 900 // len(rows)))
    left, top_margin = (180 if cell_h >= 10 else 40), 60
    width = left + cell_w * len(layer_names) + 90
    height = top_margin + cell_h * len(rows) + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    high = max(max(row) for row in rows) or 1.0

    def colour(value: float) -> tuple[int, int, int]:
        # White (0) to the bar colour (the largest weight): darker is more of the class's combination.
        share = max(0.0, min(1.0, value / high))
        return tuple(round(255 + (c - 255) * share) for c in (31, 119, 180))

    for r, (row, name) in enumerate(zip(rows, class_names, strict=True)):
        y = top_margin + r * cell_h
        for c, value in enumerate(row):
            x = left + c * cell_w
            draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], fill=colour(value))
        if cell_h >= 10:
            draw.text((6, y), name[:28], fill=_INK)
    for c, name in enumerate(layer_names):
        draw.text((left + c * cell_w + 2, top_margin - 16), _short(name), fill=_INK)
    scale_x = left + cell_w * len(layer_names) + 20
    for step in range(40):
        y = top_margin + step * 3
        draw.rectangle([scale_x, y, scale_x + 14, y + 3], fill=colour(high * (1 - step / 39)))
    draw.text((scale_x + 18, top_margin - 4), f"{high:.3f}", fill=_INK)
    draw.text((scale_x + 18, top_margin + 114), "0", fill=_INK)
    draw.text((6, 20), title, fill=_INK)
    draw.text((left, height - 24), "hidden state (columns) x class (rows)", fill=_INK)
    return image
