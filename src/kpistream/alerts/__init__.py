"""kpistream.alerts."""
