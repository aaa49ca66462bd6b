"""Parsing and validation of the contract's messages, and the records the worker writes.

Pure functions over raw Kafka values (bytes, decoded with orjson); no I/O. Every
problem raises :class:`Invalid` with a short snake_case ``reason`` -- the ``reason``
label of ``recall_invalid_messages_total`` -- and a human-readable message:

    not_json      not UTF-8 JSON (or an empty value)
    not_object    JSON, but not an object
    missing_field a required field is absent (or null)
    wrong_type    a field has the wrong type (bool is not a number; ids are strings)
    bad_dimension an item vector's length is not RECALL_DIM
    not_finite    NaN or an infinite number
    zero_vector   an item vector of norm 0 (cosine is undefined)
    oversized     more than ``max_bytes`` bytes (rejected before parsing)
    out_of_range  a number outside its range (k, weight, ts), an over-long id

Unknown extra fields are ignored (forward compatibility).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

#: longest user / item / request / event id accepted, characters
MAX_ID_LENGTH = 256
#: longest request_id echoed in an ``invalid`` response (a longer one is not a valid id,
#: but still readable: its caller is told). Bounded so the response -- the id as key and
#: in the value, JSON-escaped up to 6 bytes a character -- stays under the producer's 1 MB
MAX_ECHO_ID_LENGTH = 64_000
#: default limit on a raw message (Settings.max_message_bytes)
DEFAULT_MAX_BYTES = 1_000_000
#: a ts above this is taken for milliseconds, not seconds (year 5138)
MAX_TS_SECONDS = 1e11
#: largest recall-dlq record written: the producer refuses records over 1 MB
#: (max_request_size 1,048,576 less the record batch's overhead)
DLQ_MAX_BYTES = 900_000
#: longest error text kept in a DLQ record
MAX_ERROR_CHARS = 1000
MAX_K = 1000
DEFAULT_K = 10

REASONS = (
    "not_json", "not_object", "missing_field", "wrong_type", "bad_dimension",
    "not_finite", "zero_vector", "oversized", "out_of_range",
)

Raw = bytes | bytearray | memoryview | str | None


class Invalid(ValueError):
    """A message that cannot be used. ``reason`` is one of :data:`REASONS`.

    For a request, ``request_id`` (and ``user_id``) are set when they could be read,
    so the worker can still answer with ``status: invalid``.
    """

    def __init__(self, reason: str, message: str, request_id: str | None = None,
                 user_id: str | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.request_id = request_id
        self.user_id = user_id


@dataclass(frozen=True, slots=True)
class Click:
    user_id: str
    item_id: str
    ts: float  # seconds since the epoch
    weight: float = 1.0
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class ItemUpsert:
    item_id: str
    vector: np.ndarray  # (D,) float32, L2-normalised


@dataclass(frozen=True, slots=True)
class ItemDelete:
    item_id: str


@dataclass(frozen=True, slots=True)
class Request:
    request_id: str
    user_id: str
    k: int = DEFAULT_K
    exclude_seen: bool = True


# --- helpers ---------------------------------------------------------------


def _load(raw: Raw, max_bytes: int) -> dict[str, Any]:
    if raw is None or len(raw) == 0:
        raise Invalid("not_json", "empty message")
    if len(raw) > max_bytes:
        raise Invalid("oversized", f"{len(raw)} bytes > limit {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "infinity" in str(exc):
            raise Invalid("not_finite", f"number too large: {exc}") from None
        if _non_finite_literal(raw, exc.pos):
            raise Invalid("not_finite", f"NaN or Infinity literal: {exc}") from None
        raise Invalid("not_json", str(exc)) from None
    if not isinstance(obj, dict):
        raise Invalid("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


#: literals some encoders (Python's json, for one) write for non-finite numbers; JSON has
#: none and orjson rejects them, but the contract's reason for them is ``not_finite``
_NON_FINITE = (b"NaN", b"Infinity", b"-Infinity", b"-NaN")


def _non_finite_literal(raw: Raw, pos: int) -> bool:
    """Whether orjson's parse error at ``pos`` is a NaN / Infinity literal (it reports
    ``-Infinity`` one past the sign, hence the window starts a character early)."""
    window = raw[max(0, pos - 1):pos + 10] if raw is not None and pos > 0 else raw[:10]
    window = window.encode("utf-8", "replace") if isinstance(window, str) else bytes(window)
    at = window[1:] if pos > 0 else window
    return at.startswith(_NON_FINITE) or window.startswith((b"-Infinity", b"-NaN"))


def _is_number(x: object) -> bool:
    return type(x) is float or type(x) is int  # bool is not a number


def _id(obj: dict[str, Any], field: str, required: bool = True) -> str | None:
    value = obj.get(field)
    if value is None:
        if required:
            raise Invalid("missing_field", f"{field!r} is required")
        return None
    if not isinstance(value, str):
        raise Invalid("wrong_type", f"{field!r} must be a string, got {type(value).__name__}")
    if not value:
        raise Invalid("out_of_range", f"{field!r} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise Invalid("out_of_range", f"{field!r} longer than {MAX_ID_LENGTH} characters")
    return value


def _number(obj: dict[str, Any], field: str) -> float | None:
    value = obj.get(field)
    if value is None:
        return None
    if not _is_number(value):
        raise Invalid("wrong_type", f"{field!r} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise Invalid("not_finite", f"{field!r} is not finite")
    return value


# --- parsers ---------------------------------------------------------------


def parse_click(raw: Raw, record_ts: float, max_bytes: int = DEFAULT_MAX_BYTES) -> Click:
    """A ``clicks`` value. ``record_ts`` (seconds) is used when ``ts`` is absent."""
    obj = _load(raw, max_bytes)
    user_id = _id(obj, "user_id")
    item_id = _id(obj, "item_id")
    event_id = _id(obj, "event_id", required=False)
    ts = _number(obj, "ts")
    if ts is None:
        ts = float(record_ts)
    if not 0 <= ts <= MAX_TS_SECONDS:
        raise Invalid("out_of_range", f"'ts' {ts!r} is not seconds since the epoch")
    weight = _number(obj, "weight")
    if weight is None:
        weight = 1.0
    elif weight <= 0:
        raise Invalid("out_of_range", f"'weight' must be > 0, got {weight!r}")
    return Click(user_id, item_id, ts, weight, event_id)  # type: ignore[arg-type]


def parse_item(raw: Raw, dim: int, max_bytes: int = DEFAULT_MAX_BYTES) -> ItemUpsert | ItemDelete:
    """An ``items`` value: an upsert (vector normalised to float32) or a delete."""
    obj = _load(raw, max_bytes)
    return _item(obj, _id(obj, "item_id"), dim)


def _item(obj: dict[str, Any], item_id: str | None, dim: int) -> ItemUpsert | ItemDelete:
    """:func:`parse_item` of a loaded ``items`` value whose id was read."""
    deleted = obj.get("deleted")
    if deleted is not None and type(deleted) is not bool:
        raise Invalid("wrong_type", "'deleted' must be true or false")
    if deleted:
        return ItemDelete(item_id)  # type: ignore[arg-type]
    vector = obj.get("vector")
    if vector is None:
        raise Invalid("missing_field", "'vector' is required (or 'deleted': true)")
    if not isinstance(vector, list):
        raise Invalid("wrong_type", f"'vector' must be an array, got {type(vector).__name__}")
    if len(vector) != dim:
        raise Invalid("bad_dimension", f"'vector' has {len(vector)} numbers, expected {dim}")
    if not all(map(_is_number, vector)):
        raise Invalid("wrong_type", "'vector' must hold only numbers")
    v = np.asarray(vector, dtype=np.float64)
    if not np.isfinite(v).all():
        raise Invalid("not_finite", "'vector' holds a non-finite number")
    biggest = float(np.abs(v).max()) if dim else 0.0
    if biggest == 0.0:
        raise Invalid("zero_vector", "'vector' is all zeros: it has no direction")
    return ItemUpsert(item_id, _unit_rows(v[None, :])[0])  # type: ignore[arg-type]


def _unit_rows(v: np.ndarray) -> np.ndarray:
    """(n, D) finite, non-zero float64 rows -> L2-normalised float32 rows; each row is
    scaled by its largest magnitude first, so its norm cannot overflow. Each row gets the
    same numbers whatever n (parse_item and parse_items agree bit for bit)."""
    v = v / np.abs(v).max(axis=1, keepdims=True)
    v /= np.sqrt(np.einsum("ij,ij->i", v, v))[:, None]
    return v.astype(np.float32)


_NUMBER_TYPES = frozenset((float, int))  # bool is not a number


def parse_items(raws: Iterable[Raw], dim: int, max_bytes: int = DEFAULT_MAX_BYTES
                ) -> list[ItemUpsert | ItemDelete | Invalid]:
    """:func:`parse_item` of each value, in order, an :class:`Invalid` in place of a bad
    one. The per-message Python is the JSON parse and a type check of the numbers
    (``map(type, ...)``: no Python call per number); the vectors are converted, checked
    and normalised as one matrix. A message off that path (a delete, any problem) goes
    through parse_item's own checks (its JSON not parsed again), so its result or error
    is parse_item's."""
    out: list[ItemUpsert | ItemDelete | Invalid | None] = []
    rows: list[list[Any]] = []
    fast: list[tuple[int, str, dict[str, Any]]] = []  # (position in out, id, value) per row
    slow: list[tuple[int, dict[str, Any], str | None]] = []
    for raw in raws:
        try:
            obj = _load(raw, max_bytes)
            item_id = _id(obj, "item_id")
        except Invalid as exc:
            out.append(exc)
            continue
        vector = obj.get("vector")
        if ("deleted" in obj or type(vector) is not list or len(vector) != dim or not dim
                or not _NUMBER_TYPES.issuperset(map(type, vector))):
            slow.append((len(out), obj, item_id))
        else:
            fast.append((len(out), item_id, obj))  # type: ignore[arg-type]
            rows.append(vector)
        out.append(None)
    if rows:
        v = np.array(rows, dtype=np.float64)
        good = np.isfinite(v).all(axis=1) & (np.abs(v).max(axis=1) > 0.0)
        unit = iter(_unit_rows(v[good]))
        for (i, item_id, obj), ok in zip(fast, good.tolist(), strict=True):
            if ok:
                out[i] = ItemUpsert(item_id, next(unit))
            else:
                slow.append((i, obj, item_id))
    for i, obj, item_id in slow:
        try:
            out[i] = _item(obj, item_id, dim)
        except Invalid as exc:
            out[i] = exc
    return out  # type: ignore[return-value]


