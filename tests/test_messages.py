"""Message parsing and validation: every bad input is an Invalid with its reason."""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recall.messages import (
    REASONS,
    Click,
    Invalid,
    ItemDelete,
    ItemUpsert,
    Request,
    dlq_record,
    parse_click,
    parse_item,
    parse_items,
    parse_request,
    response_record,
)

DIM = 4


def dumps(obj: object) -> bytes:
    return orjson.dumps(obj)


def reason_of(fn, *args) -> str:
    with pytest.raises(Invalid) as info:
        fn(*args)
    assert info.value.reason in REASONS
    return info.value.reason


# --- clicks -------------------------------------------------------------------


def test_click_defaults_and_fields() -> None:
    assert parse_click(dumps({"user_id": "u", "item_id": "i"}), 123.5) == Click(
        "u", "i", 123.5, 1.0, None)
    c = parse_click(dumps({"user_id": "u", "item_id": "i", "ts": 7, "event_id": "e",
                           "weight": 2.5, "extra": [1]}), 0.0)
    assert c == Click("u", "i", 7.0, 2.5, "e")


@pytest.mark.parametrize(("value", "reason"), [
    (b"", "not_json"),
    (None, "not_json"),
    (b"{nope", "not_json"),
    (b"\xff\xfe", "not_json"),
    (b"[1, 2]", "not_object"),
    (b'"text"', "not_object"),
    (dumps({"item_id": "i"}), "missing_field"),
    (dumps({"user_id": None, "item_id": "i"}), "missing_field"),
    (dumps({"user_id": 5, "item_id": "i"}), "wrong_type"),
    (dumps({"user_id": "u", "item_id": ""}), "out_of_range"),
    (dumps({"user_id": "u" * 257, "item_id": "i"}), "out_of_range"),
    (dumps({"user_id": "u", "item_id": "i", "ts": "1"}), "wrong_type"),
    (dumps({"user_id": "u", "item_id": "i", "ts": True}), "wrong_type"),
    (dumps({"user_id": "u", "item_id": "i", "ts": -1}), "out_of_range"),
    (dumps({"user_id": "u", "item_id": "i", "ts": 1.7e12}), "out_of_range"),  # ms
    (b'{"user_id": "u", "item_id": "i", "ts": 1e999}', "not_finite"),
    (dumps({"user_id": "u", "item_id": "i", "weight": 0}), "out_of_range"),
    (dumps({"user_id": "u", "item_id": "i", "weight": -2}), "out_of_range"),
    (dumps({"user_id": "u", "item_id": "i", "weight": False}), "wrong_type"),
    (dumps({"user_id": "u", "item_id": "i", "event_id": 3}), "wrong_type"),
])
def test_bad_clicks(value, reason) -> None:
    assert reason_of(parse_click, value, 1.0) == reason


def test_oversized_is_rejected_before_parsing() -> None:
    raw = b"{" + b" " * 2000 + b"}"  # would parse, but is too big
    with pytest.raises(Invalid) as info:
        parse_click(raw, 1.0, 1024)
    assert info.value.reason == "oversized"


# --- items --------------------------------------------------------------------


def test_item_upsert_is_normalised_float32() -> None:
    item = parse_item(dumps({"item_id": "a", "vector": [3, 0, 4.0, 0]}), DIM)
    assert isinstance(item, ItemUpsert) and item.item_id == "a"
    assert item.vector.dtype == np.float32
    np.testing.assert_allclose(item.vector, [0.6, 0, 0.8, 0], rtol=1e-6)


def test_huge_item_vector_is_normalised_without_overflow() -> None:
    item = parse_item(dumps({"item_id": "a", "vector": [1e308, -1e308, 0, 0]}), DIM)
    np.testing.assert_allclose(item.vector, [0.70710677, -0.70710677, 0, 0], rtol=1e-6)


def test_item_delete() -> None:
    assert parse_item(dumps({"item_id": "a", "deleted": True}), DIM) == ItemDelete("a")
    # deleted: false is an upsert, which needs its vector
    assert reason_of(parse_item, dumps({"item_id": "a", "deleted": False}), DIM) == (
        "missing_field")


BAD_ITEMS = [
    ({"vector": [1, 0, 0, 0]}, "missing_field"),
    ({"item_id": "a"}, "missing_field"),
    ({"item_id": "a", "vector": "1,2,3,4"}, "wrong_type"),
    ({"item_id": "a", "vector": [1, 0, 0]}, "bad_dimension"),
    ({"item_id": "a", "vector": [1, 0, 0, 0, 0]}, "bad_dimension"),
    ({"item_id": "a", "vector": [1, 0, "0", 0]}, "wrong_type"),
    ({"item_id": "a", "vector": [1, 0, True, 0]}, "wrong_type"),
    ({"item_id": "a", "vector": [1, 0, None, 0]}, "wrong_type"),
    ({"item_id": "a", "vector": [0, 0, 0, 0]}, "zero_vector"),
    ({"item_id": "a", "deleted": "yes"}, "wrong_type"),
]


