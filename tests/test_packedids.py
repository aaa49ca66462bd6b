"""Packed id columns (recall.packedids) against the lists they replace: every step the
worker takes on a window's ids gives what the list step gives, for any ids a message
can carry (any non-empty str without lone surrogates, up to 256 characters)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recall import packedids as p

# what orjson parses: any str but lone surrogates (it refuses them)
IDS = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)


@given(st.lists(IDS, max_size=8))
def test_pack_round_trips_any_ids(ids: list[str]) -> None:
    col = p.pack(ids)
    assert p.unpack(col) == ids
    assert p.count(col) == len(ids)
    p.check(col)


@given(st.lists(st.one_of(st.none(), IDS), max_size=8))
def test_missing_event_ids_round_trip_as_none(ids: list[str | None]) -> None:
    assert p.unpack_optional(p.pack(ids)) == ids


@given(st.lists(IDS, max_size=8), IDS)
def test_contains_is_list_membership(ids: list[str], probe: str) -> None:
    col = p.pack(ids)
    assert p.contains(col, probe) == (probe in ids)
    for i in ids:
        assert p.contains(col, i)


def test_contains_matches_whole_ids_only() -> None:
    col = p.pack(["i12", "xi1", "é", "a b"])
    for part in ("i1", "2", "1", "x", "a", "b"):
        assert not p.contains(col, part)
    assert p.contains(col, "é") and p.contains(col, "a b")


@given(st.lists(IDS, min_size=1, max_size=8), IDS, st.integers(0, 8))
def test_window_steps_match_the_list_steps(ids: list[str], new: str, at: int) -> None:
    col = p.pack(ids)
    assert p.first(col) == ids[0]
    assert p.unpack(p.drop_first(col)) == ids[1:]
    assert p.unpack(col + p.token(new)) == [*ids, new]
    at = min(at, len(ids))
    want = list(ids)
    want.insert(at, new)
    assert p.unpack(p.insert(col, at, p.token(new))) == want


def test_an_id_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError):
        p.pack(["ok", "\ud800"])


@pytest.mark.parametrize("bad", [
    b"", b"i1\xff", b"\xffi1", b"\xffi1",
    b"\xff\xc3\xff\xa9\xff",  # two halves of "é": valid UTF-8 only if joined
    b"\xff\x80\xff",
])
def test_check_refuses_what_is_not_a_packed_column(bad: bytes) -> None:
    with pytest.raises(ValueError):
        p.check(bad)
