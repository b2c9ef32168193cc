"""The Space's picture: a log-mel spectrogram and, under it, each top label's score over time.

Drawn with Pillow (already a Gradio dependency) so that the Space needs no plotting library. Both panels
share one time axis, so a score peak lines up with the sound that caused it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["render_figure"]

WIDTH = 960
_LEFT, _RIGHT, _TOP = 48, 24, 30  # the top margin leaves room for the gr.Image label badge
_TITLE_HEIGHT = 20
_SPEC_HEIGHT = 256
_TIMELINE_HEIGHT = 170
_AXIS_HEIGHT = 34
_LEGEND_ROW = 20
_BACKGROUND = (255, 255, 255)
_INK = (55, 55, 60)
_GRID = (225, 225, 230)
# Anchors of a perceptually ordered dark-to-bright map (close to matplotlib's "magma"): quiet is dark.
_MAP_ANCHORS = np.array(
    [
        (0, 0, 4),
        (40, 11, 84),
        (101, 21, 110),
        (159, 42, 99),
        (212, 72, 66),
        (245, 125, 21),
        (250, 193, 39),
        (252, 255, 164),
    ],
    dtype=np.float64,
)
# Distinct line colours (Tableau 10), one per label of the timeline.
_LINE_COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
# Log-mel is natural-log power: 12 units is about 52 dB, the range a listener hears in a clip.
_DYNAMIC_RANGE = 12.0


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _colour_map(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB, interpolated between the map's anchors."""
    positions = np.linspace(0.0, 1.0, len(_MAP_ANCHORS))
    flat = np.clip(values, 0.0, 1.0).ravel()
    rgb = np.stack([np.interp(flat, positions, _MAP_ANCHORS[:, c]) for c in range(3)], axis=-1)
    return rgb.reshape(*values.shape, 3).astype(np.uint8)


def _spectrogram_pixels(log_mel: np.ndarray, width: int, height: int) -> np.ndarray:
    """(frames, mel) -> (height, width, 3), low frequencies at the bottom."""
    top = float(np.percentile(log_mel, 99.5))
    if top - float(log_mel.min()) < 1e-3:
        # A flat spectrogram (digital silence) would otherwise be stretched to full brightness.
        return _colour_map(np.zeros((height, width)))
    scaled = (log_mel - (top - _DYNAMIC_RANGE)) / _DYNAMIC_RANGE
    frames = log_mel.shape[0]
    if frames >= width:
        # Max over the frames that fall into each column: a short click stays visible in a long clip.
        starts = np.linspace(0, frames, width, endpoint=False).astype(int)
        columns = np.maximum.reduceat(scaled, starts, axis=0)
    else:
        columns = scaled[np.linspace(0, frames, width, endpoint=False).astype(int)]
    rows = np.linspace(0, log_mel.shape[1] - 1, height).round().astype(int)
    image = columns[:, rows].T[::-1]  # (height, width), highest mel bin first
    return _colour_map(image)


def _nice_step(span: float, target_ticks: int = 8) -> float:
    raw = span / max(1, target_ticks)
    magnitude = 10 ** np.floor(np.log10(raw)) if raw > 0 else 1.0
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return float(factor * magnitude)
    return float(10 * magnitude)


def _time_axis(draw: ImageDraw.ImageDraw, y: int, width: int, seconds: float, font) -> None:
    draw.line([(_LEFT, y), (_LEFT + width, y)], fill=_INK)
    step = _nice_step(seconds)
    t = 0.0
    while t <= seconds + 1e-9:
        x = _LEFT + int(round(t / seconds * width))
        draw.line([(x, y), (x, y + 4)], fill=_INK)
        text = f"{t:g}"
        draw.text((x - draw.textlength(text, font=font) / 2, y + 6), text, fill=_INK, font=font)
        t += step
    label = "time (s)"
    draw.text((_LEFT + width - draw.textlength(label, font=font), y + 18), label, fill=_INK, font=font)


