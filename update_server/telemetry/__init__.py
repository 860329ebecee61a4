"""Field telemetry: raw per-device intervals, hourly cohort rollups, the alert rules that watch
them (:mod:`.rules`, pure), the persisted service and the device endpoint.

Keep this file free of imports: importing the pure rules must not load Flask or SQLAlchemy."""
