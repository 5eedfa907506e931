"""POST /users/{user_id}/interactions: writes change the next answer and exclude the new items,
duplicates are idempotent, new users are created, bad input is 422; in-process store and real Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.service.helpers import Offline, assert_same_ranking, running_client


def sample(client: TestClient, name: str) -> float:
    """The value of an unlabelled counter in /metrics."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_write_changes_the_next_answer_and_excludes_the_new_items(
    client: TestClient, offline: Offline, store_kind: str
) -> None:
    user = offline.art.user_ids[11]
    before = client.get(f"/recommend/{user}?k=20").json()
    clicked = [it["item_id"] for it in before["items"][:3]]

    response = client.post(f"/users/{user}/interactions", json={"item_ids": clicked})
    assert response.status_code == 200
    history = offline.history_ids(user)
    assert response.json() == {
        "user_id": user,
        "added": 3,
        "history_length": len(history) + 3,
        "version": 1,
        "created": False,  # a training user exists already: the first write only seeds the store
    }

    after = client.get(f"/recommend/{user}?k=20").json()
    assert after["history_source"] == store_kind and after["cold_start"] is False
    assert not {it["item_id"] for it in after["items"]} & set(clicked)
    assert after["items"] != before["items"]
    # a known user keeps their own step embedding; only the history (and so the signals) changed
    assert_same_ranking(after["items"], offline.top_k([history + clicked], [offline.user_index(user)], 20)[0])


def test_duplicates_are_idempotent(client: TestClient, offline: Offline) -> None:
    user = offline.art.user_ids[12]
    seen = offline.history_ids(user)[0]
    new = offline.art.item_ids[-1] if offline.art.item_ids[-1] not in offline.history_ids(user) else "0"
    first = client.post(f"/users/{user}/interactions", json={"item_ids": [new, new, seen]}).json()
    assert first["added"] == 1 and first["version"] == 1
    again = client.post(f"/users/{user}/interactions", json={"item_ids": [new]}).json()
    assert (
        again["added"] == 0 and again["version"] == 1 and again["history_length"] == first["history_length"]
    )


def test_a_new_user_is_created_and_served_as_cold_start(
    client: TestClient, offline: Offline, store_kind: str
) -> None:
    assert client.get("/recommend/brand-new-user").status_code == 404
    clicks = list(offline.art.item_ids[10:14])
    created = client.post("/users/brand-new-user/interactions", json={"item_ids": clicks}).json()
    assert created == {
        "user_id": "brand-new-user",
        "added": 4,
        "history_length": 4,
        "version": 1,
        "created": True,
    }
    body = client.get("/recommend/brand-new-user?k=10").json()
    assert body["cold_start"] is True and body["history_source"] == store_kind
    assert_same_ranking(body["items"], offline.top_k([clicks], [-1], 10)[0])
    batch = client.post("/recommend/batch", json={"user_ids": ["brand-new-user", "0"], "k": 10}).json()
    assert batch["results"][1]["cold_start"] is False
    assert_same_ranking(batch["results"][0]["items"], [(it["item_id"], it["score"]) for it in body["items"]])


def test_fold_in_is_cached_per_history_version(client: TestClient, offline: Offline) -> None:
    user = offline.art.user_ids[13]
    client.post(f"/users/{user}/interactions", json={"item_ids": [offline.art.item_ids[0]]})
    hits, misses = (
        sample(client, "ld4mrec_foldin_cache_hits_total"),
        sample(client, "ld4mrec_foldin_cache_misses_total"),
    )
    first = client.get(f"/recommend/{user}").json()
    assert sample(client, "ld4mrec_foldin_cache_misses_total") == misses + 1
    second = client.get(f"/recommend/{user}").json()
    assert sample(client, "ld4mrec_foldin_cache_hits_total") == hits + 1
    assert second == first  # the cached signals give the same answer
    client.post(f"/users/{user}/interactions", json={"item_ids": [offline.art.item_ids[1]]})
    client.get(f"/recommend/{user}")
    assert sample(client, "ld4mrec_foldin_cache_misses_total") == misses + 2  # new version, new fold-in


def test_unknown_items_are_422_naming_them_and_nothing_is_written(
    client: TestClient, offline: Offline
) -> None:
    user = offline.art.user_ids[14]
    response = client.post(f"/users/{user}/interactions", json={"item_ids": ["1", "ghost", "phantom"]})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "item_ids"] and "'ghost'" in error["msg"] and "'phantom'" in error["msg"]
    assert client.get(f"/recommend/{user}").json()["history_source"] == "artifact"
    assert client.post("/users/ghost-user/interactions", json={"item_ids": ["ghost"]}).status_code == 422
    assert client.get("/recommend/ghost-user").status_code == 404


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({"item_ids": []}, ["body", "item_ids"]),
        ({}, ["body", "item_ids"]),
        ({"item_ids": "1"}, ["body", "item_ids"]),
        ({"item_ids": [1]}, ["body", "item_ids", 0]),
        ({"item_ids": ["x" * 300]}, ["body", "item_ids", 0]),
        ({"item_ids": ["1"], "extra": True}, ["body", "extra"]),
    ],
)
def test_malformed_writes_are_422_naming_the_field(
    client: TestClient, payload: dict[str, Any], loc: list[Any]
) -> None:
    response = client.post("/users/0/interactions", json=payload)
    assert response.status_code == 422
    assert any(err["loc"] == loc for err in response.json()["detail"]), response.json()


def test_overlong_user_id_is_422(client: TestClient) -> None:
    response = client.post(f"/users/{'u' * 300}/interactions", json={"item_ids": ["1"]})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["path", "user_id"]


@pytest.fixture
def short_history(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with running_client(make_settings(max_history=5)) as client:
        yield client


def test_stored_history_keeps_the_newest_max_history_items(
    short_history: TestClient, offline: Offline
) -> None:
    user = offline.art.user_ids[15]
    unseen = [i for i in offline.art.item_ids if i not in offline.history_ids(user)][:3]
    result = short_history.post(f"/users/{user}/interactions", json={"item_ids": unseen}).json()
    assert result["history_length"] == 5
    items = {it["item_id"] for it in short_history.get(f"/recommend/{user}?k=100").json()["items"]}
    assert not items & set(unseen)  # the newest items are kept (and excluded)


def test_concurrent_writes_to_one_user_lose_nothing(client: TestClient, offline: Offline) -> None:
    user = offline.art.user_ids[20]
    history = offline.history_ids(user)
    new = [i for i in offline.art.item_ids if i not in history][:96]

    def write(chunk: list[str]) -> list[int]:
        return [
            client.post(f"/users/{user}/interactions", json={"item_ids": [item]}).status_code
            for item in chunk
        ]

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = [s for chunk in pool.map(write, [new[i::8] for i in range(8)]) for s in chunk]
    assert statuses == [200] * len(new)
    last = client.post(f"/users/{user}/interactions", json={"item_ids": [new[0]]}).json()
    assert last["added"] == 0 and last["version"] == len(new)  # one version per acknowledged write
    assert last["history_length"] == len(history) + len(new)  # every acknowledged item is there
