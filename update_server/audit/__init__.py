"""Audit log: every operator action, append-only and hash-chained (issue 14, item 7).

For every blueprint that changes state on an operator's behalf::

    from update_server.audit import service as audit
    audit.record(session, actor, "device.tag", target=device_id,
                 details={"add": [...]}, remote_addr=request.remote_addr)
    session.commit()

or, inside a Flask request, the shorthand that fills in the current operator and address::

    from update_server.audit.web import record_request
    record_request("device.tag", device_id, {"add": [...]})

``record`` appends in the caller's transaction and never commits, so an action and its entry
are stored together or not at all. ``actor`` is the request's
:class:`~update_server.operators.auth.Operator`, a plain name (``"cli"``, ``"system"``) or None.
Action names are ``<noun>.<verb>`` (``rollout.approve``, ``user.disable``, ``login.failed``);
``details`` is a small JSON object (8 KiB at most), never a secret.

Entries cannot be changed: no code path updates or deletes them, and database triggers refuse
UPDATE and DELETE on ``audit_log``. Each entry stores ``prev_hash`` and
``hash = sha256(prev_hash || canonical JSON)``; ``edgepkg-server audit verify`` walks the chain.

The package itself imports nothing, so importing it can never close an import circle.
"""
