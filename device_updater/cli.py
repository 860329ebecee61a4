"""``edge-updater``: the device update agent's command line. ``main(argv=None)``; exit 0 ok,
1 error, 2 usage; tracebacks only with ``-v``.

    edge-updater enroll --token TOKEN --root ROOT.json --release-key release.pub.pem
    edge-updater run                 # the daemon loop (systemd: edge-updater.service)
    edge-updater check [--json]      # one update cycle
    edge-updater status [--json]
    edge-updater rollback [--model NAME]
    edge-updater current-model [--model NAME] [--stream]
    edge-updater reseal [--pcrs 0,2,4,7] [--json]  # TPM owner auth: after an OS update
    edge-updater report-health --ok|--fail|--started [--latency-ms MS] [--inferences N]
    edge-updater report-health --record '{"type":"inference","model":"clf",...}' [--records F]
    edge-updater validate --candidate M --running M --holdout DIR --policy P.toml  # no config

Errors, ``--json`` errors, closed pipes and exit codes follow :mod:`edgepkg._cli_support`, the
conventions shared with ``edgepkg`` and ``edgepkg-server``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from device_updater import offline_cmd, reseal_cmd, validate_cmd
from device_updater.config import Config, load_config
from device_updater.errors import ConfigError, NoActiveSlotError, UntrustedDeviceInputError
from edgepkg._cli_support import CliParser, run_cli
from edgepkg.errors import UsageError

DEFAULT_CONFIG = "/etc/edge-updater/config.toml"
CONFIG_ENV = "EDGE_UPDATER_CONFIG"
TOKEN_ENV = "EDGE_UPDATER_ENROLLMENT_TOKEN"

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                plain = isinstance(value, str | int | float | bool | None)
                doc[key] = value if plain else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message key=value ...``: the same fields as the JSON lines, for people
    (``json = false``); without them a line said only "INFO edge_updater: state"."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        fields = [
            f"{key}={_text_value(value)}"
            for key, value in vars(record).items()
            if key not in _STD_ATTRS and not key.startswith("_")
        ]
        if fields:
            text += " " + " ".join(fields)
        if record.exc_info and record.exc_info[0] is not None:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    # Quoted only when needed, so `grep phase=TRIAL` works and a reason with spaces stays one field.
    return json.dumps(text) if not text or any(c in text for c in ' "=\n') else text


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="edge-updater",
                  description="Secure over-the-air model updater (device side)")
    p.add_argument("-c", "--config",
                   help=f"TOML config (default ${CONFIG_ENV} or {DEFAULT_CONFIG})")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs and tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=CliParser)

    e = sub.add_parser("enroll", help="create the device key, store trust anchors, register")
    e.add_argument("--token", help=f"enrollment token (or ${TOKEN_ENV})")
    e.add_argument("--root", required=True, help="the trusted TUF root.json (provisioning media)")
    e.add_argument("--release-key", action="append", required=True,
                   help="release signing public key PEM (repeatable)")
    e.set_defaults(func=_cmd_enroll)

    r = sub.add_parser("run", help="run the update daemon until SIGTERM")
    r.set_defaults(func=_cmd_run)
    c = sub.add_parser("check", help="run one update cycle now")
    c.add_argument("--json", action="store_true",
                   help="print the cycle report as one JSON line (default: text for people)")
    c.set_defaults(func=_cmd_check)
    s = sub.add_parser("status", help="slots, versions, state and last results")
    s.add_argument("--json", action="store_true", help="print the status as JSON")
    s.set_defaults(func=_cmd_status)
    rb = sub.add_parser("rollback", help="switch back to the previous model (operator)")
    rb.add_argument("--model", help="model name (default: the only installed model)")
    rb.set_defaults(func=_cmd_rollback)
    cm = sub.add_parser("current-model", help="export the active model to the runtime dir")
    cm.add_argument("--model", help="model name (default: the only installed model)")
    cm.add_argument("--stream", action="store_true", help="write the plaintext to stdout instead")
    cm.set_defaults(func=_cmd_current_model)
    h = sub.add_parser("report-health", help="the inference app reports how the model does")
    g = h.add_mutually_exclusive_group()
    g.add_argument("--ok", dest="status", action="store_const", const="healthy",
                   help="the model is serving well")
    g.add_argument("--fail", dest="status", action="store_const", const="failing",
                   help="the model fails (a trial in progress rolls back)")
    g.add_argument("--started", dest="status", action="store_const", const="started",
                   help="the inference app (re)started with the current model")
    h.add_argument("--model", help="model name (default: the only installed model)")
    h.add_argument("--version", help="the model version the app runs (default: the active one)")
    h.add_argument("--latency-ms", type=float, help="p50 latency in ms")
    h.add_argument("--latency-p95-ms", type=float, help="p95 latency in ms")
    h.add_argument("--inferences", type=int, default=0, help="inferences since the last report")
    h.add_argument("--errors", type=int, default=0, help="failed inferences since the last report")
    h.add_argument("--metric", type=float,
                   help="the app's own quality metric (e.g. accuracy on labelled feedback)")
    h.add_argument("--message", help="a short note (e.g. the error text) kept with the report")
    h.add_argument("--record", action="append", default=[], metavar="JSON",
                   help="a telemetry record, as the telemetry socket takes it (repeatable)")
    h.add_argument("--records", metavar="FILE",
                   help="newline-delimited telemetry records ('-' for stdin)")
    h.set_defaults(func=_cmd_report_health)
    validate_cmd.register(sub)  # exits 0 accept / 1 reject / 2 usage or setup
    reseal_cmd.register(sub)
    offline_cmd.register(sub, make_agent=_agent)
    return p


# --- helpers -------------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    return load_config(path)


def make_keystore(config: Config) -> Any:
    from device_updater.keystore import FileKeystore, Pkcs11Keystore

    if config.keystore_type == "file":
        assert config.keystore_dir is not None
        return FileKeystore(config.keystore_dir)
    if config.keystore_type == "tpm":
        from device_updater.keystore_tpm import keystore_from_config

        return keystore_from_config(config)
    assert config.token_uri is not None
    return Pkcs11Keystore(config.token_uri, key_label=config.key_label)


def _agent(config: Config, stop: threading.Event | None = None) -> Any:
    from device_updater.agent import Agent

    return Agent(config, make_keystore(config), stop=stop)


def _model(config: Config, name: str | None) -> str:
    from device_updater.layout import Layout

    names = Layout(config.state_dir).model_names()
    if name:
        if name not in names:
            raise NoActiveSlotError(f"no model named {name!r} is installed")
        return name
    if len(names) != 1:
        raise ConfigError("pass --model NAME" if names else "no model is installed yet")
    return names[0]


def _setup_logging(config: Config | None, verbose: bool) -> None:
    level = logging.DEBUG if verbose else getattr(logging, (config.log_level if config else
                                                            "INFO").upper(), logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    if config is None or config.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    if config is not None and config.keystore_type == "file" and config.keystore_dir:
        handler.addFilter(_OneFileKeyWarning(str(config.keystore_dir)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class _OneFileKeyWarning(logging.Filter):
    """The FILE keystore already warns that it is for development; edgepkg.keys' own warning
    about the device key file inside it says the same thing again: drop that second copy."""

    def __init__(self, keystore_dir: str) -> None:
        super().__init__()
        self._dir = keystore_dir

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "edgepkg.keys" and record.levelno == logging.WARNING
                    and self._dir in record.getMessage())


# --- commands ------------------------------------------------------------------------------------


def _cmd_enroll(args: argparse.Namespace, config: Config) -> int:
    from device_updater.enrollment import enroll_device
    from device_updater.keystore import load_release_key_pem

    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise ConfigError(f"an enrollment token is needed: --token or ${TOKEN_ENV}")
    try:
        root = Path(args.root).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.root}: {exc.strerror}") from None
    keys = [load_release_key_pem(k) for k in args.release_key]
    enr = enroll_device(config, make_keystore(config), enrollment_token=token,
                        trusted_root=root, release_keys=keys)
    print(json.dumps({"device_id": enr.device_id, "poll_interval": enr.poll_interval}))
    return 0


def _cmd_run(args: argparse.Namespace, config: Config) -> int:
    stop = threading.Event()

    def _term(signum: int, _frame: Any) -> None:
        logging.getLogger("edge_updater").info("stopping", extra={"signal": signum})
        stop.set()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    _agent(config, stop).run()
    return 0


def _cmd_check(args: argparse.Namespace, config: Config) -> int:
    agent = _agent(config)
    agent.recover()
    report = agent.run_cycle()
    agent.mark_stopped()
    doc = {"online": report.online, "assignments": report.assignments,
           "outcomes": report.outcomes, "errors": report.errors}
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"server: {'reached' if report.online else 'NOT reached'}; "
              f"assignments: {report.assignments}")
        for model, phase in sorted(report.outcomes.items()):
            print(f"  {model}: {phase}")
        for error in report.errors:
            print(f"error: {error}")
    return 0 if report.online and not report.errors else 1


def _cmd_status(args: argparse.Namespace, config: Config) -> int:
    from device_updater.status import status

    doc = status(config)
    if args.json:
        print(json.dumps(doc, indent=1, default=str))
        return 0
    print(f"device: {doc.get('device_id') or 'not enrolled'}")
    for name, m in doc["models"].items():
        print(f"{name}: active slot {m['active_slot']}, phase {m['phase']}"
              + (f" ({m['version']})" if m.get("version") else ""))
        for slot, info in m["slots"].items():
            mark = "*" if slot == m["active_slot"] else " "
            desc = f"{info['version']} sha256:{info['sha256'][:12]}" if info else "empty"
            print(f"  {mark} {slot}: {desc}")
        if m.get("reason"):
            print(f"  last reason: {m['reason']}")
    print(f"queued events: {doc['queued_events']}")
    sealed = doc.get("sealed_state")
    if sealed:
        print(f"SEALED TO ANOTHER DEVICE STATE: {sealed.get('reason')}")
    return 0


def _cmd_rollback(args: argparse.Namespace, config: Config) -> int:
    agent = _agent(config)
    info = agent.manual_rollback(_model(config, args.model))
    print(f"active: {info.model} {info.version} (slot {info.name})")
    return 0


def _cmd_current_model(args: argparse.Namespace, config: Config) -> int:
    from device_updater.layout import Layout
    from device_updater.sealing import sealer_for
    from device_updater.slots import SlotStore

    agent_keystore = make_keystore(config)
    model = _model(config, args.model)
    # With PCR binding, a changed device state makes this exit 1 with the reason
    # (SealedToOtherStateError) before any plaintext is written.
    slots = SlotStore(Layout(config.state_dir).model_dir(model) / "slots",
                      sealer=sealer_for(agent_keystore, agent_keystore.recipient_key()),
                      trusted_keys=lambda: agent_keystore.trust_anchors().public_keys())
    if args.stream:
        out = sys.stdout.buffer
        for chunk in slots.open_plaintext(None):
            out.write(chunk)
        out.flush()
        return 0
    print(slots.export_plaintext(None, config.runtime_dir))
    return 0


def _cmd_report_health(args: argparse.Namespace, config: Config) -> int:
    from device_updater.layout import Layout
    from device_updater.telemetry.cli_records import send_records
    from device_updater.trial import HealthLog, HealthReport

    if args.status is None and not (args.record or args.records):
        raise UsageError("report-health needs --ok, --fail or --started, or telemetry records "
                         "(--record / --records)")
    send_records(args.record, args.records, config.telemetry, config.runtime_dir)
    if args.status is None:
        return 0
    report = HealthReport.from_dict({
        "time": time.time(), "status": args.status, "model": args.model,
        "version": args.version, "inferences": args.inferences, "errors": args.errors,
        "latency_p50_ms": args.latency_ms, "latency_p95_ms": args.latency_p95_ms,
        "metric": args.metric, "message": args.message,
    })
    HealthLog(Layout(config.state_dir).health).append(report)
    return 0


def _describe(exc: BaseException) -> str | None:
    if isinstance(exc, UntrustedDeviceInputError):
        return f"refused: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()

    def dispatch(args: argparse.Namespace) -> int:
        if getattr(args, "standalone", None):  # needs no device config (release pipelines)
            return int(args.standalone(args))
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        _setup_logging(None, args.verbose)  # until the config says how (its errors are logged)
        config = _config(args)
        _setup_logging(config, args.verbose)
        return int(args.func(args, config) or 0)

    return run_cli("edge-updater", parser, argv, dispatch, describe=_describe)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
