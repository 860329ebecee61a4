"""Devices: their tables, signed-request authentication, the device API and the check-in
safety filter."""
