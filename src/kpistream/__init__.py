"""kpistream: streaming marketing and customer-experience KPIs from Kafka."""

from kpistream.settings import Settings

__all__ = ["Settings", "__version__"]
__version__ = "0.1.0"
