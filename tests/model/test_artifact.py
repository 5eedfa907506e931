"""Artifact round trip and refusal of corrupt, incomplete, unlisted or mismatched artifacts (naming the file),
with every size checked before anything is allocated."""

from __future__ import annotations

import hashlib
import json
import shutil
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.artifact import ArtifactError, read_artifact, write_artifact
from model.base import make_score_fn


@pytest.fixture()
def artifact_copy(tiny_artifact: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(tiny_artifact, dst)
    return dst


def _manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / "manifest.json").read_text())


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    (root / "manifest.json").write_text(json.dumps(manifest))


def _relist(root: Path, name: str) -> None:
    """Make the manifest agree with the file as it is now (what an attacker with write access would do)."""
    manifest = _manifest(root)
    path = root / name
    entry: dict[str, Any] = {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bytes": path.stat().st_size,
    }
    if name.endswith(".npy"):
        with path.open("rb") as fh:
            np.lib.format.read_magic(fh)
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        entry |= {"shape": list(shape), "dtype": str(dtype)}
    manifest["files"][name] = entry
    _write_manifest(root, manifest)


def test_round_trip_gives_identical_scores(tiny_artifact: Path, tmp_path: Path) -> None:
    art = read_artifact(tiny_artifact)
    manifest = _manifest(tiny_artifact)
    assert manifest["format_version"] == 2 and manifest["model"]["name"] == "ld4mrec"
    assert set(manifest["metrics"]) == {"valid", "test"}
    assert set(manifest["metrics"]["test"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 20, 50)}
    assert manifest["modality_order"] == ["image", "text"]
    assert all(len(meta["sha256"]) == 64 for meta in manifest["files"].values())
    copy = write_artifact(read_artifact(tiny_artifact), tmp_path / "again")
    again = read_artifact(copy)
    users = np.arange(10)
    scores = [make_score_fn(a.model, a.train_histories, a.user_states)(users) for a in (art, again)]
    torch.testing.assert_close(scores[0], scores[1])
    # The stored states are what fold-in computes for the unchanged training histories.
    np.testing.assert_allclose(art.model.fold_in(art.train_histories), art.user_states, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name", ["model.cnet.out.weight.npy", "user_states.npy", "item_ids.json", "model.modality_features.1.npy"]
)
def test_flipped_byte_is_refused_naming_the_file(artifact_copy: Path, name: str) -> None:
    path = artifact_copy / name
    data = bytearray(path.read_bytes())
    data[-(len(data) // 3)] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=name) as info:
        read_artifact(artifact_copy)
    assert info.value.path == path
    assert "checksum" in str(info.value)


@pytest.mark.parametrize("name", ["model.z_in.npy", "history_indices.npy", "model.cnet.out.weight.npy"])
def test_missing_file_is_refused_naming_the_file(artifact_copy: Path, name: str) -> None:
    (artifact_copy / name).unlink()
    with pytest.raises(ArtifactError, match=f"{name}: missing"):
        read_artifact(artifact_copy)


def test_truncated_array_is_refused(artifact_copy: Path) -> None:
    path = artifact_copy / "model.cnet.out.weight.npy"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ArtifactError, match="model.cnet.out.weight.npy: size"):
        read_artifact(artifact_copy)
    _relist(artifact_copy, "model.cnet.out.weight.npy")  # even with the manifest rewritten to match
    with pytest.raises(ArtifactError, match="model.cnet.out.weight.npy: .*data bytes"):
        read_artifact(artifact_copy)


def test_unlisted_file_is_refused(artifact_copy: Path) -> None:
    """Issue 14, probe 7: an altered array the manifest does not list must not be loaded unchecked."""
    np.save(artifact_copy / "model.extra.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(ArtifactError, match="model.extra.npy: not listed in manifest.json"):
        read_artifact(artifact_copy)


def test_file_listed_but_foreign_to_the_model_is_refused(artifact_copy: Path) -> None:
    np.save(artifact_copy / "model.extra.npy", np.zeros(3, dtype=np.float32))
    _relist(artifact_copy, "model.extra.npy")
    with pytest.raises(ArtifactError, match="model.extra.npy: listed in manifest.json but not a file"):
        read_artifact(artifact_copy)


def test_every_file_read_is_listed(artifact_copy: Path) -> None:
    manifest = _manifest(artifact_copy)
    del manifest["files"]["model.z_in.npy"]
    _write_manifest(artifact_copy, manifest)
    with pytest.raises(ArtifactError, match="model.z_in.npy: not listed"):
        read_artifact(artifact_copy)


def test_wrong_shape_with_valid_checksum_is_refused(artifact_copy: Path) -> None:
    z_in = np.load(artifact_copy / "model.z_in.npy")
    np.save(artifact_copy / "model.z_in.npy", z_in[:-1], allow_pickle=False)
    _relist(artifact_copy, "model.z_in.npy")
    with pytest.raises(ArtifactError, match="model.z_in.npy: shape"):
        read_artifact(artifact_copy)


def test_pickled_array_is_refused(artifact_copy: Path) -> None:
    np.save(artifact_copy / "model.item_degree.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    _relist(artifact_copy, "model.item_degree.npy")
    with pytest.raises(ArtifactError, match="model.item_degree.npy"):
        read_artifact(artifact_copy)


def test_non_finite_array_is_refused(artifact_copy: Path) -> None:
    weights = np.load(artifact_copy / "model.cnet.out.bias.npy")
    weights[0] = np.nan
    np.save(artifact_copy / "model.cnet.out.bias.npy", weights, allow_pickle=False)
    _relist(artifact_copy, "model.cnet.out.bias.npy")
    with pytest.raises(ArtifactError, match="model.cnet.out.bias.npy: holds NaN"):
        read_artifact(artifact_copy)


def test_manifest_problems_are_refused(artifact_copy: Path) -> None:
    manifest_path = artifact_copy / "manifest.json"
    manifest = _manifest(artifact_copy)
    manifest_path.write_text(json.dumps(manifest | {"format_version": 99}))
    with pytest.raises(ArtifactError, match="format_version 99"):
        read_artifact(artifact_copy)
    manifest_path.write_text(json.dumps(manifest | {"n_users": "many"}))
    with pytest.raises(ArtifactError, match="'n_users' has the wrong type"):
        read_artifact(artifact_copy)
    manifest_path.write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json: not valid JSON"):
        read_artifact(artifact_copy)
    manifest_path.unlink()
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        read_artifact(artifact_copy)


def test_unknown_model_is_refused_naming_it(artifact_copy: Path) -> None:
    manifest = _manifest(artifact_copy)
    manifest["model"]["name"] = "gpt-rec"
    _write_manifest(artifact_copy, manifest)
    with pytest.raises(ArtifactError, match=r"manifest.json: unknown model 'gpt-rec'; known models: ld4mrec"):
        read_artifact(artifact_copy)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("hidden_dim", 65, "model.cnet.*shape"),  # a config that does not fit the arrays
        ("steps", 20_000_000, "invalid value for steps"),  # issue 14, probe 8: absurd sizes
        ("hidden_dim", 10**9, "invalid value for hidden_dim"),
        ("svd_rank", "lots", "invalid value for svd_rank"),
        ("no_such_option", 1, "unknown option"),
    ],
)
def test_config_that_does_not_match_is_refused_before_allocating(
    artifact_copy: Path, option: str, value: object, message: str
) -> None:
    manifest = _manifest(artifact_copy)
    manifest["model"]["config"][option] = value
    _write_manifest(artifact_copy, manifest)
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError, match=message) as info:
            read_artifact(artifact_copy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "ld4mrec" in str(info.value) or "model.cnet" in str(info.value)
    assert peak < 32 << 20  # nothing of the absurd size was allocated


def test_absurd_sizes_are_refused_before_allocating(artifact_copy: Path) -> None:
    manifest = _manifest(artifact_copy)
    manifest["n_items"] = 10**12
    _write_manifest(artifact_copy, manifest)
    with pytest.raises(ArtifactError, match="n_items 1000000000000 is outside"):
        read_artifact(artifact_copy)
    manifest["n_items"] = 10**7  # within range, but then every array's expected shape is wrong
    _write_manifest(artifact_copy, manifest)
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError, match="shape"):
            read_artifact(artifact_copy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


def test_symlinked_file_is_refused(artifact_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    shutil.copy(artifact_copy / "item_ids.json", outside)
    (artifact_copy / "item_ids.json").unlink()
    (artifact_copy / "item_ids.json").symlink_to(outside)
    with pytest.raises(ArtifactError, match="item_ids.json: missing or not a regular file"):
        read_artifact(artifact_copy)


def test_write_refuses_to_overwrite_a_non_artifact_directory(tiny_artifact: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        write_artifact(read_artifact(tiny_artifact), target)
    assert (target / "notes.txt").read_text() == "keep me"


def test_mmap_loading_gives_the_same_scores(tiny_artifact: Path) -> None:
    users = np.arange(8)
    loaded = [read_artifact(tiny_artifact, mmap=m) for m in (False, True)]
    scores = [make_score_fn(a.model, a.train_histories, a.user_states)(users) for a in loaded]
    torch.testing.assert_close(scores[0], scores[1])