def render_figure(
    log_mel: np.ndarray,
    seconds: float,
    timeline: dict[str, np.ndarray] | None = None,
    window_centres: np.ndarray | None = None,
) -> Image.Image:
    """Draw the spectrogram of a clip, and the per-window scores of some labels when given.

    Args:
        log_mel: ``(frames, mel_bins)`` log-mel spectrogram of the whole clip.
        seconds: the clip's duration, for the time axis.
        timeline: ``{label: (W,) scores in [0, 1]}`` for labels to plot over time; None or a single
            window draws the spectrogram alone (one point per label says nothing about time).
        window_centres: ``(W,)`` times in seconds of the windows' centres.
    """
    log_mel = np.asarray(log_mel, dtype=np.float32)
    if log_mel.ndim != 2 or log_mel.shape[0] == 0:
        raise ValueError(f"log_mel must be (frames, mel_bins) with at least one frame, got {log_mel.shape}")
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    with_timeline = bool(timeline) and window_centres is not None and len(window_centres) > 1
    if with_timeline:
        for label, scores in timeline.items():
            if len(scores) != len(window_centres):
                raise ValueError(f"{label!r} has {len(scores)} scores for {len(window_centres)} windows")
    plot_width = WIDTH - _LEFT - _RIGHT
    legend_height = _LEGEND_ROW * ((len(timeline) + 2) // 3) + 8 if with_timeline else 0
    height = _TOP + _TITLE_HEIGHT + _SPEC_HEIGHT + _AXIS_HEIGHT
    if with_timeline:
        height += _TITLE_HEIGHT + _TIMELINE_HEIGHT + _AXIS_HEIGHT + legend_height
    image = Image.new("RGB", (WIDTH, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = _font(13), _font(11)

    draw.text((_LEFT, _TOP), "log-mel spectrogram", fill=_INK, font=font)
    top = _TOP + _TITLE_HEIGHT
    image.paste(Image.fromarray(_spectrogram_pixels(log_mel, plot_width, _SPEC_HEIGHT)), (_LEFT, top))
    draw.text((8, top), "high", fill=_INK, font=small)
    draw.text((8, top + _SPEC_HEIGHT - 14), "low", fill=_INK, font=small)
    _time_axis(draw, top + _SPEC_HEIGHT, plot_width, seconds, small)
    if not with_timeline:
        return image

    title_top = top + _SPEC_HEIGHT + _AXIS_HEIGHT
    draw.text((_LEFT, title_top), "score of the top labels, window by window", fill=_INK, font=font)
    top = title_top + _TITLE_HEIGHT
    bottom = top + _TIMELINE_HEIGHT
    for level in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - int(round(level * _TIMELINE_HEIGHT))
        draw.line([(_LEFT, y), (_LEFT + plot_width, y)], fill=_GRID)
        draw.text((_LEFT - 34, y - 7), f"{level:.2f}", fill=_INK, font=small)
    xs = _LEFT + np.clip(np.asarray(window_centres, dtype=np.float64) / seconds, 0, 1) * plot_width
    for i, scores in enumerate(timeline.values()):
        colour = _LINE_COLOURS[i % len(_LINE_COLOURS)]
        ys = bottom - np.clip(np.asarray(scores, dtype=np.float64), 0, 1) * _TIMELINE_HEIGHT
        points = list(zip(xs.tolist(), ys.tolist(), strict=True))
        draw.line(points, fill=colour, width=3, joint="curve")
        for x, y in points:
            draw.ellipse([(x - 3, y - 3), (x + 3, y + 3)], fill=colour)
    _time_axis(draw, bottom, plot_width, seconds, small)

    legend_top = bottom + _AXIS_HEIGHT
    column = plot_width // 3
    for i, label in enumerate(timeline):
        x = _LEFT + (i % 3) * column
        y = legend_top + (i // 3) * _LEGEND_ROW
        colour = _LINE_COLOURS[i % len(_LINE_COLOURS)]
        draw.rectangle([(x, y + 4), (x + 14, y + 12)], fill=colour)
        draw.text((x + 20, y), label, fill=_INK, font=font)
    return image
