"""ld4mrec-convert: logs with string ids -> the MMRec layout with id files, the split rule, item features
and every bad-input message (file and line, non-zero exit)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.schemas import ID_MAX_LENGTH
from training.convert import ConvertError, ConvertOptions, convert, main
from training.dataset import load_dataset
from training.idmap import MAX_ID_LENGTH
from training.item_features import FeatureError
from training.rawlog import LogError

# user_a: 4 clicks (out of time order in the file), user_b: 3, user_c: 2 (too few to hold out).
LOG = """user,item,timestamp
user_a,song_1,100
user_b,song_2,50
user_a,song_3,400
user_c,song_1,10
user_a,song_2,300
user_b,song_1,60
user_a,song_4,200
user_c,song_2,20
user_b,song_4,70
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _by_external_id(out: Path) -> dict[tuple[str, str], int]:
    """(user id, item id) -> x_label, read back through the trainer's loader."""
    data = load_dataset(out)
    labels = {}
    for label, split in enumerate((data.train, data.valid, data.test)):
        coo = split.tocoo()
        for u, i in zip(coo.row, coo.col, strict=True):
            labels[(data.user_ids[u], data.item_ids[i])] = label
    return labels


def test_chronological_split_and_id_files(tmp_path: Path) -> None:
    out = tmp_path / "music"
    report = convert(ConvertOptions(input=_write(tmp_path / "log.csv", LOG), out=out))
    assert (out / "music.inter").is_file()
    # ids in order of first appearance in the log; line number = internal id
    assert (out / "user_ids.txt").read_text() == "user_a\nuser_b\nuser_c\n"
    assert (out / "item_ids.txt").read_text() == "song_1\nsong_2\nsong_3\nsong_4\n"
    assert _by_external_id(out) == {
        # user_a by time: song_1 (100), song_4 (200), song_2 (300), song_3 (400)
        ("user_a", "song_1"): 0,
        ("user_a", "song_4"): 0,
        ("user_a", "song_2"): 1,
        ("user_a", "song_3"): 2,
        # user_b: song_2 (50), song_1 (60), song_4 (70)
        ("user_b", "song_2"): 0,
        ("user_b", "song_1"): 1,
        ("user_b", "song_4"): 2,
        # user_c has 2 < 3 interactions: all in train
        ("user_c", "song_1"): 0,
        ("user_c", "song_2"): 0,
    }
    assert (report.n_users, report.n_items, report.n_interactions) == (3, 4, 9)
    assert report.split_sizes == {"train": 5, "valid": 2, "test": 2}
    assert report.users_train_only == 1
    assert report.items_without_train == 1  # song_3 is only in test
    assert report.columns == {"user": "user", "item": "item", "time": "timestamp"}
    saved = json.loads((out / "conversion.json").read_text())
    assert saved["split_sizes"] == report.split_sizes and saved["options"]["n_test"] == 1
    inter = (out / "music.inter").read_text().splitlines()
    assert inter[0] == "userID\titemID\tx_label\ttimestamp" and inter[1] == "0\t0\t0\t100"


def test_more_held_out_items_and_iso_dates(tmp_path: Path) -> None:
    log = "User ID;Track;Date\n" + "".join(f"u1;t{i};2024-05-0{i}T10:00:00+02:00\n" for i in range(1, 6))
    out = tmp_path / "d"
    convert(ConvertOptions(input=_write(tmp_path / "log.txt", log), out=out, n_valid=2, n_test=2))
    labels = _by_external_id(out)
    assert [labels[("u1", f"t{i}")] for i in range(1, 6)] == [0, 1, 1, 2, 2]


def test_ties_in_time_keep_file_order(tmp_path: Path) -> None:
    log = "user,item,time\nu,a,5\nu,b,5\nu,c,5\n"
    out = tmp_path / "d"
    convert(ConvertOptions(input=_write(tmp_path / "log.csv", log), out=out))
    assert _by_external_id(out) == {("u", "a"): 0, ("u", "b"): 1, ("u", "c"): 2}


