"""The offset-gap rule: replays pass, a gap stops the batch and names where to seek."""

from __future__ import annotations

import pytest

from kpistream.state.offsets import split_contiguous


@pytest.mark.parametrize(("offsets", "expected", "result"), [
    ([], None, (0, None)),
    ([5, 6, 7], None, (3, None)),           # nothing known yet: take what comes
    ([5, 6, 7], 5, (3, None)),              # exactly the next ones
    ([3, 4, 5, 6], 5, (4, None)),           # replays of 3, 4 then new ones
    ([7, 8], 5, (0, 5)),                    # records 5 and 6 were skipped: seek back to 5
    ([5, 6, 8, 9], 5, (2, 7)),              # a hole inside the batch
    ([5, 5, 6], 5, (3, None)),              # a repeated delivery is a replay
])
def test_split_contiguous(offsets: list[int], expected: int | None,
                          result: tuple[int, int | None]) -> None:
    assert split_contiguous(offsets, expected) == result
