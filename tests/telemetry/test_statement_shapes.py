"""Hot-path SQL comes in a few shapes only: SQLite caches a compiled statement per distinct SQL text and
per connection, so one text per batch size grew the station's memory for as long as new sizes came up."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from waystation.db import in_list
from waystation.telemetry.ingest import INSERT_CHUNK_ROWS, pow2_chunks


@given(st.integers(0, 5000))
def test_insert_chunks_keep_every_row_in_order_in_power_of_two_sizes(count: int) -> None:
    rows = list(range(count))
    chunks = list(pow2_chunks(rows, INSERT_CHUNK_ROWS))
    assert [row for chunk in chunks for row in chunk] == rows
    sizes = {len(chunk) for chunk in chunks}
    assert all(size & (size - 1) == 0 and size <= INSERT_CHUNK_ROWS for size in sizes)
    assert INSERT_CHUNK_ROWS <= 1000  # SQLAlchemy splits larger executemany pages into new texts again


def test_every_batch_size_needs_at_most_ten_insert_texts() -> None:
    shapes = {
        len(chunk) for count in range(1, 2001) for chunk in pow2_chunks(list(range(count)), INSERT_CHUNK_ROWS)
    }
    assert len(shapes) <= 10


@given(st.lists(st.text(max_size=5), max_size=300))
def test_in_lists_are_padded_to_a_power_of_two_without_changing_their_meaning(values: list[str]) -> None:
    padded = in_list(values)
    assert set(padded) == set(values)
    if values:
        assert len(padded) & (len(padded) - 1) == 0
        assert len(padded) < 2 * len(values)
    else:
        assert padded == []
