"""Line plots of a metric against the training step, drawn with Pillow (already a dependency of gradio
and torchvision-free installs), so a CPU run can show its probe curve without a plotting library."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["plot_curves"]

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def plot_curves(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    path: str | Path,
    title: str,
    xlabel: str = "training step",
    ylabel: str = "linear-probe mAP",
    baselines: Mapping[str, float] | None = None,
) -> Path:
    """Draws each ``name -> [(step, value), ...]`` curve, and each ``baselines`` value as a dashed
    horizontal line (e.g. the random initialisation's probe), to a PNG at ``path``; returns the path."""
    from PIL import Image, ImageDraw

    curves = {name: list(curve) for name, curve in curves.items() if curve}
    baselines = dict(baselines or {})
    if not curves:
        raise ValueError("plot_curves needs at least one non-empty curve")
    width, height, margin = 720, 440, 60
    legend = [*curves, *baselines]
    # The legend goes under the plot, a row per name: inside the frame it hid the end of a rising curve.
    image = Image.new("RGB", (width, height + 16 * len(legend) + 8), "white")
    draw = ImageDraw.Draw(image)
    points = [p for curve in curves.values() for p in curve]
    max_step = max(max(s for s, _ in points), 1)
    values = [v for _, v in points] + list(baselines.values())
    low, high = min(values) - 0.02, max(values) + 0.02

    def xy(step: float, value: float) -> tuple[float, float]:
        x = margin + (width - 2 * margin) * step / max_step
        y = height - margin - (height - 2 * margin) * (value - low) / (high - low)
        return x, y

    draw.rectangle([margin, margin, width - margin, height - margin], outline="black")
    for i in range(5):
        value = low + (high - low) * i / 4
        _, y = xy(0, value)
        draw.line([margin - 4, y, margin, y], fill="black")
        draw.text((6, y - 6), f"{value:.3f}", fill="black")
        step = round(max_step * i / 4)
        x, _ = xy(step, low)
        draw.line([x, height - margin, x, height - margin + 4], fill="black")
        draw.text((x - 10, height - margin + 8), str(step), fill="black")
    colours = dict(zip(legend, _COLOURS * (len(legend) // len(_COLOURS) + 1), strict=False))
    for name, value in baselines.items():
        (x0, y), (x1, _) = xy(0, value), xy(max_step, value)
        for start in range(int(x0), int(x1), 12):  # dashed: a level, not a measurement over steps
            draw.line([start, y, min(start + 6, x1), y], fill=colours[name], width=2)
    for name, curve in curves.items():
        if len(curve) > 1:
            draw.line([xy(s, v) for s, v in curve], fill=colours[name], width=3)
        for s, v in curve:
            x, y = xy(s, v)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colours[name])
    for row, name in enumerate(legend):
        legend_y = height + 16 * row
        draw.line([margin, legend_y + 6, margin + 20, legend_y + 6], fill=colours[name], width=3)
        draw.text((margin + 25, legend_y), name, fill="black")
    draw.text((margin, 20), title, fill="black")
    draw.text((width // 2 - 60, height - 24), xlabel, fill="black")
    draw.text((6, margin - 24), ylabel, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
