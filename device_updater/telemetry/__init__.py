"""Field telemetry on the device (issue 12): the inference app's local API, per-interval
aggregation into :class:`edgepkg.protocol.TelemetryReport`, hardware health, the reference
profile recorded at install and drift against it, and a persistent queue sent within a daily
byte budget.

Modules (import them directly; this package imports nothing so that
:mod:`device_updater.config` can import :mod:`.settings` without a cycle):

* :mod:`.client`     the tiny stdlib-only client the inference app uses (fire-and-forget)
* :mod:`.records`    strict parsing of the records the app sends (hostile input)
* :mod:`.server`     the Unix socket server in the daemon
* :mod:`.aggregate`  per-interval accumulators -> :class:`~edgepkg.protocol.ModelTelemetry`
* :mod:`.merge`      adding reports together (downsampling when over budget)
* :mod:`.drift`      pure drift math (PSI, Jensen-Shannon, KS, confidence drop, prediction shift)
* :mod:`.reference`  the reference profile recorded after validation
* :mod:`.hardware`   temperatures, memory, disk, load, uptime from /proc and /sys
* :mod:`.queue`      the crash-safe report queue and the byte budget
* :mod:`.service`    the daemon's orchestrator (interval timer, flush at check-in)
"""
