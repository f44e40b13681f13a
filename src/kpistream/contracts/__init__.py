"""kpistream.contracts."""
