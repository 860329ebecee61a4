"""Compatibility path for callers outside the server package (device end-to-end tests, demo).

Operator authentication lives in :mod:`update_server.operators.auth`; server code imports it
from there. This module only re-exports the helpers external callers use.
"""

from update_server.operators.auth import (
    consume_enrollment_token,
    create_enrollment_token,
    create_operator_token,
    create_user,
    hash_token,
)

__all__ = [
    "consume_enrollment_token",
    "create_enrollment_token",
    "create_operator_token",
    "create_user",
    "hash_token",
]
