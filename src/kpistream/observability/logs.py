"""Structured, rate-limited logging for hot paths: a repeated message is logged once per
interval with the number of occurrences it stands for."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, reason: str, **context: object) -> None:
        """Log ``reason key=value ...`` unless the same reason was logged within interval."""
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval_s:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last[reason] = now
        repeated = self._suppressed.pop(reason, 0)
        fields = " ".join(f"{k}={v!r}" for k, v in context.items())
        self.logger.warning("%s %s repeated=%d", reason, fields, repeated)
