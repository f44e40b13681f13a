"""One exception tree: everything kpistream raises on purpose is a KpistreamError."""


class KpistreamError(Exception):
    """Root of kpistream's exceptions."""


class ConfigurationError(KpistreamError):
    """Settings that cannot work together."""


class SinkError(KpistreamError):
    """A sink could not write; ``retry_after`` says when to try again (seconds)."""

    def __init__(self, sink: str, message: str, retry_after: float = 1.0) -> None:
        super().__init__(f"{sink}: {message}")
        self.sink = sink
        self.retry_after = retry_after


class DeliveryError(KpistreamError):
    """Records could not be delivered to Kafka for good (the producer gave up, or the broker
    refused them): the worker's state may be ahead of its changelogs, so it stops and its
    partitions are rebuilt from what Kafka holds."""