@pytest.mark.parametrize(("obj", "reason"), BAD_ITEMS)
def test_bad_items(obj, reason) -> None:
    assert reason_of(parse_item, dumps(obj), DIM) == reason


def test_items_parsed_together_are_each_parsed_alone() -> None:
    """The follower parses a fetch's item messages at once: each result must be what
    parse_item gives for that message alone (the same vector bit for bit, the same
    reason for a bad one), in order, bad ones among good ones."""
    rng = np.random.default_rng(3)
    raws: list = [dumps({"item_id": f"g{j}", "vector": rng.standard_normal(DIM).tolist()})
                  for j in range(40)]
    raws += [dumps({"item_id": "i", "vector": [3, 0, 4, 0]}),  # ints
             dumps({"item_id": "h", "vector": [1e308, -1e308, 0, 0]}),
             dumps({"item_id": "d", "deleted": True}),
             dumps({"item_id": "e", "deleted": True, "vector": [1, 2, 3, 4]}),
             dumps({"item_id": "y", "deleted": "yes", "vector": [1, 2, 3, 4]}),
             dumps({"item_id": "u", "deleted": False, "vector": [1, 2, 3, 4]}),
             b'{"item_id": "a", "vector": [1e400, 0, 0, 1]}', b"", None, b"[1]",
             b'{"item_id": "a", "vector": [0.5, NaN, 0, 1]}', b"{" + b" " * 5000 + b"}"]
    raws += [dumps(obj) for obj, _ in BAD_ITEMS]
    order = rng.permutation(len(raws))
    raws = [raws[i] for i in order]
    got = parse_items(raws, DIM, 4096)
    assert len(got) == len(raws)
    for raw, one in zip(raws, got, strict=True):
        try:
            alone = parse_item(raw, DIM, 4096)
        except Invalid as exc:
            assert isinstance(one, Invalid) and one.reason == exc.reason, raw
            continue
        assert type(one) is type(alone) and one.item_id == alone.item_id, raw
        if isinstance(alone, ItemUpsert):
            assert one.vector.dtype == np.float32
            np.testing.assert_array_equal(one.vector, alone.vector)
    assert parse_items([], DIM) == []


def test_item_with_nan_or_infinity_literal_is_not_finite() -> None:
    """The contract's reason for NaN / infinite numbers is not_finite, also when they come
    as the NaN / Infinity literals Python's json writes (orjson rejects them as syntax)."""
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = b'{"item_id": "a", "vector": [0.5, ' + literal.encode() + b', 0, 1]}'
        assert reason_of(parse_item, raw, DIM) == "not_finite", literal
        assert reason_of(parse_click, b'{"user_id": "u", "item_id": "i", "weight": '
                         + literal.encode() + b"}", 0.0) == "not_finite", literal
    for junk in (b'{"item_id": "a", "vector": [Nope]}', b'{"item_id": "a", "vector": [-x]}',
                 b"Na", b'{"a": nan}'):
        assert reason_of(parse_item, junk, DIM) == "not_json", junk
    assert reason_of(parse_item, b'{"item_id": "a", "vector": [1e400, 0, 0, 1]}', DIM) == (
        "not_finite")


# --- requests -----------------------------------------------------------------


def test_request_defaults() -> None:
    assert parse_request(dumps({"request_id": "r", "user_id": "u"})) == Request("r", "u", 10,
                                                                                 True)
    assert parse_request(dumps({"request_id": "r", "user_id": "u", "k": 1000,
                                "exclude_seen": False})) == Request("r", "u", 1000, False)


@pytest.mark.parametrize(("obj", "reason", "rid", "uid"), [
    ({"user_id": "u"}, "missing_field", None, "u"),
    ({"request_id": 7, "user_id": "u"}, "wrong_type", None, "u"),
    ({"request_id": "r"}, "missing_field", "r", None),
    ({"request_id": "r", "user_id": ["u"]}, "wrong_type", "r", None),
    ({"request_id": "r", "user_id": "u", "k": 0}, "out_of_range", "r", "u"),
    ({"request_id": "r", "user_id": "u", "k": 1001}, "out_of_range", "r", "u"),
    ({"request_id": "r", "user_id": "u", "k": 2.0}, "wrong_type", "r", "u"),
    ({"request_id": "r", "user_id": "u", "k": True}, "wrong_type", "r", "u"),
    ({"request_id": "r", "user_id": "u", "exclude_seen": 1}, "wrong_type", "r", "u"),
])
def test_bad_requests_keep_their_ids(obj, reason, rid, uid) -> None:
    with pytest.raises(Invalid) as info:
        parse_request(dumps(obj))
    assert (info.value.reason, info.value.request_id, info.value.user_id) == (reason, rid, uid)


