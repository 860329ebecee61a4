"""Four-eyes approvals of rollouts (issue 14, item 6): see :mod:`.service`."""
