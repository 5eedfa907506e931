"""The training curve of a run as a PNG (``training_curve.png`` in the artifact), drawn with matplotlib's Agg
renderer (no display, no pyplot global state).

* An iterative model: the training loss per epoch (left) and the valid metric the trainer selects with
  (``recall@20``) per evaluated epoch (right), the best epoch marked.
* A closed-form model that selected a setting on valid: its ``fitted()`` holds
  ``valid_recall@20_by_<setting>`` (e.g. EASE's ``valid_recall@20_by_l2``, lambda -> valid recall@20); one
  panel of that metric per value, the chosen value marked.
* Anything else (e.g. popularity: nothing is fitted per epoch or chosen on valid) has no curve:
  :func:`training_curve_png` returns ``None`` and says why.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from model.base import SELECT_METRIC
from training.trainer import TrainResult

__all__ = ["CURVE_FILE", "Curve", "curve_files", "curve_of", "render_curve", "training_curve_png"]

log = logging.getLogger("ld4mrec.train")

CURVE_FILE = "training_curve.png"
_BY_PREFIX = f"valid_{SELECT_METRIC}_by_"


@dataclass(frozen=True)
class Curve:
    """What to draw. ``loss``: (epoch, loss) pairs; ``valid``: (x, metric) pairs, x = epoch or a setting;
    ``best``: the selected x; ``x_label``: what x is (``epoch`` or the setting's name)."""

    title: str
    valid: tuple[tuple[float, float], ...]
    best: float
    x_label: str = "epoch"
    loss: tuple[tuple[float, float], ...] = ()


def curve_of(
    model_name: str,
    dataset: str,
    log: Sequence[Mapping[str, Any]],
    best_epoch: int,
    fitted: Mapping[str, Any],
) -> Curve | str:
    """The curve of a run (the trainer's per-epoch ``log``, the model's ``fitted()``), or why it has none."""
    if log:
        loss = tuple(
            (float(row["epoch"]), float(row["loss"]))
            for row in log
            if isinstance(row.get("loss"), int | float) and math.isfinite(row["loss"])
        )
        valid = tuple(
            (float(row["epoch"]), float(row["valid"][SELECT_METRIC]))
            for row in log
            if isinstance(row.get("valid"), Mapping) and SELECT_METRIC in row["valid"]
        )
        if not loss and not valid:
            return f"{model_name}: the training log holds neither a loss nor a valid {SELECT_METRIC}"
        return Curve(
            f"{model_name} on {dataset}: best epoch {best_epoch}", valid, float(best_epoch), loss=loss
        )
    for key, by_value in fitted.items():
        if not key.startswith(_BY_PREFIX) or not isinstance(by_value, Mapping) or not by_value:
            continue
        setting = key[len(_BY_PREFIX) :]
        points = tuple(sorted((float(x), float(y)) for x, y in by_value.items()))
        chosen = fitted.get(setting)
        best = float(chosen) if isinstance(chosen, int | float) else max(points, key=lambda p: p[1])[0]
        return Curve(
            f"{model_name} on {dataset}: {setting} = {best:g} chosen on valid", points, best, setting
        )
    return (
        f"{model_name} is fitted in closed form without a per-epoch log or a setting chosen on valid, "
        "so there is no curve to draw"
    )


def render_curve(curve: Curve) -> bytes:
    """The curve as PNG bytes (about 900 x 350 pixels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: only training draws
    from matplotlib.figure import Figure

    panels = 2 if curve.loss else 1
    fig = Figure(figsize=(4.6 * panels, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if curve.loss:
        ax = axes[0]
        ax.plot(*zip(*curve.loss, strict=True), color="tab:blue", linewidth=1.2)
        ax.set(xlabel="epoch", ylabel="training loss", title="loss")
        ax.grid(alpha=0.3)
    ax = axes[-1]
    if curve.valid:
        xs, ys = zip(*curve.valid, strict=True)
        ax.plot(
            xs, ys, color="tab:orange", marker="o" if len(xs) <= 40 else None, markersize=3, linewidth=1.2
        )
        best_y = max((y for x, y in curve.valid if x == curve.best), default=None)
        if best_y is not None:
            ax.axvline(curve.best, color="grey", linestyle="--", linewidth=0.8)
            ax.plot([curve.best], [best_y], marker="*", color="tab:red", markersize=11, linestyle="none")
        if curve.x_label != "epoch" and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "not evaluated", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel=curve.x_label, ylabel=f"valid {SELECT_METRIC}", title=f"valid {SELECT_METRIC}")
    ax.grid(alpha=0.3)
    fig.suptitle(curve.title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def training_curve_png(
    model_name: str,
    dataset: str,
    log: Sequence[Mapping[str, Any]],
    best_epoch: int,
    fitted: Mapping[str, Any],
) -> tuple[bytes | None, str]:
    """(PNG bytes, ``""``) for a run with a curve, else (``None``, why there is none)."""
    curve = curve_of(model_name, dataset, log, best_epoch, fitted)
    if isinstance(curve, str):
        return None, curve
    return render_curve(curve), ""


def curve_files(result: TrainResult, dataset: str) -> dict[str, bytes]:
    """``{CURVE_FILE: png}`` for ``export_artifact``'s ``extra_files``; empty, with a log line saying why,
    when the run has no curve or drawing it fails (the trained model is never lost over its picture)."""
    model = result.model
    try:
        png, why = training_curve_png(model.name, dataset, result.log, result.best_epoch, model.fitted())
    except Exception as exc:  # noqa: BLE001 - any rendering failure: keep the artifact, say why
        log.warning("no training curve: drawing it failed (%s: %s)", type(exc).__name__, str(exc)[:200])
        return {}
    if png is None:
        log.info("no training curve: %s", why)
        return {}
    return {CURVE_FILE: png}
