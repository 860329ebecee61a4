"""``edgepkg-server users ...`` and ``edgepkg-server tokens ...`` (wired in by
:mod:`update_server.cli`); every change is audited with the actor ``cli``::

    edgepkg-server users list
    edgepkg-server users disable|enable NAME
    edgepkg-server users reset-password NAME      (password from EDGEPKG_PASSWORD or stdin)
    edgepkg-server tokens list
    edgepkg-server tokens revoke ID
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from update_server.audit import service as audit
from update_server.config import ServerConfig
from update_server.db import Database, utcnow
from update_server.operators import accounts

LoadConfig = Callable[[argparse.Namespace], ServerConfig]
Emit = Callable[[argparse.Namespace, Mapping[str, object], str], None]


def read_password() -> str:
    password = os.environ.get("EDGEPKG_PASSWORD")
    return password if password is not None else sys.stdin.readline().rstrip("\n")


def register(sub: Any, load: LoadConfig, emit: Emit) -> None:
    def with_db(args: argparse.Namespace, work: Callable[[Any], tuple[Mapping[str, object], str]]
                ) -> int:
        db = Database(load(args).database_url)
        try:
            with db.session() as s:
                data, text = work(s)
        finally:
            db.dispose()
        emit(args, data, text)
        return 0

    def users_list(args: argparse.Namespace) -> int:
        def work(s: Any) -> tuple[Mapping[str, object], str]:
            rows = [accounts.user_json(u) for u in accounts.list_users(s)]
            lines = [f"{u['username']:<24} {u['role']:<8} "
                     f"{'disabled' if u['disabled'] else 'active'}" for u in rows]
            return {"users": rows}, "\n".join(lines) or "no users"
        return with_db(args, work)

    def users_set(args: argparse.Namespace) -> int:
        disable = args.users_command == "disable"

        def work(s: Any) -> tuple[Mapping[str, object], str]:
            u = accounts.set_disabled(s, args.username, disable, by=None)
            audit.record(s, "cli", f"user.{args.users_command}", u.username, {})
            return accounts.user_json(u), f"user {u.username} {args.users_command}d"
        return with_db(args, work)

    def users_reset(args: argparse.Namespace) -> int:
        password = read_password()

        def work(s: Any) -> tuple[Mapping[str, object], str]:
            u = accounts.reset_password(s, args.username, password)
            audit.record(s, "cli", "user.password_reset", u.username, {})
            return accounts.user_json(u), f"password of {u.username} reset"
        return with_db(args, work)

    def tokens_list(args: argparse.Namespace) -> int:
        def work(s: Any) -> tuple[Mapping[str, object], str]:
            now = utcnow()
            rows = [accounts.token_json(t, now) for t in accounts.list_tokens(s)]
            lines = [f"{t['id']}  {t['name']:<24} {t['role']:<8} "
                     f"{'revoked' if t['revoked'] else 'expired' if t['expired'] else 'active'}"
                     f"  expires {t['expires_at'] or 'never'}" for t in rows]
            return {"tokens": rows}, "\n".join(lines) or "no tokens"
        return with_db(args, work)

    def tokens_revoke(args: argparse.Namespace) -> int:
        def work(s: Any) -> tuple[Mapping[str, object], str]:
            t = accounts.revoke_token(s, args.token_id)
            audit.record(s, "cli", "token.revoke", t.id, {"name": t.name})
            return accounts.token_json(t, utcnow()), f"token {t.name} ({t.id}) revoked"
        return with_db(args, work)

    p = sub.add_parser("users", help="list, disable, enable dashboard users; reset a password")
    usub = p.add_subparsers(dest="users_command", required=True, parser_class=type(p))
    usub.add_parser("list", help="list users").set_defaults(func=users_list)
    for verb in ("disable", "enable"):
        s = usub.add_parser(verb, help=f"{verb} a user (disabling ends their sessions)")
        s.add_argument("username", help="the user's login name")
        s.set_defaults(func=users_set)
    s = usub.add_parser("reset-password", help="set a new password (EDGEPKG_PASSWORD or stdin)")
    s.add_argument("username", help="the user's login name")
    s.set_defaults(func=users_reset)
    p = sub.add_parser("tokens", help="list or revoke operator API tokens")
    tsub = p.add_subparsers(dest="tokens_command", required=True, parser_class=type(p))
    tsub.add_parser("list", help="list tokens (never their secrets)").set_defaults(
        func=tokens_list)
    s = tsub.add_parser("revoke", help="revoke a token by id")
    s.add_argument("token_id", help="the token's id (from 'tokens list')")
    s.set_defaults(func=tokens_revoke)