def test_an_over_long_request_id_is_invalid_but_still_answered() -> None:
    """Over 256 characters a request_id is out of range (DLQ), but it can be read, so its
    caller must get an ``invalid`` response under it (CONTRACT: every request whose
    request_id can be read gets exactly one response)."""
    rid = "r" * 300
    with pytest.raises(Invalid) as info:
        parse_request(dumps({"request_id": rid, "user_id": "u"}))
    assert (info.value.reason, info.value.request_id, info.value.user_id) == (
        "out_of_range", rid, "u")


def test_unparseable_request_has_no_id() -> None:
    with pytest.raises(Invalid) as info:
        parse_request(b'{"request_id": "r", ')
    assert info.value.reason == "not_json" and info.value.request_id is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5)
    | st.lists(st.floats(), min_size=DIM, max_size=DIM),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.sampled_from(["user_id", "item_id", "request_id", "k", "ts", "weight", "vector",
                         "deleted", "event_id", "exclude_seen"]), inner, max_size=6),
    max_leaves=20,
).map(lambda o: json.dumps(o).encode()))  # stdlib: NaN, Infinity, big ints too
def test_parsers_never_raise_anything_but_invalid(raw: bytes) -> None:
    for fn, args in ((parse_click, (raw, 1.0)), (parse_item, (raw, DIM)),
                     (parse_request, (raw,))):
        try:
            fn(*args)
        except Invalid as exc:
            assert exc.reason in REASONS


# --- records ------------------------------------------------------------------


def test_dlq_record_keeps_original_bytes() -> None:
    raw = b"\xffnot json"
    rec = orjson.loads(dlq_record("items", 3, 42, "not_json", "bad", raw, key=b"k1"))
    assert (rec["topic"], rec["partition"], rec["offset"], rec["reason"], rec["error"]) == (
        "items", 3, 42, "not_json", "bad")
    assert base64.b64decode(rec["value_b64"]) == raw
    assert "value_text" not in rec  # not UTF-8
    assert rec["key_text"] == "k1" and isinstance(rec["ts"], float)
    rec = orjson.loads(dlq_record("clicks", 0, 1, "not_object", "x", b"[1]"))
    assert rec["value_text"] == "[1]"


def test_response_record() -> None:
    rec = orjson.loads(response_record("r", "u", "ok", [("a", np.float32(0.5)), ("b", 0.25)],
                                       "lsh"))
    assert rec == {"request_id": "r", "user_id": "u", "status": "ok", "source": "lsh",
                   "items": [{"item_id": "a", "score": 0.5}, {"item_id": "b", "score": 0.25}]}
    rec = orjson.loads(response_record("r", None, "invalid", [], "none", error="k: bad"))
    assert rec["error"] == "k: bad" and rec["items"] == [] and rec["user_id"] == ""


def test_a_dlq_record_of_a_huge_message_is_truncated_with_its_size_and_digest() -> None:
    raw = b"this is not json " + b"y" * 600_000
    key = b"k" * 5000
    out = dlq_record("clicks", 1, 7, "not_json", "bad", raw, key=key, max_bytes=100_000)
    assert len(out) <= 100_000
    rec = orjson.loads(out)
    assert rec["truncated"] is True and rec["reason"] == "not_json"
    assert rec["value_size"] == len(raw) and rec["key_size"] == len(key)
    assert rec["value_sha256"] == hashlib.sha256(raw).hexdigest()
    assert rec["key_sha256"] == hashlib.sha256(key).hexdigest()
    value_head = base64.b64decode(rec["value_b64"])
    assert raw.startswith(value_head) and len(value_head) > 50_000  # the room is used
    assert base64.b64decode(rec["key_b64"]) == key
    assert "value_text" not in rec and "key_text" not in rec


def test_a_dlq_record_that_fits_is_whole_and_not_marked_truncated() -> None:
    raw = b"x" * 30_000
    rec = orjson.loads(dlq_record("items", 0, 1, "not_json", "bad", raw, max_bytes=100_000))
    assert "truncated" not in rec and base64.b64decode(rec["value_b64"]) == raw


def test_the_default_dlq_record_fits_the_producers_1mb_limit() -> None:
    for size in (430_000, 600_000, 5_000_000):
        assert len(dlq_record("clicks", 0, 1, "oversized", "x", b"\xff" * size)) < 1_000_000
