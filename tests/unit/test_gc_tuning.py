"""The worker's garbage collector thresholds come from the settings."""

from __future__ import annotations

import gc

import pytest
from pydantic import ValidationError

from kpistream.cli import tune_gc
from kpistream.settings import Settings


def test_tune_gc_sets_the_configured_thresholds_and_freezes_startup_objects() -> None:
    saved = gc.get_threshold()
    try:
        tune_gc(Settings(gc_thresholds="1234,7,9"))  # type: ignore[arg-type]
        assert gc.get_threshold() == (1234, 7, 9)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)


def test_default_thresholds_are_far_above_pythons() -> None:
    assert Settings().gc_thresholds[0] >= 10 * gc.get_threshold()[0]


@pytest.mark.parametrize("text", ["0,10,10", "1000,10", "a,b,c", "[1, 2]"])
def test_bad_thresholds_are_a_clear_error(text: str) -> None:
    with pytest.raises(ValidationError, match="gc_thresholds"):
        Settings(gc_thresholds=text)  # type: ignore[arg-type]


def test_thresholds_may_be_a_json_list() -> None:
    assert Settings(gc_thresholds="[9000, 5, 50]").gc_thresholds == (9000, 5, 50)  # type: ignore[arg-type]
