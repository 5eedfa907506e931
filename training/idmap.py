"""External id files of a dataset: ``user_ids.txt`` and ``item_ids.txt`` next to ``<name>.inter``.

Format: UTF-8 text, one id per line, each line ending in ``\\n``; line *i* (0-based) holds the external id of
internal id *i*. Ids are non-empty, unique within a file, at most :data:`MAX_ID_LENGTH` characters, without
leading or trailing whitespace and without control characters (tab, newline, carriage return, ...) or
Unicode line separators, so every id is exactly one line and can be served as it is. Ids that break these
rules are refused, never escaped.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "ITEM_IDS_FILE",
    "MAX_ID_LENGTH",
    "USER_IDS_FILE",
    "IdFileError",
    "id_problem",
    "read_id_file",
    "write_id_file",
]

USER_IDS_FILE = "user_ids.txt"
ITEM_IDS_FILE = "item_ids.txt"
# The service accepts ids of up to this many characters (service/schemas.py ID_MAX_LENGTH; a test keeps the
# two equal): a longer id could be trained on but never requested.
MAX_ID_LENGTH = 256
_LINE_BREAKING = {"Cc", "Zl", "Zp"}  # control characters, line and paragraph separators


class IdFileError(ValueError):
    """An id file is malformed; the message names the file and line."""


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be an external id, or None when it can."""
    if not value:
        return "is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"is longer than {MAX_ID_LENGTH} characters"
    bad = next((c for c in value if unicodedata.category(c) in _LINE_BREAKING), None)
    if bad is not None:
        return f"contains the control character {bad!r}"
    if value != value.strip():
        return "has leading or trailing whitespace"
    return None


def write_id_file(path: Path, ids: Sequence[str]) -> None:
    """Write ``ids`` one per line; raises :class:`IdFileError` for an id :func:`id_problem` refuses."""
    for index, value in enumerate(ids):
        problem = id_problem(value)
        if problem:
            raise IdFileError(f"{path}: id {index} {value[:40]!r} {problem}")
    path.write_text("".join(f"{value}\n" for value in ids), encoding="utf-8", newline="\n")


def read_id_file(path: Path, expected: int) -> tuple[str, ...]:
    """The ids of ``path`` (index = internal id); exactly ``expected`` valid, unique ids or IdFileError."""
    try:
        with path.open("r", encoding="utf-8", newline="") as fh:  # no newline translation: "\r" is refused
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise IdFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise IdFileError(f"{path}: cannot read ({exc.strerror})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    if len(lines) != expected:
        raise IdFileError(f"{path}: {len(lines)} ids, but the interactions have {expected} (one id per line)")
    first_seen: dict[str, int] = {}
    for line_no, value in enumerate(lines, start=1):
        problem = id_problem(value)
        if problem:
            raise IdFileError(f"{path}: line {line_no}: id {value[:40]!r} {problem}")
        if value in first_seen:
            raise IdFileError(
                f"{path}: line {line_no}: duplicate id {value[:40]!r} (first on line {first_seen[value]})"
            )
        first_seen[value] = line_no
    return tuple(lines)
