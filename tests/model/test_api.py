"""The Python API (model/api.py): the README's example run as written on a demo artifact, answers equal to
the model's own scores, EASE's similar items equal to its item-item weights, clear errors for unknown ids,
and no import of training/ or service/. (Every registered model: tests/contract/test_models.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.api import ScoredItem, TrainedRecommender, UnknownIdError, load
from model.ease import EASEConfig
from model.ranking import top_k
from training.config import RunConfig
from training.export import export_artifact
from training.trainer import train

REPO = Path(__file__).resolve().parents[2]


def readme_section_code(heading: str) -> str:
    """The first ```python block under the README's ``## heading``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert match, f"no python block under ## {heading}"
    return match.group(1)


def test_the_readme_example_runs_on_the_demo_artifact(
    demo_artifact: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    code = readme_section_code("Python API")
    assert 'load("artifacts/demo")' in code
    monkeypatch.chdir(demo_artifact.parent.parent)  # where `make demo` leaves artifacts/demo
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    rec = namespace["rec"]
    assert isinstance(rec, TrainedRecommender) and rec.model_name == "ld4mrec"
    top, fresh, similar = namespace["top"], namespace["fresh"], namespace["similar"]
    for answer in (top, fresh, similar):
        assert len(answer) == 5 and all(isinstance(s, ScoredItem) for s in answer)
        assert all(s.item_id in rec.item_ids for s in answer)
        assert [s.score for s in answer] == sorted((s.score for s in answer), reverse=True)
    assert not {s.item_id for s in top} & set(rec.history("0"))
    assert not {s.item_id for s in fresh} & {"3", "17"}
    assert "17" not in {s.item_id for s in similar}
    assert similar == rec.recommend_for_history(["17"], k=5)
    printed = capsys.readouterr().out.splitlines()
    assert printed[: len(top)] == [f"{s.item_id} {s.score:.3f}" for s in top]


def test_recommend_options_and_catalogue_bounds(tiny_artifact: Path) -> None:
    rec = load(tiny_artifact)
    user = rec.user_ids[3]
    seen = set(rec.history(user))
    everything = rec.recommend(user, k=10_000)
    assert len(everything) == len(rec.item_ids) - len(seen) and not {s.item_id for s in everything} & seen
    with_seen = rec.recommend(user, k=10_000, exclude_seen=False)
    assert len(with_seen) == len(rec.item_ids)
    assert rec.recommend(user, k=7) == everything[:7]
    same = rec.recommend_for_history([rec.item_ids[5], rec.item_ids[2], rec.item_ids[5]], k=6)
    assert same == rec.recommend_for_history([rec.item_ids[2], rec.item_ids[5]], k=6)
    assert len(rec.recommend_for_history([], k=4)) == 4  # a user with no clicks yet
    assert rec.metrics["test"]["recall@20"] > 0
    assert "ld4mrec" in repr(rec)


def test_unknown_ids_and_bad_arguments_are_clear_errors(tiny_artifact: Path) -> None:
    rec = load(tiny_artifact)
    with pytest.raises(UnknownIdError, match=r"unknown user id 'nobody': not a training user"):
        rec.recommend("nobody")
    with pytest.raises(UnknownIdError, match=r"unknown user id"):
        rec.history("x" * 10_000)
    with pytest.raises(UnknownIdError, match=r"unknown item id 'song_9': not in this artifact's catalogue"):
        rec.similar_items("song_9")
    with pytest.raises(
        UnknownIdError, match=r"unknown item ids 'a', 'b', 'c', 'd', 'e' and 2 more: not in this artifact"
    ):
        rec.recommend_for_history(["1", *"abcdefga"])
    with pytest.raises(LookupError):
        rec.recommend(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a list of item ids, not one string"):
        rec.recommend_for_history("17")
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            rec.recommend(rec.user_ids[0], k=k)  # type: ignore[arg-type]


def test_ease_similar_items_are_its_item_item_weights(synthetic_data, tmp_path: Path) -> None:
    run = RunConfig(threads=1)
    result = train(synthetic_data, "ease", EASEConfig(l2_grid=(50.0,)), run, progress=False)
    rec = load(export_artifact(result, synthetic_data, run, tmp_path / "ease"))
    weights = torch.from_numpy(rec.model.arrays()["weights"])  # (n, n), zero diagonal
    for item in (0, 17, 149):
        row = weights[item].clone()
        row[item] = float("-inf")
        values, ids = top_k(row[None, :], 10, stable=True)
        expected = [ScoredItem(rec.item_ids[i], float(v)) for i, v in zip(ids[0], values[0], strict=True)]
        got = rec.similar_items(rec.item_ids[item], k=10)
        assert [s.item_id for s in got] == [s.item_id for s in expected]
        np.testing.assert_allclose([s.score for s in got], [s.score for s in expected], rtol=1e-5, atol=1e-7)


def test_the_api_imports_neither_training_nor_service() -> None:
    code = (
        "import sys, model.api; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('training', 'service', 'fastapi')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
