"""GET /recommend/{user_id}, POST /recommend (cold start), POST /recommend/batch: answers equal the
offline model's, options and every error path; run with the in-process store and with real Redis."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service.helpers import Offline, assert_same_ranking

RESPONSE_FIELDS = {"user_id", "items", "model_version", "history_source", "cold_start"}
ITEM_FIELDS = {"item_id", "score", "rank"}


def test_top_k_equals_the_offline_model(client: TestClient, offline: Offline) -> None:
    users = list(offline.art.user_ids[:12])
    expected = offline.for_users(users, 20)
    for user, reference in zip(users, expected, strict=True):
        body = client.get(f"/recommend/{user}", params={"k": 20}).json()
        assert set(body) == RESPONSE_FIELDS and all(set(item) == ITEM_FIELDS for item in body["items"])
        assert body["user_id"] == user and body["cold_start"] is False
        assert body["history_source"] == "artifact" and body["model_version"] == offline.art.model_version
        assert_same_ranking(body["items"], reference)
    # the same users asked concurrently (their rows share forward passes) get the same answers
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda u: client.get(f"/recommend/{u}?k=20").json(), users))
    for body, reference in zip(answers, expected, strict=True):
        assert_same_ranking(body["items"], reference)


def test_default_k_is_20_and_seen_items_are_excluded(client: TestClient, offline: Offline) -> None:
    user = offline.art.user_ids[4]
    items = [it["item_id"] for it in client.get(f"/recommend/{user}").json()["items"]]
    assert len(items) == 20
    assert not set(items) & set(offline.history_ids(user))


def test_exclude_seen_false_ranks_seen_items_too(client: TestClient, offline: Offline) -> None:
    user = offline.art.user_ids[6]
    body = client.get(f"/recommend/{user}", params={"k": 40, "exclude_seen": "false"}).json()
    reference = offline.for_users([user], 40, mask=False)[0]
    assert_same_ranking(body["items"], reference)
    assert {it["item_id"] for it in body["items"]} & set(offline.history_ids(user))  # seen items compete


def test_exclude_and_candidates(client: TestClient, offline: Offline) -> None:
    user = offline.art.user_ids[8]
    n = offline.art.n_items
    full = [i for i, _ in offline.for_users([user], n)[0]]  # every unseen item, best first
    excluded = full[:3]
    # both forms together, comma-separated and repeated; unknown ids in `exclude` are ignored
    got = client.get(
        f"/recommend/{user}?k=5&exclude={excluded[0]},{excluded[1]}&exclude={excluded[2]}&exclude=zz"
    )
    assert [it["item_id"] for it in got.json()["items"]] == full[3:8]

    candidates = [full[10], full[4], full[20], offline.history_ids(user)[0]]  # a seen one is still excluded
    body = client.get(f"/recommend/{user}", params={"k": 10, "candidates": ",".join(candidates)}).json()
    assert [it["item_id"] for it in body["items"]] == [full[4], full[10], full[20]]  # fewer eligible than k


@pytest.mark.parametrize(
    ("query", "field"),
    [("k=0", "k"), ("k=-3", "k"), ("k=abc", "k"), ("k=101", "k"), ("exclude_seen=maybe", "exclude_seen")],
)
def test_bad_query_parameters_are_422_naming_the_field(
    client: TestClient, offline: Offline, query: str, field: str
) -> None:
    response = client.get(f"/recommend/{offline.art.user_ids[0]}?{query}")
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert any(err["loc"] == ["query", field] for err in detail), detail


def test_unknown_candidates_are_422_naming_them(client: TestClient, offline: Offline) -> None:
    response = client.get(f"/recommend/{offline.art.user_ids[0]}", params={"candidates": "1,ghost,phantom"})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert (
        error["loc"] == ["query", "candidates"] and "'ghost'" in error["msg"] and "'phantom'" in error["msg"]
    )


def test_unknown_user_is_404_with_a_clear_message(client: TestClient) -> None:
    response = client.get("/recommend/nobody-at-all")
    assert response.status_code == 404
    assert "unknown user_id 'nobody-at-all'" in response.json()["detail"]


def test_cold_start_post_equals_the_offline_model(client: TestClient, offline: Offline) -> None:
    history = offline.history_ids(offline.art.user_ids[2])[:6]
    body = client.post("/recommend", json={"history": history + history[:2], "k": 15}).json()
    assert set(body) == RESPONSE_FIELDS
    assert body["user_id"] is None and body["cold_start"] is True and body["history_source"] == "request"
    assert_same_ranking(body["items"], offline.top_k([history], [-1], 15)[0])
    empty = client.post("/recommend", json={"history": []}).json()
    assert len(empty["items"]) == 20


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({"history": ["1", "ghost"]}, ["body", "history"]),
        ({"history": ["1"], "k": 0}, ["body", "k"]),
        ({"history": ["1"], "k": 101}, ["body", "k"]),
        ({"history": "1,2"}, ["body", "history"]),
        ({"history": [""]}, ["body", "history", 0]),
        ({"history": ["1"], "kk": 3}, ["body", "kk"]),
        ({"history": ["1"], "candidates": ["ghost"]}, ["body", "candidates"]),
    ],
)
def test_cold_start_errors_name_the_field(
    client: TestClient, payload: dict[str, Any], loc: list[Any]
) -> None:
    response = client.post("/recommend", json=payload)
    assert response.status_code == 422
    assert any(err["loc"] == loc for err in response.json()["detail"]), response.json()


def test_malformed_json_is_422(client: TestClient) -> None:
    response = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "detail" in response.json()


def test_batch_answers_every_user_in_order(client: TestClient, offline: Offline) -> None:
    users = list(offline.art.user_ids[20:30])
    body = client.post("/recommend/batch", json={"user_ids": users, "k": 7}).json()
    assert list(body) == ["results"]
    assert [r["user_id"] for r in body["results"]] == users
    for result, reference in zip(body["results"], offline.for_users(users, 7), strict=True):
        assert set(result) == RESPONSE_FIELDS
        assert_same_ranking(result["items"], reference)


def test_batch_with_unknown_users_is_404_naming_them_all(client: TestClient) -> None:
    response = client.post("/recommend/batch", json={"user_ids": ["0", "ghost-1", "ghost-2"]})
    assert response.status_code == 404
    assert "'ghost-1'" in response.json()["detail"] and "'ghost-2'" in response.json()["detail"]
    empty = client.post("/recommend/batch", json={"user_ids": []})
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "user_ids"]
