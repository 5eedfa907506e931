"""Reading a user's interaction log: CSV or TSV with a header row, or a RecBole atomic ``.inter`` file.

Columns are found by name (case, spaces, ``-`` and ``_`` ignored; see :data:`ROLE_NAMES`) or named
explicitly. Values are stripped of surrounding whitespace. Timestamps are numbers (any unit; only their
order matters) or ISO 8601 dates/times (``2024-05-01``, ``2024-05-01T10:00:00+02:00``; without a zone they
are read as UTC), one form per column. Every problem raises :class:`LogError` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from training.idmap import id_problem

__all__ = ["FORMATS", "ROLE_NAMES", "LogError", "RawLog", "detect_format", "read_log"]

FORMATS = ("auto", "csv", "tsv", "recbole")
ROLES = ("user", "item", "time", "rating")
# Header names recognised per role, normalised (lower case, only letters and digits).
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "user": (
        "user",
        "userid",
        "uid",
        "username",
        "customer",
        "customerid",
        "visitorid",
        "memberid",
        "clientid",
    ),
    "item": (
        "item",
        "itemid",
        "iid",
        "product",
        "productid",
        "sku",
        "asin",
        "movie",
        "movieid",
        "song",
        "songid",
        "track",
        "trackid",
        "artist",
        "artistid",
        "video",
        "videoid",
        "article",
        "articleid",
        "book",
        "bookid",
    ),  # fmt: skip
    "time": ("timestamp", "time", "ts", "datetime", "date", "eventtime", "createdat"),
    "rating": ("rating", "score", "stars", "preference"),
}
_RECBOLE_FIELD = re.compile(r"^[^:\s]+:(token|float|token_seq|float_seq)$")


class LogError(ValueError):
    """The interaction log is malformed; the message names the file and line."""


@dataclass(frozen=True)
class RawLog:
    """The rows of a log, in file order.

    Attributes:
        columns: role ("user", "item", and "time" / "rating" when read) -> header name.
        users / items: external ids (n,).
        times: (n,) float64 timestamps (ISO dates as POSIX seconds), or None when not read.
        ratings: (n,) float64, or None when not read.
        lines: (n,) int64, the line of each row (the header is line 1).
    """

    path: Path
    format: str
    columns: dict[str, str]
    users: list[str]
    items: list[str]
    times: np.ndarray | None
    ratings: np.ndarray | None
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


def _normalise(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def detect_format(path: Path, header_line: str) -> str:
    """``.inter`` or typed RecBole header -> recbole; ``.tsv`` / ``.tab`` or a tab in the header -> tsv."""
    fields = header_line.rstrip("\r\n").split("\t")
    if path.suffix == ".inter" or all(_RECBOLE_FIELD.match(f.strip()) for f in fields):
        return "recbole"
    if path.suffix in (".tsv", ".tab") or len(fields) > 1:
        return "tsv"
    return "csv"


def _header_names(path: Path, fmt: str, header: list[str]) -> list[str]:
    names = [h.strip() for h in header]
    if fmt == "recbole":
        for name in names:
            if not _RECBOLE_FIELD.match(name):
                raise LogError(
                    f"{path}: line 1: RecBole header field {name!r} is not NAME:TYPE "
                    "(TYPE one of token, float, token_seq, float_seq)"
                )
    seen: set[str] = set()
    for name in names:
        if not name:
            raise LogError(f"{path}: line 1: empty column name in the header")
        if name in seen:
            raise LogError(f"{path}: line 1: column {name!r} appears twice in the header")
        seen.add(name)
    return names


def _bare(name: str) -> str:
    """``user_id:token`` -> ``user_id``; other names unchanged."""
    return name.split(":", 1)[0] if _RECBOLE_FIELD.match(name) else name


def _resolve_columns(
    path: Path, names: list[str], requested: dict[str, str | None], wanted: tuple[str, ...]
) -> dict[str, int]:
    """Role -> column index for the ``wanted`` roles (user and item always; time / rating if found)."""
    shown = ", ".join(repr(n) for n in names)
    chosen: dict[str, int] = {}
    for role in wanted:
        name = requested.get(role)
        if name is not None:
            matches = [i for i, n in enumerate(names) if name.strip() in (n, _bare(n))]
            if not matches:
                raise LogError(f"{path}: line 1: no column {name!r} (--{role}-col); the header has {shown}")
            chosen[role] = matches[0]
    for role in wanted:
        if role in chosen:
            continue
        taken = set(chosen.values())
        matches = [
            i for i, n in enumerate(names) if i not in taken and _normalise(_bare(n)) in ROLE_NAMES[role]
        ]
        if len(matches) > 1:
            found = ", ".join(repr(names[i]) for i in matches)
            raise LogError(
                f"{path}: line 1: several columns could be the {role} column ({found}); "
                f"pick one with --{role}-col"
            )
        if matches:
            chosen[role] = matches[0]
        elif role in ("user", "item"):
            raise LogError(
                f"{path}: line 1: no {role} column in the header ({shown}); name it with --{role}-col "
                f"(recognised names: {', '.join(ROLE_NAMES[role][:4])}, ...); "
                "the first line must be a header"
            )
    by_index: dict[int, str] = {}
    for role, index in chosen.items():
        if index in by_index:
            raise LogError(
                f"{path}: line 1: column {names[index]!r} is both the {by_index[index]} and the {role}"
            )
        by_index[index] = role
    if any(names[i].endswith((":token_seq", ":float_seq")) for i in (chosen["user"], chosen["item"])):
        raise LogError(f"{path}: line 1: a token_seq or float_seq column cannot hold user or item ids")
    return chosen


class _TimeParser:
    """Numbers or ISO 8601 dates, one form per column."""

    def __init__(self, path: Path, column: str) -> None:
        self.path, self.column = path, column
        self.kind: str | None = None
        self.first_line = 0

    def __call__(self, raw: str, line: int) -> float:
        try:
            value, kind = float(raw), "a number"
        except ValueError:
            try:
                stamp = datetime.fromisoformat(raw)
            except ValueError:
                raise LogError(
                    f"{self.path}: line {line}: {self.column} {raw[:40]!r} is neither a number nor an "
                    "ISO 8601 date/time"
                ) from None
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            value, kind = stamp.timestamp(), "a date"
        if not math.isfinite(value):
            raise LogError(f"{self.path}: line {line}: {self.column} {raw[:40]!r} is not finite")
        if self.kind is None:
            self.kind, self.first_line = kind, line
        elif kind != self.kind:
            raise LogError(
                f"{self.path}: line {line}: {self.column} {raw[:40]!r} is {kind}, but line {self.first_line} "
                f"held {self.kind}: use one form for the whole column"
            )
        return value


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LogError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise LogError(f"{path}: line {line}: not UTF-8 text (byte {exc.start})") from None


def read_log(
    path: Path,
    *,
    fmt: str = "auto",
    sep: str | None = None,
    columns: dict[str, str | None] | None = None,
    want_time: bool = True,
    want_rating: bool = False,
) -> RawLog:
    """Read every row of ``path``.

    Args:
        fmt: one of :data:`FORMATS`; "auto" uses :func:`detect_format`.
        sep: field separator of a CSV (default: "," or, when the header has no comma, ";").
        columns: explicit header names per role ("user", "item", "time", "rating").
        want_time: read the time column when there is one (named, or found by name).
        want_rating: read the rating column; it must exist.
    """
    if fmt not in FORMATS:
        raise LogError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    text = _decode(path)
    end = text.find("\n")
    header_line = text if end < 0 else text[:end]
    if not header_line.strip():
        raise LogError(f"{path}: line 1: empty file or empty header line")
    if fmt == "auto":
        fmt = detect_format(path, header_line)
    if fmt == "csv":
        delimiter = sep or ("," if "," in header_line or ";" not in header_line else ";")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    else:  # RecBole files are split on tabs, with no quoting; TSV may quote as CSV does
        source = io.StringIO(text, newline="")
        if fmt == "recbole":
            reader = csv.reader(source, delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
        else:
            reader = csv.reader(source, delimiter="\t", strict=True)
    try:
        names = _header_names(path, fmt, next(reader))
        requested = dict(columns or {})
        optional = {"time": want_time, "rating": want_rating}
        wanted = tuple(r for r in ROLES if optional.get(r, True))
        chosen = _resolve_columns(path, names, requested, wanted)
        if want_rating and "rating" not in chosen:
            raise LogError(
                f"{path}: line 1: --min-rating needs a rating column; none found among "
                f"{', '.join(repr(n) for n in names)} (name it with --rating-col)"
            )
        users: list[str] = []
        items: list[str] = []
        times: list[float] = []
        ratings: list[float] = []
        lines: list[int] = []
        parse_time = _TimeParser(path, names[chosen["time"]]) if "time" in chosen else None
        for row in reader:
            line = reader.line_num
            if not any(field.strip() for field in row):
                continue
            if len(row) != len(names):
                raise LogError(f"{path}: line {line}: expected {len(names)} fields, got {len(row)}")
            for role, values in (("user", users), ("item", items)):
                value = row[chosen[role]].strip()
                problem = id_problem(value)
                if problem:
                    raise LogError(f"{path}: line {line}: {role} id {value[:40]!r} {problem}")
                values.append(value)
            if parse_time is not None:
                times.append(parse_time(row[chosen["time"]].strip(), line))
            if "rating" in chosen:
                raw = row[chosen["rating"]].strip()
                try:
                    rating = float(raw)
                except ValueError:
                    rating = math.nan
                if not math.isfinite(rating):
                    raise LogError(f"{path}: line {line}: rating {raw[:40]!r} is not a finite number")
                ratings.append(rating)
            lines.append(line)
    except csv.Error as exc:
        raise LogError(f"{path}: line {reader.line_num}: {exc}") from None
    except StopIteration:
        raise LogError(f"{path}: line 1: empty file") from None
    if not users:
        raise LogError(f"{path}: no rows after the header")
    return RawLog(
        path=path,
        format=fmt,
        columns={role: names[index] for role, index in chosen.items()},
        users=users,
        items=items,
        times=np.asarray(times, dtype=np.float64) if parse_time is not None else None,
        ratings=np.asarray(ratings, dtype=np.float64) if "rating" in chosen else None,
        lines=np.asarray(lines, dtype=np.int64),
    )
