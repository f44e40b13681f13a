"""The stages of the engine, one module each, wired by :mod:`kpistream.app`:
edge (raw topics -> packed events) -> aggregate (per events partition) -> roll-up (per row
partition) -> publish (rows, alerts, sweeps)."""
