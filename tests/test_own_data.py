"""Own data end to end: a CSV log with string ids -> ld4mrec-convert -> ld4mrec-train -> the service answers
with the CSV's own ids; and the README's "Your own data in three commands" run as written."""

from __future__ import annotations

import csv
import importlib
import re
import shlex
import shutil
import time
import tomllib
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from model.artifact import read_artifact
from service.app import create_app
from service.settings import Settings
from training.cli import main as train_main
from training.convert import main as convert_main
from training.synthetic import EXAMPLE_LOG_SPEC, SyntheticSpec, write_synthetic_log

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = [
    "--epochs",
    "3",
    "--hidden-dim",
    "32",
    "--svd-rank",
    "8",
    "--batch-size",
    "64",
    "--threads",
    "1",
]


@contextmanager
def serving(artifact: Path) -> Iterator[TestClient]:
    """The service on ``artifact`` (in-process history store), once the model is loaded."""
    with TestClient(create_app(Settings(artifact=artifact, device="cpu"))) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.05)
        yield client


def _log_by_user(clicks: Path) -> dict[str, list[tuple[int, str]]]:
    by_user: dict[str, list[tuple[int, str]]] = defaultdict(list)
    with clicks.open(newline="") as fh:
        for row in csv.DictReader(fh):
            by_user[row["user"]].append((int(row["timestamp"]), row["item"]))
    return by_user


def test_a_csv_with_string_ids_is_served_with_those_ids(tmp_path: Path) -> None:
    spec = SyntheticSpec(
        n_users=90, n_items=40, latent_dim=6, mean_clicks=9, min_clicks=4, modalities=(("image", 6),), seed=11
    )
    clicks, (features,) = write_synthetic_log(tmp_path / "raw", spec)
    data, art = tmp_path / "data" / "music", tmp_path / "art"
    assert convert_main(["--input", str(clicks), "--out", str(data), "--features", f"image={features}"]) == 0
    assert train_main(["--data", str(data), "--out", str(art), "--quiet", *TINY_TRAIN]) == 0

    log = _log_by_user(clicks)
    catalogue = {item for rows in log.values() for _, item in rows}
    # the artifact carries the CSV's ids, and user_3's training history is their log less the last two
    # clicks (valid and test of the chronological leave-one-out split)
    artifact = read_artifact(art)
    assert set(artifact.user_ids) == set(log) and set(artifact.item_ids) == catalogue
    row = artifact.train_histories[artifact.user_ids.index("user_3")]
    history = [item for _, item in sorted(log["user_3"])]
    assert sorted(artifact.item_ids[i] for i in row.indices) == sorted(history[:-2])

    with serving(art) as client:
        response = client.get("/recommend/user_3", params={"k": 5})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["user_id"] == "user_3"
        items = [it["item_id"] for it in body["items"]]
        assert len(items) == 5 and set(items) <= catalogue and not set(items) & set(history[:-2])
        assert [it["rank"] for it in body["items"]] == [1, 2, 3, 4, 5]
        # internal ids are not ids of this service
        assert client.get("/recommend/0").status_code == 404
        # a click with the CSV's item id changes the next answer
        clicked = items[0]
        assert client.post("/users/user_3/interactions", json={"item_ids": [clicked]}).status_code < 300
        again = [it["item_id"] for it in client.get("/recommend/user_3?k=5").json()["items"]]
        assert clicked not in again and set(again) <= catalogue
        cold = client.post("/recommend", json={"history": history[:3], "k": 5}).json()
        assert {it["item_id"] for it in cold["items"]} <= catalogue


def _readme_block(title: str) -> list[str]:
    """The commands of the first ```bash block after the README heading ``title``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {title}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"no bash block under '## {title}'"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def _console_script(name: str) -> Callable[[list[str]], int]:
    """The ``main`` that pyproject.toml installs as console script ``name``."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts[name].split(":")
    return getattr(importlib.import_module(module), function)


def test_readme_own_data_in_three_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's commands, run as written in a copy of the example files (console scripts resolved
    through pyproject.toml; the trainer gets a few epochs more flags appended to keep the test short)."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    convert, train, serve, curl = _readme_block("Your own data in three commands")
    argv = shlex.split(convert)
    assert argv[0] == ".venv/bin/ld4mrec-convert"
    assert _console_script("ld4mrec-convert")(argv[1:]) == 0
    argv = shlex.split(train)
    assert argv[0] == ".venv/bin/ld4mrec-train"
    assert _console_script("ld4mrec-train")([*argv[1:], "--quiet", *TINY_TRAIN]) == 0
    argv = shlex.split(serve)
    assert argv[0] == ".venv/bin/ld4mrec-serve" and argv[1] == "--artifact" and len(argv) == 3
    url = urlsplit("http://" + shlex.split(curl)[1])
    with serving(Path(argv[2])) as client:
        response = client.get(f"{url.path}?{url.query}")
    assert response.status_code == 200, response.text
    catalogue = {row["item"] for row in csv.DictReader((tmp_path / "examples" / "clicks.csv").open())}
    items = [it["item_id"] for it in response.json()["items"]]
    assert items and set(items) <= catalogue


def test_the_example_files_are_the_generators_output(tmp_path: Path) -> None:
    clicks, features = write_synthetic_log(tmp_path, EXAMPLE_LOG_SPEC)
    for path in (clicks, *features):
        assert (REPO / "examples" / path.name).read_text() == path.read_text(), f"regenerate {path.name}"
    written = sorted(p.name for p in (clicks, *features))
    assert sorted(p.name for p in (REPO / "examples").iterdir()) == written
