"""Runs the CPO spike detector once per minute of each row's stream time (SPEC.md §6).

Pure: reads the roll-up cache (minute buckets of the window whose STEP is one minute, the
last hour, and the baseline window), advances each row's detector state through every
completed minute since the last one evaluated, and returns the new states and transitions.
The states a run leaves are held unsaved until the caller has delivered the transitions
judged with them (:meth:`AlertEngine.save`), then persisted in a changelog-backed table: a
crash in between judges those minutes again and repeats their transitions, with the same
``alert_id``, rather than losing them (at-least-once, docs/alerting.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kpistream.alerts.detector import (
    DetectorParams,
    DetectorState,
    MinuteInput,
    Transition,
    evaluate,
    minute_input,
)
from kpistream.kpi.formulas import SUM_FIELDS
from kpistream.settings import Settings
from kpistream.state.aggregate import NO_TIME
from kpistream.state.buckets import ALERT_DIMENSIONS, RowId
from kpistream.state.rollup import RollupState
from kpistream.state.store import SEP, Store

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
_ORDERS = SUM_FIELDS.index("orders")
_SPEND = SUM_FIELDS.index("spend")
_SHIFT = SUM_FIELDS.index("cancel_shift")


@dataclass(frozen=True, slots=True)
class AlertTransition:
    partition: int
    row: RowId
    transition: Transition


def alerts_enabled(settings: Settings) -> bool:
    """The detector needs a 1-minute-STEP window of at least an hour and the baseline
    window."""
    return bool(settings.alert_windows)


class AlertEngine:
    def __init__(self, settings: Settings, state: RollupState, store: Store) -> None:
        self.settings = settings
        self.params = DetectorParams.from_settings(settings)
        self.state = state
        self.store = store
        self.minute = settings.alert_minute_window
        self.baseline = settings.alert_baseline
        self.settle_ms = settings.idle_lag_ms
        # key -> (partition, state) of rows run() judged since the last save(). Persisted at
        # once, a state could reach the changelog before its transition reached the sinks,
        # and a crash in between lost the transition for good.
        self.unsaved: dict[str, tuple[int, list[Any]]] = {}

    @property
    def enabled(self) -> bool:
        return alerts_enabled(self.settings)

    @staticmethod
    def key(q: int, row: RowId) -> str:
        return f"{q}{SEP}{row[0]}{SEP}{row[1]}"

    def _held(self, key: str) -> list[Any] | None:
        unsaved = self.unsaved.get(key)
        return self.store.get(key) if unsaved is None else unsaved[1]

    def load(self, q: int, row: RowId) -> DetectorState:
        held = self._held(self.key(q, row))
        return DetectorState.from_list(held) if held else DetectorState()

    def firing(self, partitions: set[int]) -> Iterator[tuple[RowId, DetectorState]]:
        for q in partitions:
            keys = dict.fromkeys([*self.store.keys_of(q),
                                  *(key for key, (p, _) in self.unsaved.items() if p == q)])
            for key in keys:
                held = self._held(key)
                if held:
                    state = DetectorState.from_list(held)
                    if state.firing_kind is not None:
                        _, dimension, *group = key.split(SEP)
                        yield (dimension, SEP.join(group)), state

    def run(self, partitions: set[int], now_ms: int) -> list[AlertTransition]:
        """Evaluate every completed minute of every alerting row since its last one."""
        if not self.enabled:
            return []
        assert self.minute is not None and self.baseline is not None
        out: list[AlertTransition] = []
        for q in sorted(partitions):
            t = self.state.settled_time(q, now_ms)
            if t == NO_TIME:
                continue
            # Minutes every source partition has passed, less a settling margin for records
            # still on their way through the roll-up topic.
            last_complete = (t - self.settle_ms) // MINUTE_MS * MINUTE_MS
            self.state.evaluated[q] = last_complete
            for row, windows in self.state.cache.get(q, {}).items():
                if row[0] not in ALERT_DIMENSIONS or self.minute.name not in windows:
                    continue
                detector = self.load(q, row)
                held = windows[self.minute.name].totals
                if detector.last_minute is not None:
                    first = detector.last_minute + MINUTE_MS
                elif held:
                    # A new row is judged from its first minute: buckets are held until the
                    # detector has judged them, so this does not depend on arrival speed.
                    first = min(held) + MINUTE_MS
                else:
                    continue
                changed = False
                for minute_end in range(first, last_complete + 1, MINUTE_MS):
                    detector, transition = evaluate(
                        detector, self._input(windows, minute_end), self.params,
                        dimension=row[0], group=row[1])
                    changed = True
                    if transition is not None:
                        out.append(AlertTransition(q, row, transition))
                if changed:
                    self.unsaved[self.key(q, row)] = (q, detector.to_list())
        return out

    def save(self) -> None:
        """Persist the states :meth:`run` left; call once every sink has delivered the
        transitions it returned with them."""
        for key, (q, held) in self.unsaved.items():
            self.store.put(q, key, held)
        self.unsaved.clear()

    def forget(self, partitions: set[int]) -> None:
        """Drop the unsaved states of partitions this worker no longer owns: their next
        owner judges from the persisted states (and repeats what was not saved)."""
        self.unsaved = {key: held for key, held in self.unsaved.items()
                        if held[0] not in partitions}

    def _input(self, windows: dict[str, Any], minute_end: int) -> MinuteInput:
        assert self.minute is not None and self.baseline is not None
        minute = windows[self.minute.name]
        bucket = minute.totals.get(minute_end - MINUTE_MS)
        hour = minute.window_sums(minute_end - HOUR_MS, minute_end)
        base = windows.get(self.baseline.name)
        if base is not None:
            # Complete baseline buckets only (ending at the last STEP boundary at or before
            # the minute), so the baseline never depends on how far the stream has run ahead.
            end = minute_end - minute_end % self.baseline.step_ms
            baseline = base.window_sums(end - self.baseline.size_ms, end)
        else:
            baseline = hour
        # orders as they stood in event time: each cancellation in its own minute
        return minute_input(
            minute_end,
            bucket[_ORDERS] + bucket[_SHIFT] if bucket else 0,
            bucket[_SPEND] if bucket else 0.0,
            baseline[_ORDERS] + baseline[_SHIFT], baseline[_SPEND],
            hour[_ORDERS] + hour[_SHIFT], hour[_SPEND])
