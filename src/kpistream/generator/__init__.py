"""kpistream.generator."""
