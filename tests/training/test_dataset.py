"""Dataset loading and validation: every error names the file and the line or row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.dataset import DatasetError, load_dataset
from training.idmap import MAX_ID_LENGTH
from training.synthetic import SyntheticSpec, write_synthetic_dataset


def _write(directory: Path, inter: str, feats: dict[str, np.ndarray] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{directory.name}.inter").write_text(inter)
    for name, array in (feats or {}).items():
        np.save(directory / f"{name}_feat.npy", array, allow_pickle=False)
    return directory


GOOD = "userID\titemID\tx_label\n0\t0\t0\n0\t1\t1\n1\t1\t0\n1\t2\t2\n"


def test_loads_splits_modalities_in_sorted_order(tmp_path: Path) -> None:
    d = _write(tmp_path / "toy", GOOD, {"text": np.ones((3, 4)), "audio": np.zeros((3, 2))})
    data = load_dataset(d)
    assert (data.n_users, data.n_items) == (2, 3)
    assert (data.train.nnz, data.valid.nnz, data.test.nnz) == (2, 1, 1)
    assert data.modality_names == ("audio", "text")
    assert [f.shape for f in data.modality_features] == [(3, 2), (3, 4)]
    picked = load_dataset(d, modalities=["text"])
    assert picked.modality_names == ("text",)


def test_extra_columns_and_column_order_are_accepted(tmp_path: Path) -> None:
    inter = "timestamp\tx_label\titemID\tuserID\n5\t0\t0\t0\n6\t2\t1\t0\n7\t1\t2\t0\n"
    data = load_dataset(_write(tmp_path / "cols", inter))
    assert data.train.nnz == 1 and data.valid.nnz == 1 and data.test.nnz == 1


@pytest.mark.parametrize(
    ("inter", "message"),
    [
        ("", r"toy.inter: line 1: empty file or missing header"),
        (
            "user\titem\tlabel\n0\t0\t0\n",
            r"toy.inter: line 1: header .* lacks column\(s\) userID, itemID, x_label",
        ),
        (
            "userID\titemID\tx_label\n0\t0\t0\n0\tabc\t0\n",
            r"toy.inter: line 3: itemID 'abc' is not an integer",
        ),
        ("userID\titemID\tx_label\n0\t0\t0\n-1\t1\t0\n", r"toy.inter: line 3: userID -1 is negative"),
        ("userID\titemID\tx_label\n0\t0\t0\n0\t1\t7\n", r"toy.inter: line 3: x_label 7 is not 0"),
        (
            "userID\titemID\tx_label\n0\t0\t0\n0\t1\n",
            r"toy.inter: line 3: expected 3 tab-separated fields, got 2",
        ),
        (
            "userID\titemID\tx_label\n0\t0\t0\n1\t1\t0\n0\t0\t2\n",
            r"toy.inter: line 4: duplicate pair userID 0 itemID 0 \(first seen on line 2\)",
        ),
        ("userID\titemID\tx_label\n0\t0\t1\n0\t1\t2\n", r"toy.inter: the train split \(x_label 0\) is empty"),
        ("userID\titemID\tx_label\n", r"toy.inter: no interactions after the header"),
    ],
)
def test_malformed_interactions_are_reported_with_file_and_line(
    tmp_path: Path, inter: str, message: str
) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset(_write(tmp_path / "toy", inter))


def test_feature_rows_must_match_items(tmp_path: Path) -> None:
    d = _write(tmp_path / "toy", GOOD, {"image": np.ones((4, 2), np.float32)})
    with pytest.raises(
        DatasetError, match=r"image_feat.npy: 4 feature rows but the interactions have 3 items"
    ):
        load_dataset(d)


def test_non_finite_features_name_the_row(tmp_path: Path) -> None:
    feats = np.ones((3, 2), np.float32)
    feats[2, 1] = np.nan
    d = _write(tmp_path / "toy", GOOD, {"image": feats})
    with pytest.raises(DatasetError, match=r"image_feat.npy: row 2 \(item 2\) has NaN or infinite values"):
        load_dataset(d)


def test_pickled_features_are_refused(tmp_path: Path) -> None:
    d = _write(tmp_path / "toy", GOOD)
    np.save(d / "image_feat.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="image_feat.npy: not a plain numeric .npy array"):
        load_dataset(d)


def test_missing_directory_inter_file_and_modality(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset directory not found"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no <name>.inter"):
        load_dataset(tmp_path / "empty")
    d = _write(tmp_path / "toy", GOOD)
    with pytest.raises(DatasetError, match="no feature file for modality video"):
        load_dataset(d, modalities=["video"])


def test_synthetic_generator_is_seeded_and_loadable(tmp_path: Path) -> None:
    spec = SyntheticSpec(n_users=50, n_items=40, mean_clicks=8, seed=3)
    a = write_synthetic_dataset(tmp_path / "a", spec, name="syn")
    b = write_synthetic_dataset(tmp_path / "b", spec, name="syn")
    assert (a / "syn.inter").read_text() == (b / "syn.inter").read_text()
    data = load_dataset(a)
    assert data.n_items == 40 and data.modality_names == ("image", "text")
    assert data.valid.nnz > 0 and data.test.nnz > 0
    assert (np.diff(data.train.indptr) > 0).sum() >= 45


@pytest.mark.parametrize(
    ("inter", "message"),
    [
        (
            "userID\titemID\tx_label\n0\t0\t0\n0\t1\t2\n",
            r"toy.inter: the valid split is empty \(no interactions with x_label 1\)",
        ),
        (
            "userID\titemID\tx_label\n0\t0\t0\n0\t1\t1\n",
            r"toy.inter: the test split is empty \(no interactions with x_label 2\)",
        ),
        (  # user 1 has a test item but no training item: nobody can be evaluated on test
            "userID\titemID\tx_label\n0\t0\t0\n0\t1\t1\n1\t2\t2\n",
            r"the test split is empty \(its 1 interaction\(s\) belong to users without training",
        ),
    ],
)
def test_a_split_without_evaluable_users_is_refused(tmp_path: Path, inter: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset(_write(tmp_path / "toy", inter))


def test_external_ids_are_read_from_the_id_files(tmp_path: Path) -> None:
    d = _write(tmp_path / "toy", GOOD)
    assert load_dataset(d).user_ids == ("0", "1") and load_dataset(d).item_ids == ("0", "1", "2")
    (d / "user_ids.txt").write_text("user_3\nuser é 7\n", encoding="utf-8")
    (d / "item_ids.txt").write_text("song_17\nsong,2\nsong/9\n", encoding="utf-8")
    data = load_dataset(d)
    assert data.user_ids == ("user_3", "user é 7")
    assert data.item_ids == ("song_17", "song,2", "song/9")


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("user_ids.txt", "a\n", r"user_ids.txt: 1 ids, but the interactions have 2"),
        ("item_ids.txt", "a\nb\nc\nd\n", r"item_ids.txt: 4 ids, but the interactions have 3"),
        ("item_ids.txt", "a\nb\na\n", r"item_ids.txt: line 3: duplicate id 'a' \(first on line 1\)"),
        ("user_ids.txt", "a\n\n", r"user_ids.txt: line 2: id '' is empty"),
        ("user_ids.txt", "a\r\nb\r\n", r"user_ids.txt: line 1: id 'a\\r' contains the control character"),
        ("user_ids.txt", "a\tx\nb\n", r"user_ids.txt: line 1: id 'a\\tx' contains the control character"),
        ("user_ids.txt", " a\nb\n", r"user_ids.txt: line 1: id ' a' has leading or trailing whitespace"),
        ("user_ids.txt", "a\n" + "b" * (MAX_ID_LENGTH + 1) + "\n", r"line 2: .* is longer than 256"),
        ("user_ids.txt", b"a\n\xff\n", r"user_ids.txt: not UTF-8 text \(byte 2\)"),
    ],
)
def test_malformed_id_files_are_refused(
    tmp_path: Path, file: str, content: str | bytes, message: str
) -> None:
    d = _write(tmp_path / "toy", GOOD)
    if isinstance(content, bytes):
        (d / file).write_bytes(content)
    else:
        (d / file).write_text(content, encoding="utf-8", newline="")
    with pytest.raises(DatasetError, match=message):
        load_dataset(d)
