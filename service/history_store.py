"""Online user histories: a small :class:`HistoryStore` protocol, an in-process store and a Redis store.

A user's *current* history is the artifact's training history until the first write; the first write
seeds the store with that history plus the new items (atomically). Stored items are **external item id
strings**, oldest first, without duplicates, at most ``max_len`` (the oldest are dropped beyond it), so
a stored history survives a model reload with another catalogue. Every change bumps the user's
``version``; a fold-in cache entry is kept next to the history and is valid only for the
``(model_version, version)`` it was computed for.

Redis layout (one hash per user, ``<prefix>user:<user_id>``): ``items`` (JSON list of item ids),
``version`` (int), ``foldin_key`` (``"<model_version>:<version>"``), ``foldin`` (float32 signals, raw
bytes). Writes are Lua scripts, so concurrent writers from several replicas never lose an item.

A user whose stored record is not valid data (the key holds another Redis type, ``items`` is not a JSON
list of strings, ``version`` is not an integer) raises :class:`CorruptHistoryError` for that user only
(answered 409, logged, counted in ``ld4mrec_history_corrupt_total``): Redis answered, so it is not a
store failure and neither trips the backoff nor counts as a Redis error; the record is left untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from service.metrics import ServiceMetrics

__all__ = [
    "AppendResult",
    "CorruptHistoryError",
    "HistoryStore",
    "InMemoryHistoryStore",
    "RedisHistoryStore",
    "StoreUnavailableError",
    "StoredHistory",
    "foldin_key",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

SeedFn = Callable[[], Sequence[str]]
"""Returns the artifact history (external item ids) that seeds a user's first stored history."""


class StoreUnavailableError(RuntimeError):
    """The history store could not be reached; ``operation`` names the failed call."""

    def __init__(self, operation: str, reason: str) -> None:
        super().__init__(f"history store unavailable during {operation}: {reason}")
        self.operation = operation
        self.reason = reason


class CorruptHistoryError(RuntimeError):
    """The stored record of ``user_ids`` is not valid data (``reason``); nothing was read or written."""

    def __init__(self, operation: str, user_ids: Sequence[str], reason: str) -> None:
        super().__init__(f"stored history not valid data during {operation}: {reason}")
        self.operation = operation
        self.user_ids = list(user_ids)
        self.reason = reason

    def public_message(self) -> str:
        shown = ", ".join(repr(u) for u in self.user_ids[:5])
        more = f" and {len(self.user_ids) - 5} more" if len(self.user_ids) > 5 else ""
        noun = "user" if len(self.user_ids) == 1 else "users"
        action = "nothing was written" if self.operation == "append" else "it cannot be ranked"
        return (
            f"the stored history of {noun} {shown}{more} is not valid data ({self.reason}); {action}; "
            "the record must be repaired or deleted by an operator"
        )


@dataclass(frozen=True)
class StoredHistory:
    """A user's stored history: external item ids (oldest first), its version, a cached fold-in if valid."""

    item_ids: tuple[str, ...]
    version: int
    foldin: bytes | None = None


@dataclass(frozen=True)
class AppendResult:
    """Outcome of a write: the new version, how many items were new, the history length, user created."""

    version: int
    added: int
    length: int
    created: bool


def foldin_key(model_version: str, version: int) -> str:
    """The key a cached fold-in is valid for."""
    return f"{model_version}:{version}"


class HistoryStore(Protocol):
    """Where the online histories live. Every method may raise :class:`StoreUnavailableError`."""

    backend: str  # "memory" or "redis"; also the ``history_source`` of answers built from it

    async def get(self, user_id: str, model_version: str) -> StoredHistory | None:
        """The user's stored history (``None`` when the user has none), with the fold-in if cached."""
        ...

    async def get_many(self, user_ids: Sequence[str], model_version: str) -> list[StoredHistory | None]:
        """:meth:`get` for several users in one round trip."""
        ...

    async def append(
        self, user_id: str, item_ids: Sequence[str], seed: SeedFn | None, max_len: int
    ) -> AppendResult:
        """Add ``item_ids`` (those not already present, in order); the first write seeds with ``seed()``."""
        ...

    async def put_foldin(self, user_id: str, version: int, model_version: str, signals: bytes) -> None:
        """Cache a fold-in for history ``version``; ignored when the history has moved on."""
        ...

    async def ping(self) -> bool:
        """True when the store answers."""
        ...

    async def close(self) -> None: ...


