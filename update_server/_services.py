"""Late-bound access to the rollout service (owned by the rollouts part of the server).

The module is optional at import time so the core runs (and assigns nothing) before it exists;
once present, errors inside it are not swallowed.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

_MODULE = "update_server.rollout_service"


def rollout_service() -> ModuleType | None:
    if importlib.util.find_spec(_MODULE) is None:
        return None
    return importlib.import_module(_MODULE)
