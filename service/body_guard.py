"""JSON request bodies are parsed strictly and their shape bounded *before* FastAPI validates them.

FastAPI parses a body with ``json.loads``, which accepts ``NaN``, ``Infinity``, numbers that overflow to
infinity and lone surrogates (``"\\ud800"``), none of which can be answered as JSON (they were 500s); and
pydantic validates every element of a list before any length limit applies, one error per bad element (a
150,000-element list of wrong-typed values took 3 s of the event loop and a 15 MB answer). Here, in the
route class of every route with a body (:class:`JSONBodyRoute`), before that:

- the content type must be JSON (``application/json`` or ``*/*+json``; else 415);
- the bytes must be UTF-8 and strict JSON: no ``NaN`` / ``Infinity``, no number beyond the float range,
  no lone surrogate, at most :data:`MAX_DEPTH` levels of nesting (else 422);
- every list is bounded by its field's limit (``history``: MAX_HISTORY, ``user_ids``: MAX_BATCH_USERS,
  any other list: MAX_IDS), every object by :data:`MAX_KEYS` keys and every string by
  :data:`MAX_STRING` characters (else 422 naming the field), in one pass that stops at the first
  violation, so refusing costs about one ``json.loads`` of the body (bounded by MAX_BODY_BYTES).

The parsed value is handed on to FastAPI, which does not parse the body again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from email.message import Message
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from service.errors import FieldError
from service.settings import Settings

__all__ = ["MAX_DEPTH", "MAX_KEYS", "MAX_STRING", "JSONBodyRoute", "ListLimit", "list_limits", "parse_body"]

MAX_DEPTH = 4  # every body of the API is an object of scalars and lists of scalars (depth 2)
MAX_KEYS = 32
MAX_STRING = 4096  # the longest string field: ReloadRequest.artifact

ListLimit = tuple[int, str]  # (most elements, what the message calls them)

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _NotFiniteError(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _NotFiniteError(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NotFiniteError(text[:32])
    return value


def list_limits(settings: Settings) -> tuple[dict[str, ListLimit], ListLimit]:
    """Per-field list limits and the limit of any other list (the same messages as the recommender's)."""
    ids: ListLimit = (settings.max_ids, "ids per list (MAX_IDS)")
    per_field = {
        "history": (settings.max_history, "items per history (MAX_HISTORY)"),
        "user_ids": (settings.max_batch_users, "users per call (MAX_BATCH_USERS)"),
    }
    return per_field, ids


def _invalid(loc: tuple[str | int, ...], message: str) -> FieldError:
    return FieldError(("body", *loc), message, "json_invalid")


def parse_body(raw: bytes, per_field: dict[str, ListLimit], default: ListLimit) -> Any:
    """The JSON value of ``raw``; raises :class:`FieldError` (422) for anything listed in the module doc."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid((), f"the body is not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotFiniteError:
        raise _invalid((), "NaN, Infinity and numbers beyond the float range are not valid JSON") from None
    except json.JSONDecodeError as exc:
        raise _invalid((exc.pos,), f"JSON decode error: {exc.msg}") from None
    except RecursionError:
        raise _invalid((), f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # an integer with more digits than Python converts (sys.int_info)
        raise _invalid((), "a number has too many digits") from None
    _check_shape(value, per_field, default, check_unicode=_SURROGATE_ESCAPE.search(text) is not None)
    return value


def _check_shape(
    value: Any, per_field: dict[str, ListLimit], default: ListLimit, *, check_unicode: bool
) -> None:
    """Depth, list lengths, key counts, string lengths and (when the text has surrogate escapes) lone
    surrogates; iterative, stops at the first violation."""
    stack: list[tuple[Any, tuple[str | int, ...], ListLimit]] = [(value, (), default)]
    while stack:
        node, loc, limit = stack.pop()
        if isinstance(node, str):
            if len(node) > MAX_STRING:
                raise FieldError(("body", *loc), f"at most {MAX_STRING} characters, got {len(node)}")
            if check_unicode and _SURROGATE.search(node):
                raise _invalid(loc, "a string holds a lone UTF-16 surrogate (not valid unicode)")
            continue
        if not isinstance(node, dict | list):
            continue
        if len(loc) >= MAX_DEPTH:
            raise _invalid(loc, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, list):
            most, what = limit
            if len(node) > most:
                raise FieldError(("body", *loc), f"at most {most} {what}, got {len(node)}")
            stack.extend((item, (*loc, i), default) for i, item in enumerate(node))
            continue
        if len(node) > MAX_KEYS:
            raise _invalid(loc, f"at most {MAX_KEYS} keys per object, got {len(node)}")
        for key, item in node.items():
            if len(key) > MAX_STRING or (check_unicode and _SURROGATE.search(key)):
                raise _invalid(loc, "an object key is too long or not valid unicode")
            stack.append((item, (*loc, key[:64]), per_field.get(key, default)))


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def check_json_body(request: Request) -> None:
    """Read, parse and bound the body of ``request`` (see the module doc) and hand the value to FastAPI."""
    raw = await request.body()
    if not raw:
        return  # FastAPI answers a missing body itself (or uses the default of an optional one)
    if not _is_json(request.headers.get("content-type")):
        raise HTTPException(415, "the body must be JSON, sent with 'content-type: application/json'")
    settings: Settings = request.app.state.settings
    value = parse_body(raw, *list_limits(settings))
    # Starlette's Request.json() returns this cached value; FastAPI calls it for a JSON content type
    setattr(request, "_json", value)  # noqa: B010


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class JSONBodyRoute(APIRoute):
    """A route whose JSON body (if it has one) passes :func:`check_json_body` before FastAPI sees it."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            await check_json_body(request)
            return await handler(request)

        return checked