def _unique_in_order(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


# -- in-process ----------------------------------------------------------------------------------------------
@dataclass
class _Entry:
    items: dict[str, None]  # insertion-ordered set of external item ids
    version: int = 0
    foldin_key: str | None = None
    foldin: bytes | None = field(default=None, repr=False)


class InMemoryHistoryStore:
    """Histories in this process's memory (the embedded default; lost on restart, not shared by replicas).

    Bounded: at most ``max_users`` users are kept; beyond that the least recently used one (read or
    written) is dropped, so memory stays bounded however many users write. Every method runs without an
    ``await`` between read and write, so it is atomic on the event loop.
    """

    backend = "memory"

    def __init__(self, max_users: int = 100_000) -> None:
        if max_users < 1:
            raise ValueError(f"max_users must be >= 1, got {max_users}")
        self.max_users = max_users
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _lookup(self, user_id: str) -> _Entry | None:
        entry = self._entries.get(user_id)
        if entry is not None:
            self._entries.move_to_end(user_id)
        return entry

    def _snapshot(self, entry: _Entry | None, model_version: str) -> StoredHistory | None:
        if entry is None:
            return None
        valid = entry.foldin_key == foldin_key(model_version, entry.version)
        return StoredHistory(tuple(entry.items), entry.version, entry.foldin if valid else None)

    async def get(self, user_id: str, model_version: str) -> StoredHistory | None:
        return self._snapshot(self._lookup(user_id), model_version)

    async def get_many(self, user_ids: Sequence[str], model_version: str) -> list[StoredHistory | None]:
        return [self._snapshot(self._lookup(u), model_version) for u in user_ids]

    async def append(
        self, user_id: str, item_ids: Sequence[str], seed: SeedFn | None, max_len: int
    ) -> AppendResult:
        entry = self._lookup(user_id)
        created = entry is None
        if entry is None:
            entry = _Entry(items=dict.fromkeys(seed() if seed is not None else ()))
        before = len(entry.items)
        entry.items.update(dict.fromkeys(item_ids))
        added = len(entry.items) - before
        if added == 0 and not created:
            return AppendResult(entry.version, 0, len(entry.items), False)
        if len(entry.items) > max_len:
            entry.items = dict.fromkeys(list(entry.items)[-max_len:])
        entry.version += 1
        entry.foldin_key = entry.foldin = None
        self._entries[user_id] = entry
        while len(self._entries) > self.max_users:
            self._entries.popitem(last=False)
            if self.evicted == 0:
                log.warning(
                    "in-process history store full (%d users, MEMORY_MAX_USERS): dropping the least "
                    "recently used users; set REDIS_URL to keep every history",
                    self.max_users,
                )
            self.evicted += 1
        return AppendResult(entry.version, added, len(entry.items), created)

    async def put_foldin(self, user_id: str, version: int, model_version: str, signals: bytes) -> None:
        entry = self._entries.get(user_id)
        if entry is not None and entry.version == version:
            entry.foldin_key, entry.foldin = foldin_key(model_version, version), signals

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


# -- Redis ---------------------------------------------------------------------------------------------------
# returns {version, added, length, created}; {-1, ...}: no history yet and no seed given; {-2, ...}: the
# key holds another type; {-3, ...}: the stored items or version are not valid data (nothing is written)
_APPEND_LUA = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then return {-2, 0, 0, 0} end
local raw = redis.call('HGET', KEYS[1], 'items')
local items, version, created
if raw then
  local ok, decoded = pcall(cjson.decode, raw)
  if not ok or type(decoded) ~= 'table' then return {-3, 0, 0, 0} end
  local n = 0
  for k, v in pairs(decoded) do
    n = n + 1
    if type(k) ~= 'number' or type(v) ~= 'string' then return {-3, 0, 0, 0} end
  end
  if n ~= #decoded then return {-3, 0, 0, 0} end
  items = decoded
  local raw_version = redis.call('HGET', KEYS[1], 'version')
  version = tonumber(raw_version) or 0
  if raw_version and (not tonumber(raw_version) or version ~= math.floor(version)) then
    return {-3, 0, 0, 0}
  end
  created = 0
else
  if ARGV[3] ~= '1' then return {-1, 0, 0, 0} end
  items = cjson.decode(ARGV[4])
  version = 0
  created = 1
end
local seen = {}
for _, id in ipairs(items) do seen[id] = true end
local added = 0
for _, id in ipairs(cjson.decode(ARGV[1])) do
  if not seen[id] then
    seen[id] = true
    items[#items + 1] = id
    added = added + 1
  end
end
if added == 0 and created == 0 then return {version, 0, #items, 0} end
local max_len = tonumber(ARGV[2])
if #items > max_len then
  local kept = {}
  for i = #items - max_len + 1, #items do kept[#kept + 1] = items[i] end
  items = kept
end
version = version + 1
redis.call('HSET', KEYS[1], 'items', cjson.encode(items), 'version', version)
redis.call('HDEL', KEYS[1], 'foldin_key', 'foldin')
return {version, added, #items, created}
"""

_PUT_FOLDIN_LUA = """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
if redis.call('HGET', KEYS[1], 'version') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'foldin_key', ARGV[2], 'foldin', ARGV[3])
  return 1
end
return 0
"""

_FIELDS = ("items", "version", "foldin_key", "foldin")

_REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)


def _decode_items(raw: bytes) -> tuple[str, ...]:
    """A stored ``items`` field -> item ids; raises ``ValueError`` when it is not a JSON list of strings."""
    items = json.loads(raw.decode("utf-8"))  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    if items == {}:  # Lua's cjson encodes an empty table as {}
        return ()
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError("the stored items are not a JSON list of strings")
    return tuple(items)


def _wrong_type(exc: BaseException) -> bool:
    """True for Redis's answer to a command on a key of another type (a fault of that key's data)."""
    return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")


_WRONG_TYPE = "the Redis key holds another type than a hash"
_UNDECODABLE = "its fields do not decode"


class RedisHistoryStore:
    """Histories in Redis (``redis.asyncio``, pooled, short timeouts), shared by every replica.

    Every failure (``RedisError``, ``OSError``, timeouts) is counted in
    ``ld4mrec_redis_errors_total{operation}`` and raised as :class:`StoreUnavailableError`. After a
    failure, calls skip Redis for ``backoff_s`` (so an outage does not cost every request a timeout);
    then the next call tries again and the pool reconnects, so the store recovers by itself.
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        metrics: ServiceMetrics,
        *,
        prefix: str = "ld4mrec:",
        timeout_s: float = 0.25,
        connect_timeout_s: float = 0.25,
        max_connections: int = 64,
        retries: int = 1,
        backoff_s: float = 0.5,
        client_name: str = "ld4mrec-service",
    ) -> None:
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            client_name=client_name,
            max_connections=max_connections,
            timeout=connect_timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), retries),
        )
        self._redis = aioredis.Redis(connection_pool=self._pool)
        self._append = self._redis.register_script(_APPEND_LUA)
        self._put_foldin = self._redis.register_script(_PUT_FOLDIN_LUA)
        self._metrics = metrics
        self._prefix = prefix
        self._backoff_s = backoff_s
        self._down_until = 0.0

    def key(self, user_id: str) -> str:
        """The Redis key of a user's history hash."""
        return f"{self._prefix}user:{user_id}"

    async def _call(
        self,
        operation: str,
        call: Callable[[], Awaitable[T]],
        *,
        force: bool = False,
        user_id: str | None = None,
    ) -> T:
        """``call()``; a failure is counted, starts the backoff and raises StoreUnavailableError, except
        a command refused on ``user_id``'s key for its type (CorruptHistoryError, no backoff)."""
        if not force and time.monotonic() < self._down_until:
            raise StoreUnavailableError(operation, "Redis failed moments ago; retrying shortly")
        try:
            result = await call()
        except _REDIS_FAILURES as exc:
            if user_id is not None and _wrong_type(exc):  # Redis answered: that key's fault, not the store's
                self._down_until = 0.0
                raise self._corrupt(operation, [user_id], _WRONG_TYPE) from exc
            self._metrics.redis_errors.labels(operation=operation).inc()
            self._down_until = time.monotonic() + self._backoff_s
            raise StoreUnavailableError(operation, f"{type(exc).__name__}: {exc}") from exc
        self._down_until = 0.0
        return result

    @staticmethod
    def _parse(values: Sequence[bytes | str | None], model_version: str) -> StoredHistory | None:
        """An HMGET of ``_FIELDS`` (bytes: the client does not decode responses) -> StoredHistory;
        raises ``ValueError`` when the fields are not valid data."""
        raw_items, raw_version, raw_key, raw_foldin = (
            v.encode() if isinstance(v, str) else v for v in values
        )
        if raw_items is None:
            return None
        version = int(raw_version or 0)
        valid = raw_key is not None and raw_key == foldin_key(model_version, version).encode()
        return StoredHistory(_decode_items(raw_items), version, raw_foldin if valid else None)

    def _corrupt(self, operation: str, user_ids: Sequence[str], reason: str) -> CorruptHistoryError:
        """Count and log users whose stored record is not valid data; the error to raise."""
        self._metrics.history_corrupt.labels(operation=operation).inc(len(user_ids))
        for user_id in user_ids[:5]:
            log.warning(
                "stored history of user %r is not valid data (%s): key %r", user_id, reason, self.key(user_id)
            )
        return CorruptHistoryError(operation, user_ids, reason)

    async def get(self, user_id: str, model_version: str) -> StoredHistory | None:
        key = self.key(user_id)
        values = await self._call("get", lambda: self._redis.hmget(key, _FIELDS), user_id=user_id)
        try:
            return self._parse(values, model_version)
        except ValueError:
            raise self._corrupt("get", [user_id], _UNDECODABLE) from None

    async def get_many(self, user_ids: Sequence[str], model_version: str) -> list[StoredHistory | None]:
        async def fetch() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            for user_id in user_ids:
                pipe.hmget(self.key(user_id), _FIELDS)
            rows: list[Any] = await pipe.execute(raise_on_error=False)
            for row in rows:  # a wrong-typed key is that user's fault; any other error is Redis's
                if isinstance(row, Exception) and not _wrong_type(row):
                    raise row
            return rows

        rows = await self._call("get_many", fetch)
        histories: list[StoredHistory | None] = []
        wrong_type, undecodable = [], []
        for user_id, row in zip(user_ids, rows, strict=True):
            if isinstance(row, Exception):
                wrong_type.append(user_id)
                continue
            try:
                histories.append(self._parse(row, model_version))
            except ValueError:
                undecodable.append(user_id)
        if wrong_type or undecodable:
            if wrong_type:
                self._corrupt("get_many", wrong_type, _WRONG_TYPE)
            if undecodable:
                self._corrupt("get_many", undecodable, _UNDECODABLE)
            reason = _WRONG_TYPE if not undecodable else _UNDECODABLE if not wrong_type else "see the log"
            raise CorruptHistoryError("get_many", wrong_type + undecodable, reason)
        return histories

    async def append(
        self, user_id: str, item_ids: Sequence[str], seed: SeedFn | None, max_len: int
    ) -> AppendResult:
        new: str = json.dumps(_unique_in_order(item_ids))
        key = self.key(user_id)
        result = await self._call(
            "append", lambda: self._append(keys=[key], args=[new, max_len, "0", "[]"]), user_id=user_id
        )
        if int(result[0]) == -1:  # first write: seed with the artifact history (a second, atomic call)
            seeded = json.dumps(_unique_in_order(seed() if seed is not None else ()))
            result = await self._call(
                "append", lambda: self._append(keys=[key], args=[new, max_len, "1", seeded]), user_id=user_id
            )
        if int(result[0]) in (-2, -3):
            raise self._corrupt("append", [user_id], _WRONG_TYPE if int(result[0]) == -2 else _UNDECODABLE)
        version, added, length, created = (int(v) for v in result)
        return AppendResult(version, added, length, bool(created))

    async def put_foldin(self, user_id: str, version: int, model_version: str, signals: bytes) -> None:
        """Best effort: a key of another type is skipped by the script (the next read reports it)."""
        args: list[str | bytes] = [str(version), foldin_key(model_version, version), signals]
        key = self.key(user_id)
        with contextlib.suppress(CorruptHistoryError):
            await self._call("put_foldin", lambda: self._put_foldin(keys=[key], args=args), user_id=user_id)

    async def ping(self) -> bool:
        try:
            return bool(await self._call("ping", self._redis.ping, force=True))
        except StoreUnavailableError:
            return False

    async def close(self) -> None:
        """Close the client and every pooled connection (at shutdown)."""
        await self._redis.aclose()
        await self._pool.aclose()
        log.info("redis connection pool closed")