def parse_request(raw: Raw, max_bytes: int = DEFAULT_MAX_BYTES) -> Request:
    """A ``recall-requests`` value. An Invalid carries request_id/user_id when readable."""
    obj = _load(raw, max_bytes)
    rid = obj.get("request_id")
    uid = obj.get("user_id")
    # an over-long request_id is invalid, but readable: its caller still gets an answer
    known_rid = rid if isinstance(rid, str) and 0 < len(rid) <= MAX_ECHO_ID_LENGTH else None
    known_uid = uid if isinstance(uid, str) and 0 < len(uid) <= MAX_ID_LENGTH else None
    try:
        request_id = _id(obj, "request_id")
        user_id = _id(obj, "user_id")
        k = obj.get("k")
        if k is None:
            k = DEFAULT_K
        elif type(k) is not int:
            raise Invalid("wrong_type", f"'k' must be an integer, got {type(k).__name__}")
        elif not 1 <= k <= MAX_K:
            raise Invalid("out_of_range", f"'k' must be from 1 to {MAX_K}, got {k}")
        exclude_seen = obj.get("exclude_seen")
        if exclude_seen is None:
            exclude_seen = True
        elif type(exclude_seen) is not bool:
            raise Invalid("wrong_type", "'exclude_seen' must be true or false")
    except Invalid as exc:
        exc.request_id, exc.user_id = known_rid, known_uid
        raise
    return Request(request_id, user_id, k, exclude_seen)  # type: ignore[arg-type]


