"""The `gateway` command: serve, check, explain, test, health, grants, scopes, demo. A thin layer
over the functions the app itself calls: `check` is the loader, `explain` is the decision, `test`
is the app under test."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gateway import health, logs
from gateway.explain import Caller, UsageError, explain, parse_claims
from gateway.grants.live import open_store, read_view
from gateway.grants.store import GrantStore, StoreUnavailable
from gateway.loading import ConfigError, admin_settings, load_config
from gateway.loading.lint import secret_files, warnings
from gateway.server import SERVERS
from gateway.settings import Config
from gateway.times import parse_rfc3339, rfc3339
from gateway.validation import STAGES, grant_scope_problem, validate_scopes

_DESCRIPTION = """\
A reverse proxy that enforces OAuth scopes per route. It verifies each request's bearer token,
works out the caller's scopes, and either forwards the request to the upstream API or answers
itself (400, 401, 403, 404). Route tables (YAML) map METHOD /path/template to the scopes that
grant it; gateway.yaml says where the tables and the token keys are.
"""


def _load(config_path: str) -> Config | None:
    try:
        return load_config(config_path)
    except ConfigError as error:
        print(error)  # a line per problem, `file:line: message`
        return None


def _serve(args: argparse.Namespace) -> int:
    if _load(args.config) is None:
        return 1
    if args.server == "granian" and importlib.util.find_spec("granian") is None:
        print("--server granian needs granian: pip install 'scope-gateway[granian]'")
        return 1
    from gateway.server import run

    run(Path(args.config), host=args.host, port=args.port, server=args.server, workers=args.workers, log_level=args.log_level,
        access_log=args.access_log, log_format=args.log_format)
    return 0


def _check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    found = [*secret_files(config), *warnings(config.tables)]
    for warning in found:
        print(warning)
    counts = {api.name: 0 for api in config.tables.apis}
    for compiled in config.tables.routes:
        counts[compiled.api.name] += 1
    per_table = ", ".join(f"{name}: {count}" for name, count in counts.items())
    print(f"OK: {len(counts)} route tables, {len(config.tables.routes)} routes ({per_table}) from {args.config}")
    return 1 if found and args.strict else 0


def _explain(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    try:
        caller = Caller(args.scopes, parse_claims(args.claims), args.token)
        body = _body(args.body)
        explanation = asyncio.run(explain(config, args.method, args.path, caller, body=body, content_type=args.content_type))
    except UsageError as exc:
        print(exc)
        return 2
    print("\n".join(explanation.lines))
    return 0 if explanation.refusal is None else 1


def _body(text: str | None) -> bytes | None:
    """--body: the text itself, or with @FILE that file's bytes.

    :raises UsageError: the file cannot be read.
    """
    if text is None or not text.startswith("@"):
        return None if text is None else text.encode("utf-8")
    try:
        return Path(text[1:]).read_bytes()
    except OSError as exc:
        raise UsageError(f"--body: {exc.strerror}: {text[1:]}") from None


def _scopes_validate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    client_grants = None
    if args.client is not None and config.grants.store is not None:
        # what the store holds for the client now: a scope that needs a client grant is checked against it
        try:
            client_grants = asyncio.run(read_view(config.grants.store, config.grants.base, args.api, args.client, None)).client_grants
        except StoreUnavailable as exc:
            print(f"the grant store cannot be read: {exc}")
            return 2
    try:
        check = validate_scopes(config, args.api, args.scopes, client=args.client, client_grants=client_grants,
                                grant_type=args.grant_type, stage=args.stage)
    except KeyError as exc:
        print(exc.args[0])
        return 2
    for problem in check.problems:
        print(f"invalid_scope: {problem}")
    if check.ignored:
        print(f"ignored: {' '.join(check.ignored)} (not in the catalog of {args.api}, which ignores unknown scopes)")
    if check.valid:
        print(f"valid: {' '.join(check.scopes) or '(no scopes)'}")
        return 0
    return 1


def _grants(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    if config.grants.store is None:
        print(f"{args.config}: no grants.store is configured (e.g. grants: {{store: sqlite:///grants.db}})")
        return 2
    apis = {api.name: api for api in config.tables.apis}
    if getattr(args, "api", None) is not None and args.api not in apis:
        print(f"no route table is named {args.api!r} (tables: {', '.join(apis)})")
        return 2
    if getattr(args, "scope", None) is not None:
        problem = grant_scope_problem(apis[args.api].catalog, args.scope)
        if problem:
            print(problem)
            return 2
    try:
        return asyncio.run(_grants_command(args, open_store(config.grants.store, config.grants.base)))
    except StoreUnavailable as exc:
        print(f"the grant store cannot be used: {exc}")
        return 3


async def _grants_command(args: argparse.Namespace, store: GrantStore) -> int:
    try:
        if args.grants_command == "add":
            await store.put_grant(args.api, args.client, args.subject, args.scope, _expiry(args))
            print(f"granted: {_grant_name(args)}")
        elif args.grants_command == "revoke":
            if not await store.revoke_grant(args.api, args.client, args.subject, args.scope):
                print(f"no such grant: {_grant_name(args)}")
                return 1
            print(f"revoked: {_grant_name(args)}")
        elif args.grants_command in ("fulfil", "unfulfil"):
            met = args.grants_command == "fulfil"
            if not await store.set_condition(args.api, args.subject, args.scope, met) and not met:
                print(f"no such condition met: {args.scope} by {args.subject} on {args.api}")
                return 1
            print(f"{'fulfilled' if met else 'unfulfilled'}: {args.scope} by {args.subject} on {args.api}")
        else:
            grants, conditions = await store.list(args.api, args.client, args.subject)
            if args.json:
                print(json.dumps({
                    "grants": [{"api": g.api, "client": g.client, "subject": g.subject, "scope": g.scope, "expires_at": _rfc3339(g.expires_at)} for g in grants],
                    "conditions": [{"api": c.api, "subject": c.subject, "scope": c.scope} for c in conditions],
                }, indent=2))
            else:
                now = time.time()
                for g in grants:
                    expiry = "no expiry" if g.expires_at is None else ("expired " if g.expires_at <= now else "expires ") + str(_rfc3339(g.expires_at))
                    who = f"user {g.subject} via client {g.client}" if g.subject else f"client {g.client}"
                    print(f"grant      {g.api}  {who}  {g.scope}  ({expiry})")
                for c in conditions:
                    print(f"condition  {c.api}  user {c.subject}  {c.scope}  (met)")
        return 0
    finally:
        await store.aclose()


def _expiry(args: argparse.Namespace) -> float | None:
    if args.ttl is not None:
        return time.time() + args.ttl
    if args.expires is not None:
        return args.expires
    return None


def _rfc3339_argument(text: str) -> float:
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rfc3339(timestamp: float | None) -> str | None:
    return None if timestamp is None else rfc3339(timestamp)


def _grant_name(args: argparse.Namespace) -> str:
    who = f"user {args.subject} via client {args.client}" if args.subject else f"client {args.client}"
    return f"{args.scope} to {who} on {args.api}"


def _test(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    from gateway.harness import Harness
    from gateway.loading.cases import load_cases

    try:
        cases = load_cases(args.cases, config)
        harness = Harness(config)
    except ConfigError as error:
        print(error)  # a line per problem, `file:line: message`
        return 2
    except ValueError as exc:
        print(f"{args.config}: {exc}")
        return 2
    with harness:
        mismatches = asyncio.run(harness.check(cases))
    for mismatch in mismatches:
        print(mismatch)
    if mismatches:
        print(f"FAILED: {len(mismatches)} of {len(cases)} cases in {args.cases}", file=sys.stderr)
        return 1
    print(f"OK: {len(cases)} cases passed in {args.cases}")
    return 0


def _health(args: argparse.Namespace) -> int:
    try:
        admin = admin_settings(args.config)
    except ConfigError as error:
        print(error)  # a line per problem, `file:line: message`
        return 1
    if admin.listen is None or admin.token_file is None:
        print(f"{args.config} sets no admin.listen: the health check asks the admin listener's /healthz")
        return 1
    # the listener proves it holds the config's admin token: another process on its port is no gateway
    healthy, line = health.ask(admin.listen, admin.token_file.read_text().strip(), args.timeout)
    print(line)
    return 0 if healthy else 1


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", default="gateway.yaml", metavar="FILE", help="gateway config file (default: gateway.yaml)")

    serve = commands.add_parser("serve", help="run the gateway", description="Load the config and route tables, then serve until stopped (Ctrl-C).")
    with_config(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    serve.add_argument("--server", default="uvicorn", choices=SERVERS, help="ASGI server: uvicorn (default) or granian (the [granian] extra)")
    serve.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes, e.g. one per core (default: 1)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                       help="default: info; debug adds a line per refusal with its reason")
    serve.add_argument("--access-log", action="store_true",
                       help="the gateway's line per request, forwarded or refused, with its request id (off by default, as in Envoy)")
    serve.add_argument("--log-format", default="text", choices=logs.FORMATS, help="text (default) or json: one JSON object per line")
    serve.set_defaults(run=_serve)

    check = commands.add_parser(
        "check", help="validate the config and every route table",
        description="Load everything as `serve` would. Exit 0 with a one-line summary, or exit 1 with one 'file:line: problem' line per problem. "
        "Likely mistakes that still load (a route shadowed by a more specific one, a catalog scope no route uses, an empty table) "
        "are printed as 'file:line: warning: ...' before the summary.",
    )
    with_config(check)
    check.add_argument("--strict", action="store_true", help="exit 1 when there are warnings too")
    check.set_defaults(run=_check)

    explain = commands.add_parser(
        "explain", help="show how one request would be decided",
        description="The whole trace of METHOD PATH: the canonical path, the routes whose template matches it and the one "
        "that matched, what it requires, where the caller's scopes came from, each step of the scope catalog with the grants "
        "read from the store, a GraphQL operation's fields or a response's members, and the decision with its status and challenge. "
        "Give the caller's scopes with --scopes, or a real token with --token (verified against the configured keys). "
        "Exit 0 if the request would be forwarded, 1 if refused, 2 if the config does not load or an option is wrong.",
    )
    with_config(explain)
    explain.add_argument("method", metavar="METHOD", help="HTTP method, e.g. GET")
    explain.add_argument("path", metavar="PATH", help="request path as sent to the gateway, e.g. /adyen/management/merchants/M1/webhooks")
    who = explain.add_mutually_exclusive_group()
    who.add_argument("--scopes", metavar='"A B"', help="space-separated scopes the caller holds")
    who.add_argument("--token", metavar="JWT", help="a bearer token to verify and use")
    explain.add_argument("--claims", metavar="JSON", help='with --scopes: other claims of the caller, e.g. \'{"sub": "u1", "acr": "sms", "auth_time": 1700000000}\'')
    explain.add_argument("--body", metavar="TEXT", help="the request body, or @FILE for a file's (a GraphQL route reads it)")
    explain.add_argument("--content-type", metavar="TYPE", help="the request's Content-Type, e.g. application/json")
    explain.set_defaults(run=_explain)

    test = commands.add_parser(
        "test", help="check route tables against a file of cases",
        description="Put each case of CASES.yaml (a request, its caller, what the grant store holds, what must come of it) "
        "to the gateway of the config, with tokens minted by a throwaway key and every upstream mocked. "
        "Exit 0 when all pass, 1 with one 'file:line: name: expected X, got Y' line per mismatch, "
        "2 with one 'file:line: problem' line per problem of the config or the cases file.",
    )
    with_config(test)
    test.add_argument("cases", metavar="CASES.yaml", help="a YAML list of cases (see README.md, 'Testing route tables')")
    test.set_defaults(run=_test, log_level="warning")

    scopes = commands.add_parser("scopes", help="check scope requests against a table's catalog", description="Scope catalogs, for authorization servers.")
    scope_commands = scopes.add_subparsers(dest="scopes_command", required=True, metavar="COMMAND")
    validate = scope_commands.add_parser(
        "validate", help="would this scope request be refused with invalid_scope?",
        description="Apply an API's catalog rules (suffixes, exclusive groups, requires, grant types, unknown scopes, step-up "
        "scopes only at refresh) to a scope request, as an authorization server would before issuing a token. "
        "Exit 0 if valid, 1 with one 'invalid_scope: reason' line per rule broken, 2 if the config does not load or the API is unknown.",
    )
    with_config(validate)
    validate.add_argument("--api", required=True, metavar="NAME", help="the route table's name")
    validate.add_argument("--client", metavar="C", help="the requesting client")
    validate.add_argument("--grant-type", default="authorization_code", metavar="T", help="the grant the token is for (default: authorization_code)")
    validate.add_argument("--stage", default="token", choices=STAGES, help="authorize, token (default) or refresh")
    validate.add_argument("scopes", metavar='"SCOPE LIST"', help="space-separated scopes, as in a token request")
    validate.set_defaults(run=_scopes_validate)

    grants = commands.add_parser("grants", help="change or list live grants in the configured store", description=(
        "Client grants, user grants and met conditions in the grant store gateway.yaml names (grants.store), "
        "whether or not a gateway is running: every serving process sees a change within grants.refresh seconds."))
    grant_commands = grants.add_subparsers(dest="grants_command", required=True, metavar="COMMAND")
    for name, text in (("add", "add a grant, or replace its expiry"), ("revoke", "revoke a grant (exit 1 if there is none)")):
        sub = grant_commands.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}: a client grant without --subject, a user grant with it.")
        with_config(sub)
        sub.add_argument("--api", required=True, metavar="A", help="the route table's name")
        sub.add_argument("--client", required=True, metavar="C", help="the OAuth client id")
        sub.add_argument("--subject", metavar="S", help="the user (a user grant); without it, a client grant")
        sub.add_argument("scope", metavar="SCOPE", help="the scope granted (X_offline for a user's offline consent to X)")
        if name == "add":
            expiry = sub.add_mutually_exclusive_group()
            expiry.add_argument("--expires", type=_rfc3339_argument, metavar="RFC3339", help="when it expires, e.g. 2026-12-31T23:59:59Z")
            expiry.add_argument("--ttl", type=float, metavar="SECONDS", help="how long from now it lasts")
        sub.set_defaults(run=_grants)
    for name, text in (("fulfil", "record a scope's condition as met by a user"), ("unfulfil", "record it as not met (exit 1 if it was not)")):
        sub = grant_commands.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}: an _optional form of the scope counts once it is met.")
        with_config(sub)
        sub.add_argument("--api", required=True, metavar="A", help="the route table's name")
        sub.add_argument("--subject", required=True, metavar="S", help="the user")
        sub.add_argument("scope", metavar="SCOPE", help="the scope whose condition it is")
        sub.set_defaults(run=_grants, client=None)
    listing = grant_commands.add_parser("list", help="list grants (expired ones too) and met conditions", description="Grants not revoked and conditions met, filtered by every option given.")
    with_config(listing)
    listing.add_argument("--api", metavar="A")
    listing.add_argument("--client", metavar="C")
    listing.add_argument("--subject", metavar="S")
    listing.add_argument("--json", action="store_true", help="as the admin API's GET /grants answers")
    listing.set_defaults(run=_grants, scope=None)

    health = commands.add_parser(
        "health", help="ask the admin listener whether the gateway serves (the image's health check)",
        description="GET /healthz on the admin.listen address of the config: exit 0 on 200, else 1 with the reason.",
    )
    with_config(health)
    health.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS", help="seconds to wait for the answer (default: 2)")
    health.set_defaults(run=_health)

    demo = commands.add_parser(
        "demo", help="run the gateway in front of a built-in demo upstream",
        description="Start a demo upstream and the gateway in front of it, with throwaway keys, and print curl commands to try.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default: 8080)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"))
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
