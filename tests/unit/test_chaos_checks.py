"""The chaos harness's own checks find what they look for."""

from __future__ import annotations

from tests.chaos.harness import altered_dead_letters
from tests.support.topics import Record


def _dead_letter(key: bytes, value: bytes | None) -> Record:
    return Record(key=key, value=value, headers={}, partition=0, offset=0)


def test_a_dead_letter_whose_value_changed_is_named() -> None:
    sent = [(b"A", b"\x02aa"), (b"B", b"\x02bb"), (b"C", b"")]
    dead_letters = [
        _dead_letter(b"A", b"\x02aa"),  # as sent
        _dead_letter(b"B", b"\x02bX"),  # one byte differs
        _dead_letter(b"C", None),  # an empty value read back as null
        _dead_letter(b"Z", b"other"),  # not an input record
    ]
    assert altered_dead_letters(sent, dead_letters) == ["B"]


def test_a_truncated_dead_letter_is_named_once() -> None:
    sent = [(b"A", b"\x02aa")]
    dead_letters = [_dead_letter(b"A", b"\x02a"), _dead_letter(b"A", b"\x02a")]
    assert altered_dead_letters(sent, dead_letters) == ["A"]
