"""kpistream.observability."""
