"""SQS's request limits as the helpers keep them: at most 10 entries and 1 MiB per batch request, only characters
SQS accepts in a text. A batch split too eagerly costs requests; one not split is refused whole by SQS."""

from __future__ import annotations

import pytest

from chalicelib.sqs_limits import BATCH_ENTRIES, PAYLOAD_BYTES, allowed_text, batches_within, chunks


def test_small_entries_fill_batches_of_ten() -> None:
    assert batches_within(list(range(23)), lambda _: 1) == [list(range(10)), list(range(10, 20)), [20, 21, 22]]


def test_a_few_small_entries_make_one_request() -> None:
    assert batches_within([1, 2, 3], lambda _: 100) == [[1, 2, 3]]


def test_a_batch_may_hold_exactly_the_payload_limit() -> None:
    half = PAYLOAD_BYTES // 2
    assert batches_within([half, PAYLOAD_BYTES - half], lambda size: size) == [[half, PAYLOAD_BYTES - half]]


def test_one_byte_over_the_limit_starts_a_new_batch() -> None:
    half = PAYLOAD_BYTES // 2
    assert batches_within([half, half + 1, 5], lambda size: size) == [[half], [half + 1, 5]]


def test_an_entry_at_the_limit_goes_alone_and_nothing_is_dropped() -> None:
    items = [10, PAYLOAD_BYTES, 10]
    assert batches_within(items, lambda size: size) == [[10], [PAYLOAD_BYTES], [10]]
    assert batches_within([], lambda size: size) == []


def test_chunks_are_of_ten_in_order() -> None:
    assert chunks(list(range(21))) == [list(range(10)), list(range(10, 20)), [20]]
    assert chunks("abc", size=2) == [["a", "b"], ["c"]]
    assert len(chunks(list(range(BATCH_ENTRIES)))) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain ü € 𝄞\t\n\r", "plain ü € 𝄞\t\n\r"),
        ("a\x00b\x1fc", "a\ufffdb\ufffdc"),
        ("lone \ud800 surrogate", "lone \ufffd surrogate"),
        ("\ufffe\uffff", "\ufffd\ufffd"),
    ],
)
def test_allowed_text_replaces_only_what_sqs_refuses(text: str, expected: str) -> None:
    assert allowed_text(text) == expected
