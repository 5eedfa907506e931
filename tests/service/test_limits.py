"""Limits: body size (413), k, batch users, history length, ids per list (422), request timeout and a
full scoring queue (503 + Retry-After, never a 500); invalid requests never reach the model."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.engine import ScoredItems, ScoringRequest
from service.history_store import InMemoryHistoryStore
from service.settings import Settings
from tests.service.helpers import Offline, assert_same_ranking, running_client, serve_in_thread

# the history store plays no part here: the in-process one is enough
pytestmark = pytest.mark.parametrize("store_kind", ["memory"], indirect=True)

LIMITS = {"max_ids": 3, "max_batch_users": 2, "max_k": 10, "max_history": 4, "max_body_bytes": 2048}


def sample(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


@pytest.fixture
def limited(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with running_client(make_settings(**LIMITS)) as client:
        yield client


def first_error(response: Any) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    return cast(dict[str, Any], response.json()["detail"][0])


def test_list_and_k_limits_are_422_naming_the_field(limited: TestClient, offline: Offline) -> None:
    user = offline.art.user_ids[0]
    assert len(limited.get(f"/recommend/{user}").json()["items"]) == 10  # default k capped at MAX_K
    assert first_error(limited.get(f"/recommend/{user}?k=11"))["loc"] == ["query", "k"]
    assert first_error(limited.post("/recommend", json={"history": ["1"], "k": 11}))["loc"] == ["body", "k"]

    history = first_error(limited.post("/recommend", json={"history": ["1", "2", "3", "4", "5"]}))
    assert history["loc"] == ["body", "history"] and "MAX_HISTORY" in history["msg"]
    assert limited.post("/recommend", json={"history": ["1", "2", "3", "4"]}).status_code == 200

    write = first_error(limited.post("/users/0/interactions", json={"item_ids": ["1", "2", "3", "4"]}))
    assert write["loc"] == ["body", "item_ids"] and "MAX_IDS" in write["msg"]
    users = first_error(limited.post("/recommend/batch", json={"user_ids": ["0", "1", "2"]}))
    assert users["loc"] == ["body", "user_ids"] and "MAX_BATCH_USERS" in users["msg"]
    exclude = first_error(limited.get(f"/recommend/{user}", params={"exclude": "1,2,3,4"}))
    assert exclude["loc"] == ["query", "exclude"]
    candidates = first_error(limited.post("/recommend", json={"history": [], "candidates": list("12345")}))
    assert candidates["loc"] == ["body", "candidates"]


def test_a_body_over_max_body_bytes_is_413(limited: TestClient) -> None:
    big = {"item_ids": ["1"] * 1000}  # about 6 kB of JSON
    declared = limited.post("/users/0/interactions", json=big)  # refused from Content-Length
    assert declared.status_code == 413 and "MAX_BODY_BYTES" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while it streams in
        yield b'{"item_ids": ['
        yield b", ".join([b'"1"'] * 1000)
        yield b"]}"

    streamed = limited.post(
        "/users/0/interactions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413 and "MAX_BODY_BYTES" in streamed.json()["detail"]
    assert limited.get("/recommend/0").json()["history_source"] == "artifact"  # nothing was written
    text = limited.get("/metrics").text
    assert 'route="/users/{user_id}/interactions",status_class="4xx"' in text  # counted by route


def test_a_slow_request_times_out_with_503(
    make_settings: Callable[..., Settings], offline: Offline, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_client(make_settings(request_timeout_s=0.3)) as client:
        engine = cast(FastAPI, client.app).state.recommender.engine
        score = engine.score
        slow = threading.Event()

        def maybe_slow(requests: Sequence[ScoringRequest]) -> list[ScoredItems]:
            if slow.is_set():
                time.sleep(1.0)
            return score(requests)

        monkeypatch.setattr(engine, "score", maybe_slow)
        slow.set()
        response = client.get(f"/recommend/{offline.art.user_ids[1]}")
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert "timed out after 0.3 s" in response.json()["detail"]
        slow.clear()
        time.sleep(1.0)  # the abandoned pass finishes
        assert client.get(f"/recommend/{offline.art.user_ids[1]}").status_code == 200
        assert 'status_class="5xx"' in client.get("/metrics").text


def test_a_full_scoring_queue_sheds_load_with_503(
    make_settings: Callable[..., Settings], offline: Offline
) -> None:
    with running_client(make_settings(max_queue=2)) as client:
        users = list(offline.art.user_ids[:3])
        shed = client.post("/recommend/batch", json={"user_ids": users})  # 3 rows never fit in 2
        assert shed.status_code == 503 and shed.headers["Retry-After"] == "1"
        assert "overloaded" in shed.json()["detail"] and "MAX_QUEUE" in shed.json()["detail"]
        assert client.post("/recommend/batch", json={"user_ids": users[:2]}).status_code == 200


INVALID: list[tuple[str, str, Any, dict[str, str]]] = [
    ("GET", "/recommend/0?k=0", None, {}),
    ("GET", "/recommend/0?k=11", None, {}),
    ("GET", "/recommend/0?candidates=ghost", None, {}),
    ("GET", "/recommend/0?exclude=1,2,3,4", None, {}),
    ("GET", "/recommend/nobody-at-all", None, {}),
    ("POST", "/recommend", {"history": ["ghost"]}, {}),
    ("POST", "/recommend", {"history": ["1", "2", "3", "4", "5"]}, {}),
    ("POST", "/recommend/batch", {"user_ids": ["0", "ghost"]}, {}),
    ("POST", "/users/0/interactions", {"item_ids": ["ghost"]}, {}),
    ("POST", "/users/0/interactions", {"item_ids": ["1"] * 1000}, {}),
    ("POST", "/users/0/interactions", {"item_ids": ["1"]}, {"X-API-Key": "wrong"}),
    ("POST", "/admin/reload", {"artifact": "/etc"}, {"X-API-Key": "key"}),
]


def test_an_absurd_k_is_a_short_422_on_the_fast_read_path(
    make_settings: Callable[..., Settings], offline: Offline
) -> None:
    user = offline.art.user_ids[0]
    with running_client(make_settings()) as client:
        for k in ("9" * 5000, "1" + "0" * 20, "00000000005"):
            response = client.get(f"/recommend/{user}?k={k}")
            if k == "00000000005":  # many digits, a valid value: answered the FastAPI way
                assert response.status_code == 200 and len(response.json()["items"]) == 5
                continue
            assert response.status_code == 422, (len(k), response.status_code)
            assert len(response.content) < 2000  # the 5000-digit value is not echoed back


def test_a_flood_of_invalid_requests_never_reaches_the_model_or_the_store(
    make_settings: Callable[..., Settings], offline: Offline
) -> None:
    with running_client(make_settings(api_key="key", **LIMITS)) as client:
        users = list(offline.art.user_ids[:20])
        expected = {u: client.get(f"/recommend/{u}?k=5").json()["items"] for u in users}
        rows_before = sample(client, "ld4mrec_batch_queue_wait_seconds_count")
        store = cast(FastAPI, client.app).state.recommender.store
        stored_before = len(store) if isinstance(store, InMemoryHistoryStore) else None

        def invalid(i: int) -> int:
            method, path, body, headers = INVALID[i % len(INVALID)]
            return int(client.request(method, path, json=body, headers=headers).status_code)

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(invalid, range(20 * len(INVALID))))
        assert set(statuses) <= {401, 403, 404, 413, 422} and 500 not in statuses
        assert sample(client, "ld4mrec_batch_queue_wait_seconds_count") == rows_before  # no row scored
        if stored_before is not None:
            assert len(store) == stored_before  # nothing written

        # valid requests answered during a flood are complete and correct
        def valid(user: str) -> Any:
            return client.get(f"/recommend/{user}?k=5").json()["items"]

        with ThreadPoolExecutor(max_workers=8) as pool:
            flood = pool.map(invalid, range(10 * len(INVALID)))
            answers = dict(zip(users, pool.map(valid, users), strict=True))
            assert 500 not in list(flood)
        for user in users:  # batched with others now: same ranking, scores equal to float32
            assert_same_ranking(answers[user], [(it["item_id"], it["score"]) for it in expected[user]])
        assert sample(client, "ld4mrec_batch_queue_wait_seconds_count") == rows_before + len(users)


def test_a_real_server_refuses_a_huge_body_before_it_is_sent(make_settings: Callable[..., Settings]) -> None:
    with serve_in_thread(make_settings(max_body_bytes=4096)) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /users/0/interactions HTTP/1.1\r\nHost: test\r\ncontent-type: application/json\r\n"
                b"content-length: 10000000\r\n\r\n"
            )  # the 10 MB body is never sent: the answer must come from the headers alone
            received = b""
            while chunk := sock.recv(65536):  # the server closes the connection after its answer
                received += chunk
            answer = received.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "MAX_BODY_BYTES" in answer
