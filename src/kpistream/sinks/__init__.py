"""kpistream.sinks."""
