"""A column of ids packed into one ``bytes``: each id's UTF-8 followed by ``0xFF``, after
a leading ``0xFF`` (``b"\\xffi1\\xffi7\\xff"`` holds ``["i1", "i7"]``; ``b"\\xff"`` is
empty). ``None`` and ``""`` are the empty id (an event id of a click that had none).

Why: a user's window held its item and event ids as lists of str, one object per click
(~57 bytes for ``"i123456"`` plus the list's 8-byte slot), so a full window of 50 clicks
was ~6 KB of ids, and the cyclic GC's full collections walked each list: at 50,000 full
windows, ~0.35 s pauses of the worker (``recall bench clicks``). One bytes object per
column is one untracked allocation, and the worker's per-click steps stay C calls:
membership is a substring search (``0xFF`` never occurs in UTF-8, so a match of
``0xFF id 0xFF`` is exactly a whole id), the oldest id is cut with one ``index``.

Ids are encoded strictly: a str with a lone surrogate raises (UnicodeEncodeError, a
ValueError); no id parsed from a message has one (orjson refuses them).
"""

from __future__ import annotations

from collections.abc import Iterable

SEP = b"\xff"
#: the separator as :func:`unpack` sees it (``surrogateescape`` decodes 0xFF to it)
_SEP_STR = "\udcff"


def token(item: str | None) -> bytes:
    """One id as it is appended: its UTF-8 and the separator (``None`` or ``""``: the
    separator alone)."""
    return SEP if item is None else item.encode() + SEP


def pack(ids: Iterable[str | None]) -> bytes:
    """The packed column of ``ids`` (in order)."""
    return SEP + b"".join([token(i) for i in ids])


def unpack(col: bytes) -> list[str]:
    """The ids of a column, in order (an empty id as ``""``)."""
    if len(col) == 1:
        return []
    return col[1:-1].decode("utf-8", "surrogateescape").split(_SEP_STR)


def unpack_optional(col: bytes) -> list[str | None]:
    """The ids of a column, an empty id as ``None`` (event ids)."""
    return [i or None for i in unpack(col)]


def contains(col: bytes, item: str) -> bool:
    """Whether the (non-empty) id ``item`` is in the column."""
    return has_token(col, token(item))


def has_token(col: bytes, tok: bytes) -> bool:
    """:func:`contains` for an id already made a :func:`token` (non-empty)."""
    return SEP + tok in col


def first(col: bytes) -> str:
    """The first id (the column must not be empty)."""
    return col[1:col.index(SEP, 1)].decode()


def drop_first(col: bytes) -> bytes:
    """The column without its first id."""
    return col[col.index(SEP, 1):]


def insert(col: bytes, pos: int, tok: bytes) -> bytes:
    """The column with ``tok`` (a :func:`token`) inserted before its id number ``pos``."""
    at = 0
    for _ in range(pos):
        at = col.index(SEP, at + 1)
    return col[:at + 1] + tok + col[at + 1:]


def count(col: bytes) -> int:
    """How many ids the column holds."""
    return col.count(SEP) - 1


def check(col: bytes) -> None:
    """ValueError unless ``col`` is a packed column of valid UTF-8 ids: what a stored
    state's column must be."""
    if col[:1] != SEP or col[-1:] != SEP:
        raise ValueError("not a packed id column")
    # (an ASCII byte in place of each separator: no invalid id can join its neighbour's
    # bytes into valid UTF-8; UnicodeDecodeError is a ValueError)
    col.replace(SEP, b"\x00").decode()
