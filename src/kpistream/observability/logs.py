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

    def warning(self, reason: str, *, limit_key: str = "", **context: object) -> None:
        """Log ``reason key=value ...`` unless the same reason (and ``limit_key``, e.g. an
        error code) was logged within interval."""
        now = time.monotonic()
        key = f"{reason}:{limit_key}"
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        repeated = self._suppressed.pop(key, 0)
        fields = " ".join(f"{k}={v!r}" for k, v in context.items())
        self.logger.warning("%s %s repeated=%d", reason, fields, repeated)
