"""Operators: users and tokens (tables), authentication and roles, the operator API."""
