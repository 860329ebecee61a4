"""Rollouts: the pure engine and spec parser, tables, the persisted service and the API.

Keep this file free of imports: importing the pure engine must not load Flask or SQLAlchemy."""