# --- records written by the worker ----------------------------------------


def dlq_record(topic: str, partition: int, offset: int, reason: str, message: str,
               raw: Raw, key: bytes | None = None, max_bytes: int = DLQ_MAX_BYTES) -> bytes:
    """The ``recall-dlq`` value for an unusable message, never over ``max_bytes``.

    ``{"topic", "partition", "offset", "reason", "error", "value_b64", "value_text"?,
    "key_b64"?, "key_text"?, "ts"}``: the original bytes in base64, plus a UTF-8 text copy
    when they decode; ``ts`` is when the record was written (seconds since the epoch).

    Base64 plus the text copy make a record ~2.3x its message, and the producer refuses
    records over 1 MB: a message that cannot be dead-lettered whole is dead-lettered
    *truncated* -- ``truncated: true``, the original ``value_size`` / ``key_size`` and
    ``value_sha256`` / ``key_sha256``, the base64 of a prefix, no text copy -- so that no
    message, however large, can make its partition retry the DLQ write forever.
    """
    record: dict[str, Any] = {
        "topic": topic, "partition": partition, "offset": offset,
        "reason": reason, "error": message[:MAX_ERROR_CHARS],
    }
    parts = {"value": _as_bytes(raw), "key": _as_bytes(key)}
    for name, data in parts.items():
        if data is None:
            if name == "value":
                record["value_b64"] = None
            continue
        record[f"{name}_b64"] = base64.b64encode(data).decode("ascii")
        with contextlib.suppress(UnicodeDecodeError):
            record[f"{name}_text"] = data.decode("utf-8")
    record["ts"] = time.time()
    out = orjson.dumps(record)
    if len(out) <= max_bytes:
        return out
    record["truncated"] = True
    for name, data in parts.items():
        record.pop(f"{name}_text", None)
        if data is not None:
            record[f"{name}_size"] = len(data)
            record[f"{name}_sha256"] = hashlib.sha256(data).hexdigest()
            record[f"{name}_b64"] = ""
    # what is left for the prefixes (base64: 4 bytes per 3), keys first (usually short)
    room = max(0, (max_bytes - len(orjson.dumps(record)) - 16) * 3 // 4)
    for name in ("key", "value"):
        data = parts[name]
        if data is not None:
            head = data[: room - room % 3]
            record[f"{name}_b64"] = base64.b64encode(head).decode("ascii")
            room -= len(head)
    return orjson.dumps(record)


def _as_bytes(value: Raw) -> bytes | None:
    if value is None:
        return None
    return value.encode() if isinstance(value, str) else bytes(value)


def response_record(request_id: str, user_id: str | None, status: str,
                    items: Iterable[tuple[str, float]], source: str,
                    error: str | None = None) -> bytes:
    """The ``recall-responses`` value; ``items`` best first as (item_id, score) pairs."""
    record: dict[str, Any] = {
        "request_id": request_id,
        "user_id": user_id if user_id is not None else "",
        "status": status,
        "items": [{"item_id": i, "score": float(s)} for i, s in items],
        "source": source,
    }
    if error is not None:
        record["error"] = error
    return orjson.dumps(record)