def test_random_split_is_seeded(tmp_path: Path) -> None:
    rows = "".join(f"user_{u},item_{(u * 7 + j) % 40}\n" for u in range(30) for j in range(6))
    log = _write(tmp_path / "log.csv", "user_id,item_id\n" + rows)
    for out, seed in (("a", 1), ("b", 1), ("c", 2)):
        convert(ConvertOptions(input=log, out=tmp_path / out, seed=seed))
    first, again, other = (_by_external_id(tmp_path / out) for out in ("a", "b", "c"))
    assert first == again and first != other
    for u in range(30):
        mine = [label for (user, _), label in first.items() if user == f"user_{u}"]
        assert sorted(mine) == [0, 0, 0, 0, 1, 2]


def test_split_time_without_a_time_column_is_refused(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.csv", "user,item\na,b\n")
    with pytest.raises(ConvertError, match="--split time needs a time column"):
        convert(ConvertOptions(input=log, out=tmp_path / "d", split="time"))


def test_random_split_ignores_a_time_column(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.csv", "user,item,timestamp\n" + "".join(f"u,i{j},bad\n" for j in range(4)))
    report = convert(ConvertOptions(input=log, out=tmp_path / "d", split="random"))
    assert "time" not in report.columns and report.split.startswith("random (seed 0)")


def test_recbole_inter_with_min_rating(tmp_path: Path) -> None:
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{(u + i) % 5 + 1}\t{1000 + 10 * i}\n" for u in range(1, 6) for i in range(1, 9)
    )
    src = _write(tmp_path / "ml.inter", inter)
    report = convert(ConvertOptions(input=src, out=tmp_path / "ml", min_rating=3))
    assert report.format == "recbole"
    assert report.columns == {"user": "user_id:token", "item": "item_id:token", "time": "timestamp:float"} | {
        "rating": "rating:float"
    }
    kept = sum(1 for u in range(1, 6) for i in range(1, 9) if (u + i) % 5 + 1 >= 3)
    assert report.n_interactions == kept and report.below_min_rating == 40 - kept
    labels = _by_external_id(tmp_path / "ml")
    assert all((u + i) % 5 + 1 >= 3 for (u, i) in ((int(a), int(b)) for a, b in labels))


def test_tsv_and_explicit_columns(tmp_path: Path) -> None:
    log = "who\twhat\twhen\tmovie\n" + "".join(f"p{u}\tm{i}\t{i}\tx\n" for u in range(3) for i in range(4))
    src = _write(tmp_path / "log.tsv", log)
    with pytest.raises(LogError, match=r"log.tsv: line 1: no user column in the header .*--user-col"):
        convert(ConvertOptions(input=src, out=tmp_path / "d"))
    report = convert(
        ConvertOptions(input=src, out=tmp_path / "d", user_col="who", item_col="what", time_col="when")
    )
    assert report.format == "tsv" and report.columns == {"user": "who", "item": "what", "time": "when"}


def test_quoted_csv_fields_keep_commas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = 'user,item\n"u/1","Song, the"\n"u/1",b\n"u/1",c\n'
    out = tmp_path / "d"
    assert main(["--input", str(_write(tmp_path / "log.csv", log)), "--out", str(out)]) == 0
    assert (out / "item_ids.txt").read_text() == "Song, the\nb\nc\n"
    err = capsys.readouterr().err
    assert "1 user id(s) contain '/'" in err and "1 item id(s) contain ','" in err


@pytest.mark.parametrize(
    ("log", "message"),
    [
        ("", r"log.csv: line 1: empty file"),
        ("\n\n", r"log.csv: line 1: empty file"),
        ("user,item\n", r"log.csv: no rows after the header"),
        ("name,thing\na,b\n", r"log.csv: line 1: no user column in the header \('name', 'thing'\)"),
        ("user,uid,item\na,b,c\n", r"line 1: several columns could be the user column \('user', 'uid'\)"),
        ("user,item,user\na,b,c\n", r"line 1: column 'user' appears twice in the header"),
        ("user,item\na,b\nc\n", r"log.csv: line 3: expected 2 fields, got 1"),
        ("user,item\na,b\n ,c\n", r"log.csv: line 3: user id '' is empty"),
        ('user,item\na,b\n"x\ty",c\n', r"log.csv: line 3: user id 'x\\ty' contains the control character"),
        ('user,item\na,b\nx,"two\nlines"\n', r"log.csv: line 4: item id 'two\\nlines' contains the control"),
        ("user,item\na," + "b" * (MAX_ID_LENGTH + 1) + "\n", r"line 2: item id .* is longer than 256"),
        ("user,item,ts\na,b,1\na,c,soon\n", r"line 3: ts 'soon' is neither a number nor an ISO 8601"),
        (
            "user,item,ts\na,b,1\na,c,2024-01-01\n",
            r"line 3: ts '2024-01-01' is a date, but line 2 held a num",
        ),
        ("user,item,ts\na,b,nan\n", r"log.csv: line 2: ts 'nan' is not finite"),
        (
            "user,item,ts\na,b,1\na,b,2\n",
            r"line 3: duplicate interaction of user 'a' with item 'b' \(first on",
        ),
        ("user,item\na,b\nc,d\n", r"no user has the 3 interactions that holding out 1 valid and 1 test"),
        ('user,item\na,"b\n', r"log.csv: line \d: unexpected end of data"),
    ],
)
def test_bad_logs_name_the_file_and_line(
    tmp_path: Path, log: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write(tmp_path / "log.csv", log)
    out = tmp_path / "out"
    assert main(["--input", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ld4mrec-convert: error: ")
    assert err.count("\n") == 1, err
    with pytest.raises((LogError, ConvertError), match=message):
        convert(ConvertOptions(input=src, out=out))
    assert not out.exists(), "nothing is written when the conversion fails"


def test_bad_ratings_and_encoding(tmp_path: Path) -> None:
    src = _write(tmp_path / "log.csv", "user,item,rating\na,b,5\na,c,good\n")
    with pytest.raises(LogError, match=r"log.csv: line 3: rating 'good' is not a finite number"):
        convert(ConvertOptions(input=src, out=tmp_path / "d", min_rating=4))
    no_rating = _write(tmp_path / "plain.csv", "user,item\na,b\n")
    with pytest.raises(LogError, match=r"--min-rating needs a rating column"):
        convert(ConvertOptions(input=no_rating, out=tmp_path / "d", min_rating=4))
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"user,item\na,b\na,caf\xe9\n")
    with pytest.raises(LogError, match=r"latin.csv: line 3: not UTF-8 text \(byte 19\)"):
        convert(ConvertOptions(input=latin, out=tmp_path / "d"))


def test_duplicates_first_or_last_by_time(tmp_path: Path) -> None:
    # user a listens to x at t=1 and again at t=9; b and c between
    log = _write(tmp_path / "log.csv", "user,item,timestamp\na,x,9\na,b,2\na,c,3\na,x,1\na,d,4\n")
    first = convert(ConvertOptions(input=log, out=tmp_path / "first", duplicates="first"))
    assert first.duplicates_dropped == 1 and first.n_interactions == 4
    # kept x at t=1: order x, b, c, d -> d test, c valid
    assert _by_external_id(tmp_path / "first")[("a", "x")] == 0
    convert(ConvertOptions(input=log, out=tmp_path / "last", duplicates="last"))
    assert _by_external_id(tmp_path / "last")[("a", "x")] == 2  # kept x at t=9: the last click


def test_an_existing_dataset_is_kept_unless_force(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.csv", LOG)
    out = tmp_path / "d"
    convert(ConvertOptions(input=log, out=out, features=()))
    np.save(out / "stale_feat.npy", np.ones((4, 2)), allow_pickle=False)
    with pytest.raises(ConvertError, match=r"already holds a dataset .*pass --force"):
        convert(ConvertOptions(input=log, out=out))
    convert(ConvertOptions(input=log, out=out, force=True))
    assert not (out / "stale_feat.npy").exists()  # a previous conversion's files are replaced
    assert load_dataset(out).modality_names == ()


# -- item features ------------------------------------------------------------------------------------------
def test_features_in_all_three_forms_align_to_internal_ids(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.csv", LOG)
    # song_4 has no features; ids in another order than the log's
    np.save(tmp_path / "img.npy", np.array([[3.0, 3.5], [1.0, 1.5], [2.0, 2.5]]), allow_pickle=False)
    _write(tmp_path / "img_ids.txt", "song_3\nsong_1\nsong_2\n")
    np.savez(tmp_path / "aud.npz", ids=np.array(["song_2", "song_4"]), features=np.array([[7.0], [8.0]]))
    _write(tmp_path / "txt.csv", "song,a,b,c\nsong_4,1,2,3\nsong_1, 4 ,5,6\n")
    report = convert(
        ConvertOptions(
            input=log,
            out=tmp_path / "d",
            features=(
                f"image={tmp_path}/img.npy:{tmp_path}/img_ids.txt",
                f"audio={tmp_path}/aud.npz",
                f"text={tmp_path}/txt.csv",
            ),
        )
    )
    data = load_dataset(tmp_path / "d")
    assert data.modality_names == ("audio", "image", "text")
    audio, image, text = data.modality_features
    assert data.item_ids == ("song_1", "song_2", "song_3", "song_4")
    np.testing.assert_array_equal(image, [[1.0, 1.5], [2.0, 2.5], [3.0, 3.5], [0.0, 0.0]])
    np.testing.assert_array_equal(audio, [[0.0], [7.0], [0.0], [8.0]])
    np.testing.assert_array_equal(text, [[4, 5, 6], [0, 0, 0], [0, 0, 0], [1, 2, 3]])
    assert [(f["modality"], f["dims"], f["items_without"]) for f in report.features] == [
        ("image", 2, 1),
        ("audio", 1, 2),
        ("text", 3, 2),
    ]
    assert "text: 3 dims, 2 of 4 items; 2 items without features (zero rows)" in "\n".join(
        report.summary_lines()
    )


def test_feature_rows_of_unknown_items_are_an_error_or_dropped(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.csv", LOG)
    feats = _write(tmp_path / "f.csv", "item,x\nsong_1,1\nsong_99,2\nsong_98,3\n")
    with pytest.raises(
        FeatureError, match=r"f.csv: line 3: item 'song_99' is not in the interactions \(2 of 3"
    ):
        convert(ConvertOptions(input=log, out=tmp_path / "d", features=(f"t={feats}",)))
    report = convert(
        ConvertOptions(
            input=log, out=tmp_path / "d", features=(f"t={feats}",), drop_unknown_feature_items=True
        )
    )
    assert report.features[0]["unknown_dropped"] == 2 and report.features[0]["items_without"] == 3


@pytest.mark.parametrize(
    ("files", "spec", "message"),
    [
        (
            {"f.csv": "item,x\nsong_1,1\nsong_2,abc\n"},
            "t=f.csv",
            r"f.csv: line 3: column 'x': 'abc' is not a finite",
        ),
        (
            {"f.csv": "item,x\nsong_1,1\nsong_2,inf\n"},
            "t=f.csv",
            r"f.csv: line 3: column 'x': 'inf' is not a fin",
        ),
        (
            {"f.csv": "item,x\nsong_1,1\nsong_1,2\n"},
            "t=f.csv",
            r"f.csv: line 3: duplicate item id 'song_1' \(first",
        ),
        ({"f.csv": "item,x,y\nsong_1,1\n"}, "t=f.csv", r"f.csv: line 2: expected 3 fields, got 2"),
        (
            {"f.csv": "item\nsong_1\n"},
            "t=f.csv",
            r"f.csv: line 1: expected a header: the item id column, then",
        ),
        ({"f.csv": "item,x\n"}, "t=f.csv", r"f.csv: no rows after the header"),
        (
            {"f.csv": "item,x\nsong_9,1\n"},
            "t=f.csv",
            r"f.csv: line 2: item 'song_9' is not in the interactions",
        ),
        ({"ids.txt": "song_1\n"}, "t=f.npy:ids.txt", r"f.npy: cannot read"),
        ({"ids.txt": "song_1\nsong_2\n"}, "t=x.npy:ids.txt", r"ids.txt: 2 ids, but .*x.npy has 1 rows"),
        ({"ids.txt": "song_1\n"}, "t=s.npy:ids.txt", r"s.npy: expected numeric features, got dtype <U1"),
        ({"ids.txt": "song_1\n"}, "t=n.npy:ids.txt", r"ids.txt: line 1: item 'song_1' has NaN or infinite"),
        ({}, "t=f.npy", r"a .npy file needs its ids file: t=FILE.npy:IDS.txt"),
        ({}, "t=f.parquet", r"unknown file type; expected NAME=FILE.npy:IDS.txt"),
        ({}, "bad name=f.csv", r"modality name 'bad name' must be"),
        ({}, "f.csv", r"expected NAME=FILE.npy:IDS.txt"),
        ({}, "t=o.npz", r"o.npz: 'ids' must be a 1-D array of strings"),
    ],
)
def test_bad_feature_files_are_refused(
    tmp_path: Path, files: dict[str, str], spec: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _write(tmp_path / "log.csv", LOG)
    for name, text in files.items():
        _write(tmp_path / name, text)
    np.save(tmp_path / "x.npy", np.ones((1, 2)), allow_pickle=False)
    np.save(tmp_path / "s.npy", np.array([["a"]]), allow_pickle=False)
    np.save(tmp_path / "n.npy", np.array([[np.nan]]), allow_pickle=False)
    np.savez(tmp_path / "o.npz", ids=np.array([1, 2]), features=np.ones((2, 2)))
    name, _, source = spec.rpartition("=")
    if name:
        source = ":".join(str(tmp_path / part) for part in source.split(":"))
        spec = f"{name}={source}"
    with pytest.raises(FeatureError, match=message):
        convert(ConvertOptions(input=log, out=tmp_path / "d", features=(spec,)))
    assert main(["--input", str(log), "--out", str(tmp_path / "d"), "--features", spec]) == 2
    assert capsys.readouterr().err.startswith("ld4mrec-convert: error: ")
    assert not (tmp_path / "d").exists()


def test_summary_is_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _write(tmp_path / "log.csv", LOG)
    feats = _write(tmp_path / "f.csv", "item,x\nsong_1,1\n")
    assert main(["--input", str(log), "--out", str(tmp_path / "d"), "--features", f"t={feats}"]) == 0
    out = capsys.readouterr().out
    for expected in (
        "rows        9 read, 9 interactions kept",
        "users       3 (1 with fewer than 3 interactions: train only)",
        "items       4 (1 never in train)",
        "split       chronological leave-out, per user: last 1 to test, the 1 before to valid: train 5, "
        "valid 2, test 2",
        "features    t: 1 dims, 1 of 4 items; 3 items without features (zero rows)",
        "d.inter, user_ids.txt, item_ids.txt, t_feat.npy, conversion.json",
    ):
        assert expected in out


def test_id_length_limit_is_the_services() -> None:
    assert MAX_ID_LENGTH == ID_MAX_LENGTH
