"""kpistream.state."""
