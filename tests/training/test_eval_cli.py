"""ld4mrec-eval: the manifest's metrics reproduced exactly on the artifact's own dataset (the demo artifact
and the synthetic one), the table and JSON forms, datasets that do not match, a changed training split
folded in, a re-split dataset refused, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model.artifact import read_artifact
from model.base import make_score_fn
from training.dataset import load_dataset
from training.eval_cli import main as eval_cli
from training.evaluate import evaluate

METRICS = ["recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20", "ndcg@50"]


def _manifest(artifact: Path) -> dict:
    return json.loads((artifact / "manifest.json").read_text())


def _run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict, str]:
    assert eval_cli([*args, "--json"]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def _fail(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert eval_cli(list(args)) == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ld4mrec-eval: error: "), out.err
    return lines[0]


def _copy_dataset(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _inter_rows(directory: Path) -> tuple[str, list[list[str]]]:
    (inter,) = directory.glob("*.inter")
    header, *rows = inter.read_text().splitlines()
    return header, [row.split("\t") for row in rows]


def _write_inter(directory: Path, header: str, rows: list[list[str]]) -> None:
    (inter,) = directory.glob("*.inter")
    inter.write_text("\n".join([header, *("\t".join(r) for r in rows)]) + "\n")


def test_demo_artifact_reproduces_its_manifest_exactly(demo_artifact: Path, capsys) -> None:
    report, err = _run_json(capsys, "--artifact", str(demo_artifact), "--data", "demo")
    manifest = _manifest(demo_artifact)
    assert report["metrics"] == manifest["metrics"]  # exact: same histories, states, batches
    assert list(report["metrics"]["test"]) == METRICS
    assert report["histories"] == "artifact" and report["changed_users"] == 0
    assert report["manifest_max_abs_difference"] == 0.0
    assert report["users"] == {"valid": 800, "test": 800}
    assert (report["model"], report["model_version"]) == ("ld4mrec", manifest["model_version"])
    assert err == ""

    test_only, _ = _run_json(capsys, "--artifact", str(demo_artifact), "--data", "demo", "--split", "test")
    assert test_only["metrics"] == {"test": manifest["metrics"]["test"]}

    assert eval_cli(["--artifact", str(demo_artifact), "--data", "demo"]) == 0
    table = capsys.readouterr().out.splitlines()
    header = next(line for line in table if line.startswith("split"))
    assert header.split() == ["split", "users", *METRICS]
    for split in ("valid", "test"):
        (row,) = [line.split() for line in table if line.startswith(split + " ")]
        stored = manifest["metrics"][split]
        assert row[1] == "800" and row[2:] == [f"{stored[k]:.4f}" for k in METRICS]
    assert "largest difference to its metrics: 0" in "\n".join(table)


def test_any_model_on_its_own_dataset(tiny_artifact: Path, synthetic_dir: Path, capsys) -> None:
    # (every registered model: tests/contract/test_models.py::test_evaluating_the_artifact_reproduces_...)
    report, _ = _run_json(capsys, "--artifact", str(tiny_artifact), "--data", str(synthetic_dir))
    assert report["metrics"] == _manifest(tiny_artifact)["metrics"]
    other_batch, _ = _run_json(
        capsys, "--artifact", str(tiny_artifact), "--data", str(synthetic_dir), "--batch-size", "7"
    )
    for split in ("valid", "test"):
        for key in METRICS:
            assert other_batch["metrics"][split][key] == pytest.approx(
                report["metrics"][split][key], abs=1e-9
            )


def test_a_dataset_with_other_ids_is_refused(
    tiny_artifact: Path, synthetic_dir: Path, demo_artifact: Path, tmp_path: Path, capsys
) -> None:
    line = _fail(capsys, "--artifact", str(demo_artifact), "--data", str(synthetic_dir))
    assert (
        "does not match" in line and "240 users and 150 items" in line and "800 users and 500 items" in line
    )

    swapped = _copy_dataset(synthetic_dir, tmp_path / "swapped")
    ids = [f"song_{i}" for i in range(150)]
    (swapped / "item_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    line = _fail(capsys, "--artifact", str(tiny_artifact), "--data", str(swapped))
    assert "item 0 is 'song_0' in the dataset but '0' in the artifact (other ids" in line

    ids[3], ids[4] = ids[4], ids[3]
    art_ids = [str(i) for i in range(150)]
    art_ids[3], art_ids[4] = art_ids[4], art_ids[3]
    (swapped / "item_ids.txt").write_text("".join(f"{i}\n" for i in art_ids))
    line = _fail(capsys, "--artifact", str(tiny_artifact), "--data", str(swapped))
    assert "item 3 is '4' in the dataset but '3' in the artifact (the same ids in another order" in line


def test_a_changed_training_split_is_folded_in_and_said_so(
    tiny_artifact: Path, synthetic_dir: Path, tmp_path: Path, capsys
) -> None:
    changed = _copy_dataset(synthetic_dir, tmp_path / "changed")
    header, rows = _inter_rows(changed)
    dropped_users = {"0", "5", "9"}
    kept, seen = [], set()
    for row in rows:  # drop the first training interaction of three users
        if row[0] in dropped_users and row[2] == "0" and row[0] not in seen:
            seen.add(row[0])
            continue
        kept.append(row)
    _write_inter(changed, header, kept)

    report, err = _run_json(capsys, "--artifact", str(tiny_artifact), "--data", str(changed))
    assert report["histories"] == "dataset, folded in" and report["changed_users"] == 3
    assert "ld4mrec-eval: note: the dataset's training split differs from the artifact's training " in err
    assert "for 3 of 240 users: their dataset histories were folded in" in err
    assert report["metrics"] != _manifest(tiny_artifact)["metrics"]

    # The same as folding in every user's dataset history (the model's fold-in reproduces stored states).
    art, data = read_artifact(tiny_artifact), load_dataset(changed, [])
    states = art.model.fold_in(data.train)
    expected = evaluate(make_score_fn(art.model, data.train, states), data.train, data.test)
    for key in METRICS:
        assert report["metrics"]["test"][key] == pytest.approx(expected[key], abs=1e-6)


def test_a_re_split_dataset_is_refused(
    tiny_artifact: Path, synthetic_dir: Path, tmp_path: Path, capsys
) -> None:
    resplit = _copy_dataset(synthetic_dir, tmp_path / "resplit")
    header, rows = _inter_rows(resplit)
    train_row = next(r for r in rows if r[0] == "1" and r[2] == "0")
    test_row = next(r for r in rows if r[0] == "1" and r[2] == "2")
    train_row[2], test_row[2] = "2", "0"  # one training interaction of the artifact is now a test one
    _write_inter(resplit, header, rows)
    line = _fail(capsys, "--artifact", str(tiny_artifact), "--data", str(resplit))
    assert "1 of the dataset's test interactions are training interactions of the artifact" in line
    # only the evaluated splits count
    report, _ = _run_json(
        capsys, "--artifact", str(tiny_artifact), "--data", str(resplit), "--split", "valid"
    )
    assert report["changed_users"] == 1 and list(report["metrics"]) == ["valid"]


def test_errors_are_one_line_with_exit_code_2(
    tiny_artifact: Path, synthetic_dir: Path, tmp_path: Path, capsys
) -> None:
    line = _fail(capsys, "--artifact", str(tmp_path / "none"), "--data", str(synthetic_dir))
    assert "artifact refused:" in line and "artifact directory not found" in line
    line = _fail(capsys, "--artifact", str(tiny_artifact), "--data", str(tmp_path / "none"))
    assert "dataset error:" in line and "dataset directory not found" in line
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_artifact, corrupt)
    weights = sorted(corrupt.glob("model.*.npy"))[0]
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    line = _fail(capsys, "--artifact", str(corrupt), "--data", str(synthetic_dir))
    assert f"{weights.name}: sha256 checksum mismatch" in line
    line = _fail(capsys, "--artifact", str(tiny_artifact), "--data", str(synthetic_dir), "--device", "tpu:9")
    assert "--device" in line
    line = _fail(capsys, "--artifact", str(tiny_artifact), "--data", str(synthetic_dir), "--batch-size", "0")
    assert "--batch-size must be 1..1000000" in line
    with pytest.raises(SystemExit) as exc:
        eval_cli(["--artifact", str(tiny_artifact), "--data", str(synthetic_dir), "--split", "train"])
    assert exc.value.code == 2
    capsys.readouterr()
