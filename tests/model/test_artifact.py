"""Artifact round trip and refusal of corrupt, incomplete or mismatched artifacts (naming the file)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model.artifact import ArtifactError, build_model, read_artifact, write_artifact
from model.ld4mrec import HistoryBatch


@pytest.fixture()
def artifact_copy(tiny_artifact: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(tiny_artifact, dst)
    return dst


def _rewrite_checksum(root: Path, name: str) -> None:
    import hashlib

    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][name]["sha256"] = hashlib.sha256((root / name).read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_round_trip_gives_identical_scores(tiny_artifact: Path, tmp_path: Path) -> None:
    art = read_artifact(tiny_artifact)
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    assert set(manifest["metrics"]) == {"valid", "test"}
    assert set(manifest["metrics"]["test"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 20, 50)}
    assert manifest["modality_order"] == ["image", "text"]
    assert all(len(meta["sha256"]) == 64 for meta in manifest["files"].values())
    copy = write_artifact(read_artifact(tiny_artifact), tmp_path / "again")
    again = read_artifact(copy)
    users = np.arange(10)
    scores = []
    for a in (art, again):
        model = build_model(a)
        batch = HistoryBatch.from_csr(a.train_histories[users], users, a.signals[users], torch.device("cpu"))
        with torch.inference_mode():
            scores.append(model.score(batch))
    torch.testing.assert_close(scores[0], scores[1])
    # The stored signals are what fold-in computes for the unchanged training histories.
    np.testing.assert_allclose(
        build_model(art).fold_in(art.train_histories), art.signals, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", ["weights.safetensors", "signals.npy", "item_ids.json", "modality_text.npy"])
def test_flipped_byte_is_refused_naming_the_file(artifact_copy: Path, name: str) -> None:
    path = artifact_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=name) as info:
        read_artifact(artifact_copy)
    assert info.value.path == path
    assert "checksum" in str(info.value)


@pytest.mark.parametrize("name", ["z_in.npy", "history_indices.npy", "weights.safetensors"])
def test_missing_file_is_refused_naming_the_file(artifact_copy: Path, name: str) -> None:
    (artifact_copy / name).unlink()
    with pytest.raises(ArtifactError, match=f"{name}: missing"):
        read_artifact(artifact_copy)


def test_wrong_shape_with_valid_checksum_is_refused(artifact_copy: Path) -> None:
    z_in = np.load(artifact_copy / "z_in.npy")
    np.save(artifact_copy / "z_in.npy", z_in[:-1], allow_pickle=False)
    _rewrite_checksum(artifact_copy, "z_in.npy")
    with pytest.raises(ArtifactError, match="z_in.npy: shape"):
        read_artifact(artifact_copy)


def test_pickled_array_is_refused(artifact_copy: Path) -> None:
    np.save(artifact_copy / "item_degree.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    _rewrite_checksum(artifact_copy, "item_degree.npy")
    with pytest.raises(ArtifactError, match="item_degree.npy"):
        read_artifact(artifact_copy)


def test_manifest_problems_are_refused(artifact_copy: Path) -> None:
    manifest_path = artifact_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(manifest | {"format_version": 99}))
    with pytest.raises(ArtifactError, match="format_version 99"):
        read_artifact(artifact_copy)
    manifest_path.write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json: not valid JSON"):
        read_artifact(artifact_copy)
    manifest_path.unlink()
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        read_artifact(artifact_copy)


def test_mismatched_configuration_is_refused(artifact_copy: Path) -> None:
    manifest_path = artifact_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["cnet"]["hidden_dim"] += 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="weights.safetensors: weights do not match"):
        read_artifact(artifact_copy)


def test_write_refuses_to_overwrite_a_non_artifact_directory(tiny_artifact: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        write_artifact(read_artifact(tiny_artifact), target)
    assert (target / "notes.txt").read_text() == "keep me"
