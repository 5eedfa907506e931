"""Hostile and careless request bodies, paths and queries (issue 14, items 1-2 and beyond): never a 500,
never an unbounded answer, refused before validation gets expensive, nothing reaches the model or the
store. The timing side (other users during a 150,000-element body) is measured by
bench/hostile_probes.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.history_store import InMemoryHistoryStore
from service.settings import Settings
from tests.service.helpers import Offline, running_client

pytestmark = pytest.mark.parametrize("store_kind", ["memory"], indirect=True)

JSON = {"content-type": "application/json"}


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with running_client(make_settings(api_key="key")) as client:
        yield client


def scored_rows(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("ld4mrec_batch_queue_wait_seconds_count "):
            return float(line.split()[1])
    return 0.0


def detail(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text[:500]
    return cast(list[dict[str, Any]], response.json()["detail"])


NON_FINITE_OR_BAD_UNICODE = [
    ("/recommend", '{"history": [NaN]}'),
    ("/recommend", '{"history": ["1"], "k": Infinity}'),
    ("/recommend", '{"history": ["1"], "k": -Infinity}'),
    ("/recommend", '{"history": ["1"], "k": 1e400}'),
    ("/recommend", '{"history": ["1"], "k": -1e400}'),
    ("/recommend", '{"history": ["\\ud800"]}'),
    ("/recommend", '{"history": ["1"], "exclude": ["a\\udfffb"]}'),
    ("/recommend", '{"history": [], "\\ud800": 1}'),
    ("/recommend/batch", '{"user_ids": ["\\udc00"]}'),
    ("/users/0/interactions", '{"item_ids": ["\\ud83d"]}'),  # the first half of an emoji alone
    ("/users/0/interactions", '{"item_ids": [NaN]}'),
]


@pytest.mark.parametrize(("path", "body"), NON_FINITE_OR_BAD_UNICODE)
def test_non_finite_numbers_and_lone_surrogates_are_422(client: TestClient, path: str, body: str) -> None:
    response = client.post(path, content=body, headers=JSON | {"X-API-Key": "key"})
    errors = detail(response)
    assert errors[0]["loc"][0] == "body" and errors[0]["type"] == "json_invalid"
    assert "NaN" in errors[0]["msg"] or "surrogate" in errors[0]["msg"] or "unicode" in errors[0]["msg"]


def test_a_valid_surrogate_pair_is_fine(client: TestClient) -> None:
    # an emoji written as a JSON surrogate pair is one valid character: an unknown item, not bad unicode
    response = client.post("/recommend", content='{"history": ["\\ud83d\\ude00"]}', headers=JSON)
    assert detail(response)[0]["type"] == "unknown_item"


@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        (b'{"history": ["\xff\xfe"]}', "application/json", 422),  # not UTF-8
        (b"\xff\xfe", "text/plain", 415),  # was a 500: FastAPI echoed the bytes and could not decode them
        (b'{"history": []}', None, 415),
        (b'{"history": []}', "multipart/form-data; boundary=x", 415),
        (b'{"history": []}', "application/vnd.api+json", 200),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 422),  # deeper than Python's recursion limit
        (b'{"history": [[[[["1"]]]]]}', "application/json", 422),
        (b'{"history": ["1"], "k": ' + b"9" * 5000 + b"}", "application/json", 422),  # too many digits
        (b'{"history": ["1"], "k": ' + b"9" * 400 + b"}", "application/json", 422),  # a huge k
        (b'{"history": ["1"]', "application/json", 422),
        (b"null", "application/json", 422),
        (b'"just a string"', "application/json", 422),
    ],
)
def test_odd_bodies_get_a_4xx(client: TestClient, raw: bytes, content_type: str | None, status: int) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/recommend", content=raw, headers=headers)
    assert response.status_code == status, response.text[:500]
    assert len(response.content) < 4096


@pytest.mark.parametrize(
    ("path", "field", "setting"),
    [
        ("/recommend", "history", "MAX_HISTORY"),
        ("/recommend", "exclude", "MAX_IDS"),
        ("/recommend", "candidates", "MAX_IDS"),
        ("/recommend/batch", "user_ids", "MAX_BATCH_USERS"),
        ("/users/0/interactions", "item_ids", "MAX_IDS"),
    ],
)
def test_a_150k_list_of_wrong_types_is_refused_with_a_short_answer(
    client: TestClient, path: str, field: str, setting: str
) -> None:
    """Was a 15 MB 422 listing 150,000 errors after 3 s of validation on the event loop."""
    body: dict[str, Any] = {field: [0] * 150_000}
    if path == "/recommend" and field != "history":
        body["history"] = []
    before = scored_rows(client)
    response = client.post(path, content=json.dumps(body), headers=JSON | {"X-API-Key": "key"})
    errors = detail(response)
    assert len(response.content) < 1024 and len(errors) == 1
    assert errors[0]["loc"] == ["body", field] and errors[0]["type"] == "value_error"
    assert setting in errors[0]["msg"] and "got 150000" in errors[0]["msg"]
    assert scored_rows(client) == before


def test_validation_errors_are_capped_and_never_echo_long_input(client: TestClient) -> None:
    many = client.post("/recommend", json={"history": list(range(50))})  # 50 wrong-typed ids, in limits
    errors = detail(many)
    assert len(errors) == 21 and errors[-1] == {
        "loc": [],
        "msg": "and 30 more errors",
        "type": "too_many_errors",
    }
    assert errors[0]["loc"] == ["body", "history", 0] and errors[0]["input"] == 0  # short input: echoed

    long_text = "x" * 3000
    response = client.post("/recommend", json={"history": [], "k": long_text})
    assert long_text not in response.text and "input" not in detail(response)[0]
    response = client.post("/recommend", json={"history": [], long_text: 1})  # an unknown key, 3000 chars
    assert long_text not in response.text and len(response.content) < 1024
    many_keys = {f"key{i}": i for i in range(1000)}
    response = client.post("/recommend", json={"history": []} | many_keys)
    assert "MAX_KEYS" in detail(response)[0]["msg"] or "keys per object" in detail(response)[0]["msg"]


@pytest.mark.parametrize(
    "path",
    [
        "/recommend/%00",
        "/recommend/a%0Ab",
        "/recommend/%1B%5B31m",
        "/recommend/%7F",
        "/recommend/a%C2%85b",  # U+0085, a C1 control character (NEL)
        "/recommend/a%E2%80%A8b",  # U+2028, the line separator
        "/users/a%0Db/interactions",
    ],
)
def test_ids_with_control_characters_are_422(client: TestClient, path: str) -> None:
    method = "POST" if path.startswith("/users") else "GET"
    response = client.request(method, path, json={"item_ids": ["1"]}, headers={"X-API-Key": "key"})
    assert detail(response)[0]["loc"] == ["path", "user_id"]
    response = client.post("/users/ok/interactions", json={"item_ids": ["1\n"]}, headers={"X-API-Key": "key"})
    assert detail(response)[0]["loc"] == ["body", "item_ids", 0]


def test_odd_ids_paths_and_queries(client: TestClient, offline: Offline) -> None:
    key = {"X-API-Key": "key"}
    user = offline.art.user_ids[0]
    huge = client.get("/recommend/" + "u" * 10_000)  # under the header limit, over the id limit
    assert huge.status_code == 422 and len(huge.content) < 1024
    assert client.get("/recommend/..%2F..%2Fadmin%2Freload").status_code == 404
    assert client.get("/recommend/%FF%FE").status_code == 404  # not UTF-8: decoded with replacement
    unicode_user = "用户-🙂"
    write = client.post(f"/users/{unicode_user}/interactions", json={"item_ids": ["1"]}, headers=key)
    assert write.status_code == 200 and write.json()["created"] is True
    read = client.get(f"/recommend/{unicode_user}")
    assert read.status_code == 200 and read.json()["user_id"] == unicode_user

    for k in ("0", "-1", "1e3", "NaN", "1" + "0" * 40, ""):
        assert client.get(f"/recommend/{user}?k={k}").status_code == 422, k
    duplicate_k = client.get(f"/recommend/{user}?k=5&k=7")
    assert duplicate_k.status_code == 200 and len(duplicate_k.json()["items"]) in (5, 7)
    flood = "&".join(f"exclude={i}" for i in range(2000))  # more ids than MAX_IDS (1000)
    assert detail(client.get(f"/recommend/{user}?{flood}"))[0]["loc"] == ["query", "exclude"]
    unknown_params = "&".join(f"p{i}=1" for i in range(2000))
    assert client.get(f"/recommend/{user}?{unknown_params}").status_code == 200
    assert client.request("GET", f"/recommend/{user}", content=b"a body on a GET").status_code == 200


def test_head_options_and_other_methods(client: TestClient, offline: Offline) -> None:
    user = offline.art.user_ids[0]
    for method in ("HEAD", "OPTIONS"):  # not served: a clear 405 naming what is
        response = client.request(method, f"/recommend/{user}")
        assert response.status_code == 405 and response.headers["allow"] == "GET", method
    assert client.request("TRACE", "/healthz").status_code == 405
    assert client.delete(f"/users/{user}/interactions", headers={"X-API-Key": "key"}).status_code == 405
    assert client.put("/recommend", json={"history": []}).status_code == 405


def test_nothing_hostile_reached_the_store_or_the_model(client: TestClient) -> None:
    store = cast(FastAPI, client.app).state.recommender.store
    assert isinstance(store, InMemoryHistoryStore)
    before = scored_rows(client)
    for path, body in NON_FINITE_OR_BAD_UNICODE:
        client.post(path, content=body, headers=JSON | {"X-API-Key": "key"})
    assert len(store) == 0 and scored_rows(client) == before


def test_a_chunked_body_is_read_like_any_other(client: TestClient, offline: Offline) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        yield b'{"history": ['
        yield json.dumps(offline.art.item_ids[0]).encode()
        yield b'], "k": 3}'

    response = client.post("/recommend", content=chunks(), headers=JSON)
    assert response.status_code == 200 and len(response.json()["items"]) == 3
