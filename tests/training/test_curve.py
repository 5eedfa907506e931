"""The training curve: what is drawn for an iterative run and for a closed form's grid, no curve (and why)
for popularity, the PNG listed and checksummed in the artifact, and a drawing failure never losing a model."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import training.curve
from model.artifact import ArtifactError, read_artifact
from training.cli import main as train_cli
from training.curve import CURVE_FILE, Curve, curve_of, render_curve


def _image(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _coloured_pixels(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 40) -> int:
    return int((np.abs(pixels.astype(int) - rgb).max(axis=2) < tolerance).sum())


def test_an_iterative_run_draws_loss_and_valid_metric() -> None:
    log: list[dict[str, Any]] = [
        {"epoch": 1, "loss": 2.0, "seconds": 0.1, "valid": {"recall@20": 0.1}},
        {"epoch": 2, "loss": 1.5, "seconds": 0.1},
        {"epoch": 3, "loss": 1.2, "seconds": 0.1, "valid": {"recall@20": 0.3}},
        {"epoch": 4, "loss": float("nan"), "seconds": 0.1, "valid": {"recall@20": 0.2}},
    ]
    curve = curve_of("ld4mrec", "demo", log, 3, {})
    assert isinstance(curve, Curve)
    assert curve.loss == ((1.0, 2.0), (2.0, 1.5), (3.0, 1.2))  # a non-finite loss is left out
    assert curve.valid == ((1.0, 0.1), (3.0, 0.3), (4.0, 0.2))
    assert (curve.best, curve.x_label, curve.title) == (3.0, "epoch", "ld4mrec on demo: best epoch 3")
    pixels = _image(render_curve(curve))
    assert pixels.shape[1] > 1.8 * pixels.shape[0] > 500  # two panels side by side
    left, right = pixels[:, : pixels.shape[1] // 2], pixels[:, pixels.shape[1] // 2 :]
    blue, orange = (31, 119, 180), (255, 127, 14)  # matplotlib's tab:blue (loss), tab:orange (valid)
    assert _coloured_pixels(left, blue) > 100 and _coloured_pixels(left, orange) == 0
    assert _coloured_pixels(right, orange) > 100 and _coloured_pixels(right, blue) == 0


def test_a_closed_form_grid_draws_the_valid_metric_per_setting() -> None:
    fitted = {"l2": 100.0, "valid_recall@20_by_l2": {"1000": 0.2, "10": 0.1, "100": 0.4}}
    curve = curve_of("ease", "demo", [], 0, fitted)
    assert isinstance(curve, Curve)
    assert curve.valid == ((10.0, 0.1), (100.0, 0.4), (1000.0, 0.2)) and curve.loss == ()
    assert (curve.best, curve.x_label) == (100.0, "l2")
    assert curve.title == "ease on demo: l2 = 100 chosen on valid"
    pixels = _image(render_curve(curve))
    assert 1.0 < pixels.shape[1] / pixels.shape[0] < 1.6  # one panel
    assert _coloured_pixels(pixels, (255, 127, 14)) > 100


def test_no_curve_without_epochs_or_a_grid() -> None:
    why = curve_of("popularity", "demo", [], 0, {})
    assert isinstance(why, str) and "closed form" in why
    assert isinstance(curve_of("x", "d", [], 0, {"valid_recall@20_by_l2": {}}), str)


def test_the_cli_writes_the_curve_into_the_artifact(demo_artifact: Path) -> None:
    manifest = json.loads((demo_artifact / "manifest.json").read_text())
    png = (demo_artifact / CURVE_FILE).read_bytes()
    entry = manifest["files"][CURVE_FILE]
    assert entry == {"sha256": hashlib.sha256(png).hexdigest(), "bytes": len(png)}
    width, height = struct.unpack(">II", png[16:24])  # IHDR
    assert (width, height) == _image(png).shape[1::-1] and width > 1.8 * height
    assert read_artifact(demo_artifact).model.name == "ld4mrec"


def test_a_modified_curve_is_refused_like_any_artifact_file(demo_artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "art"
    shutil.copytree(demo_artifact, copy)
    png = bytearray((copy / CURVE_FILE).read_bytes())
    png[-20] ^= 0x01
    (copy / CURVE_FILE).write_bytes(bytes(png))
    with pytest.raises(ArtifactError, match=f"{CURVE_FILE}: sha256 checksum mismatch"):
        read_artifact(copy)


def test_popularity_gets_no_curve_and_a_log_line(synthetic_dir: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "pop"
    with caplog.at_level(logging.INFO, logger="ld4mrec.train"):
        assert (
            train_cli(["--model", "popularity", "--data", str(synthetic_dir), "--out", str(out), "--quiet"])
            == 0
        )
    assert "no training curve: popularity is fitted in closed form" in caplog.text
    assert not (out / CURVE_FILE).exists()
    assert CURVE_FILE not in json.loads((out / "manifest.json").read_text())["files"]


def test_a_drawing_failure_keeps_the_artifact(
    synthetic_dir: Path, tmp_path: Path, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(curve: Curve) -> bytes:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(training.curve, "render_curve", broken)
    out = tmp_path / "ease"
    args = ["--model", "ease", "--l2-grid", "10", "100", "--data", str(synthetic_dir), "--out", str(out)]
    with caplog.at_level(logging.WARNING, logger="ld4mrec.train"):
        assert train_cli([*args, "--quiet"]) == 0
    assert "no training curve: drawing it failed (RuntimeError: no fonts)" in caplog.text
    assert read_artifact(out).model.name == "ease" and not (out / CURVE_FILE).exists()
