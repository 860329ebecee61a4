"""Alerts: pure rules, the latency-baseline table, the persisted service and the API.

Keep this file free of imports: importing the pure rules must not load Flask or SQLAlchemy."""
