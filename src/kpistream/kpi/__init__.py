"""KPI math and the engine that keeps rows up to date."""

from kpistream.kpi.formulas import KPI_FIELDS, WindowSums, compute_kpis

__all__ = ["KPI_FIELDS", "WindowSums", "compute_kpis"]
