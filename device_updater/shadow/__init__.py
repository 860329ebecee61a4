"""Shadow runs before the switch (issue 10 item 6; docs/validation.md "Shadow runs").

:mod:`.decision` is the pure part (agreement, budgets, promote/reject/wait), :mod:`.spool` the
app's sample directory, :mod:`.run` one batch through both models in the validation worker.
"""

from device_updater.shadow.decision import ShadowDecision, agreeing, budget_breach, decide_shadow

__all__ = ["ShadowDecision", "agreeing", "budget_breach", "decide_shadow"]
