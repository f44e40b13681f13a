"""kpistream.ingest."""
