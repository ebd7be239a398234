"""The `gateway` command: serve, check, explain, test, health, grants, scopes, keys, token, demo. A thin layer
over the functions the app itself calls: `check` is the loader, `explain` is the decision, `test`
is the app under test."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gateway import health, logs, times
from gateway.catalog import grant_scope_problem
from gateway.explain import Caller, UsageError, explain, parse_claims
from gateway.grants.live import open_store, read_view
from gateway.grants.store import GrantRecord, GrantStore, StoreUnavailable
from gateway.loading import ConfigError, admin_settings, load_config
from gateway.loading.lint import secret_files, warnings
from gateway.server import SERVERS, SHUTDOWN_TIMEOUT
from gateway.settings import MODES, Config
from gateway.signing import KEY_FILE_ALGORITHMS, init_key_files, read_key_file
from gateway.times import parse_rfc3339, rfc3339
from gateway.validation import STAGES, validate_scopes

_DESCRIPTION = """\
A reverse proxy that enforces OAuth scopes per route. It verifies each request's bearer token,
works out the caller's scopes, and either forwards the request to the upstream API or answers
itself (400, 401, 403, 404). Route tables (YAML) map METHOD /path/template to the scopes that
grant it; gateway.yaml says where the tables and the token keys are.
"""


# exit status of a command that could not run at all (no config file, a bad option), as argparse's
_USAGE = 2
_MAX_TTL = 10 * 365 * 24 * 3600  # a test token's lifetime; far beyond it, exp would leave the years a date can hold


def _missing_config(path: str) -> str | None:
    """What to say when the config file is not there (None: it is)."""
    if Path(path).exists():
        return None
    where = f"no {path} in {Path.cwd()}" if not Path(path).is_absolute() and os.sep not in path else f"{path}: no such file"
    return (f"{where}: give the gateway's config with --config FILE, "
            "or run `gateway demo` to see a working one (it writes a config, keys and a route table to a folder it names)")


def _load(config_path: str, mode: str = "proxy") -> Config | None:
    try:
        return load_config(config_path, mode)
    except ConfigError as error:
        print(error)  # a line per problem, `file:line: message`
        return None


def _serve(args: argparse.Namespace) -> int:
    if _load(args.config, args.mode) is None:
        return 1
    if args.server == "granian" and importlib.util.find_spec("granian") is None:
        print("--server granian needs granian: pip install 'scope-gateway[granian]'")
        return 1
    from gateway.server import run

    run(Path(args.config), host=args.host, port=args.port, server=args.server, workers=args.workers, log_level=args.log_level,
        access_log=args.access_log, log_format=args.log_format, mode=args.mode, shutdown_timeout=args.shutdown_timeout)
    return 0


def _check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    found = [*config.warnings, *secret_files(config), *map(str, warnings(config.tables))]
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
            client_grants = asyncio.run(read_view(config.grants.store, args.api, args.client, None)).client_grants
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
        args.expires_at = _expiry(args) if args.grants_command == "add" else None
    except ValueError as exc:
        print(exc)
        return 2
    try:
        return asyncio.run(_grants_command(args, open_store(config.grants.store)))
    except StoreUnavailable as exc:
        print(f"the grant store cannot be used: {exc}")
        return 3
    except ValueError as exc:  # refused by the store's contract (an empty name)
        print(exc)
        return 2


async def _grants_command(args: argparse.Namespace, store: GrantStore) -> int:
    try:
        if args.grants_command == "add":
            await store.put_grant(args.api, args.client, args.subject, args.scope, args.expires_at)
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
            grants, conditions = await store.list(args.api, args.client, args.subject, revoked=args.all)
            now = time.time()
            if args.json:
                print(json.dumps({
                    "grants": [_grant_json(g, now, args.all) for g in grants],
                    "conditions": [{"api": c.api, "subject": c.subject, "scope": c.scope} for c in conditions],
                }, indent=2))
            else:
                for g in grants:
                    expiry = "no expiry" if g.expires_at is None else ("expired " if g.expires_at <= now else "expires ") + str(_rfc3339(g.expires_at))
                    if g.revoked_at is not None:
                        expiry = f"revoked at {_rfc3339(g.revoked_at)}; {expiry}"
                    who = f"user {g.subject} via client {g.client}" if g.subject else f"client {g.client}"
                    print(f"grant      {g.api}  {who}  {g.scope}  ({expiry})")
                for c in conditions:
                    print(f"condition  {c.api}  user {c.subject}  {c.scope}  (met)")
        return 0
    finally:
        await store.aclose()


def _grant_json(grant: GrantRecord, now: float, everything: bool) -> dict[str, object]:
    """A grant as GET /grants shows it; with `--all`, its state and revocation time too."""
    shown: dict[str, object] = {"api": grant.api, "client": grant.client, "subject": grant.subject, "scope": grant.scope,
                                "expires_at": _rfc3339(grant.expires_at)}
    if everything:
        state = "revoked" if grant.revoked_at is not None else "expired" if grant.expires_at is not None and grant.expires_at <= now else "active"
        shown.update(state=state, revoked_at=_rfc3339(grant.revoked_at))
    return shown


def _expiry(args: argparse.Namespace) -> float | None:
    """The expiry `--ttl` or `--expires` gives.

    :raises ValueError: a ttl that is not a finite number, or either outside years 1-9999 UTC.
    """
    if args.ttl is not None:
        if not math.isfinite(args.ttl):
            raise ValueError(f"--ttl must be a finite number of seconds, not {args.ttl}")
        expires_at: float = time.time() + args.ttl
        if not times.valid(expires_at):
            raise ValueError(f"--ttl {args.ttl:g} puts the expiry outside years 1 to 9999 UTC")
        return expires_at
    if args.expires is not None:
        return float(args.expires)  # parse_rfc3339 kept it within years 1-9999
    return None


def _rfc3339_argument(text: str) -> float:
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds_argument(text: str) -> int:
    # a whole number above 0: granian reads 0 as "wait for ever"
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds above 0")
    return int(text)


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


def _keys_init(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    try:
        key = init_key_files(folder, args.alg)
    except FileExistsError:
        print(f"{folder / 'private.pem'} exists already: it is left as it is (tokens signed with it stay valid). "
              "Remove it first, or give another --dir", file=sys.stderr)
        return _USAGE
    except OSError as exc:
        print(f"{args.dir}: {exc.strerror}", file=sys.stderr)
        return _USAGE
    print(f"wrote {folder / 'private.pem'} (the {key.algorithm} signing key, readable by you only) "
          f"and {folder / 'jwks.json'} (its public key, kid {key.kid})")
    print(f"gateway.yaml: tokens: {{jwks_file: {folder / 'jwks.json'}, algorithms: [{key.algorithm}]}}")
    return 0


def _token_mint(args: argparse.Namespace) -> int:
    """Print a token signed with --key for the config's issuer and audience."""
    try:
        key = read_key_file(Path(args.key))
    except OSError as exc:
        print(f"--key {args.key}: {exc.strerror} (`gateway keys init` writes keys/private.pem)", file=sys.stderr)
        return _USAGE
    except ValueError as exc:
        print(f"--key {exc}", file=sys.stderr)
        return _USAGE
    if not math.isfinite(args.ttl) or not 0 < args.ttl <= _MAX_TTL:
        print(f"--ttl: a number of seconds above 0 and at most {_MAX_TTL} (ten years), not {args.ttl}", file=sys.stderr)
        return _USAGE
    try:
        extra = parse_claims(args.claims)
        json.dumps(extra, allow_nan=False)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return _USAGE
    except ValueError:
        print("--claims: NaN and Infinity are not JSON numbers", file=sys.stderr)
        return _USAGE
    config_path = args.config if args.config is not None else ("gateway.yaml" if Path("gateway.yaml").exists() else None)
    issuer, audience, scope_claim = args.issuer, None, "scope"
    if config_path is not None:
        if (missing := _missing_config(config_path)) is not None:
            print(missing, file=sys.stderr)
            return _USAGE
        try:
            config = load_config(config_path)
        except ConfigError as error:
            print(error, file=sys.stderr)  # stdout carries the token alone
            return _USAGE
        # the entry --issuer names, else the first
        tokens = next((entry for entry in config.identity.entries if issuer is not None and entry.issuer == issuer), config.tokens)
        if key.algorithm not in tokens.algorithms:
            print(f"{args.key} signs {key.algorithm}, which tokens.algorithms of {config_path} does not accept "
                  f"({', '.join(tokens.algorithms)})", file=sys.stderr)
            return _USAGE
        issuer = issuer if issuer is not None else tokens.issuer
        audience = tokens.audience[0] if tokens.audience else None
        scope_claim = tokens.scope_claims[0] if tokens.scope_claims else scope_claim
        if tokens.jwks_url is None and tokens.static_keys and all(k.kid not in (None, key.kid) for k in tokens.static_keys):
            print(f"warning: no key of {config_path} has kid {key.kid}: the gateway will refuse this token (invalid_token)", file=sys.stderr)
    now = int(time.time())
    claims: dict[str, object] = {"iss": issuer, "aud": audience, "sub": args.sub, "client_id": args.client,
                                 scope_claim: args.scopes, "iat": now, "exp": now + math.ceil(args.ttl)}
    claims = {name: value for name, value in claims.items() if value is not None}
    claims.update(extra)
    print(key.sign(claims))
    return 0


def _import_openapi(args: argparse.Namespace) -> int:
    from gateway.openapi import (
        ReadOptions,
        SpecError,
        default_name,
        read_spec,
        table_problems,
        write_table,
    )
    from gateway.scopes import Access

    options = ReadOptions(scheme=args.scheme, within=args.within, allow_public=args.allow_public)
    try:
        spec = read_spec(args.spec, options)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    public = [operation for operation in spec.enforceable if operation.requirement and operation.requirement.access is Access.PUBLIC]
    if public and not args.allow_public:
        print(f"{args.spec}: {len(public)} operations need no token; nothing written (give --allow-public to make them public routes):", file=sys.stderr)
        for operation in public:
            print(f"  {operation.key}  {operation.pointer}", file=sys.stderr)
        return 1
    upstream = args.upstream or spec.origin
    if upstream is None:
        print(f"{args.spec}#/servers/0/url: a relative server URL names no upstream: give --upstream", file=sys.stderr)
        return 2
    text = write_table(spec, name=args.name or default_name(spec), upstream=upstream, prefix=args.prefix, options=options)
    problems = table_problems(text)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    for scope in spec.undeclared:
        print(f"scope {scope}: named by a requirement, declared by no OAuth flow; added to the catalog", file=sys.stderr)
    for operation in spec.not_enforceable:
        print(f"left out (the gateway answers 404): {operation.key}  {operation.pointer}: {operation.reason}", file=sys.stderr)
    sys.stdout.write(text)
    return 0


def _coverage(args: argparse.Namespace) -> int:
    from gateway.coverage import compare
    from gateway.openapi import ReadOptions, SpecError, read_spec

    config = _load(args.config)
    if config is None:
        return 2
    api = next((api for api in config.tables.apis if api.name == args.api), None)
    if api is None:
        print(f"no route table is named {args.api!r} (tables: {', '.join(api.name for api in config.tables.apis)})")
        return 2
    recorded = ReadOptions.from_table(Path(api.source.file).read_text(encoding="utf-8")) or ReadOptions()
    options = ReadOptions(scheme=args.scheme or recorded.scheme, within=args.within or recorded.within)
    try:
        spec = read_spec(args.openapi, options)
    except SpecError as exc:
        print(exc)
        return 2
    coverage, lines = compare(spec, tuple(route for route in config.tables.routes if route.api is api), api.catalog)
    if args.json:
        print(json.dumps(coverage.as_json(), indent=2))
    else:
        print("\n".join(lines))
        verdict = "OK: they agree" if coverage.agree else "DIFFERENT"
        print(f"{verdict}: {len(spec.operations)} operations, {len(coverage.missing_routes)} without a route, "
              f"{len(coverage.undocumented_routes)} routes undocumented, {len(coverage.differing)} differing, "
              f"{len(coverage.not_enforceable)} not enforceable")
    return 0 if coverage.agree else 1


def _access(args: argparse.Namespace) -> int:
    from gateway.matrix import build, render
    from gateway.reach import find_api, reach, render_reach

    config = _load(args.config)
    if config is None:
        return 2
    try:
        api = find_api(config, args.api)
        if args.matrix:
            if args.scopes is not None or args.token is not None or args.claims is not None:
                raise UsageError("--matrix draws the table for every scope: it takes no --scopes, --token or --claims")
            sys.stdout.write(render(build(api, config.tables.routes), args.format or "md"))
            return 0
        if args.format is not None:
            raise UsageError("--format is for --matrix")
        if args.scopes is None and args.token is None:
            raise UsageError("give the caller with --scopes \"a b\" or --token JWT (or draw the table with --matrix)")
        lines, found = asyncio.run(reach(config, api, Caller(args.scopes, parse_claims(args.claims), args.token)))
    except UsageError as exc:
        print(exc)
        return 2
    print(render_reach(api, lines, found))
    return 0


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
    serve.add_argument("--mode", default="proxy", choices=MODES,
                       help="proxy (default): forward allowed requests; decision: answer a front proxy's questions on "
                            "/nginx, /forward-auth and /envoy/<target> (docs/decision-mode.md)")
    serve.add_argument("--shutdown-timeout", type=_seconds_argument, default=SHUTDOWN_TIMEOUT, metavar="SECONDS",
                       help=f"once stopped, the time requests in flight have to finish before what is left is killed (default: {SHUTDOWN_TIMEOUT})")
    serve.set_defaults(run=_serve)

    check = commands.add_parser(
        "check", help="validate the config and every route table",
        description="Load everything as `serve` would. Exit 0 with a one-line summary, or exit 1 with one 'file:line: problem' line per problem. "
        "Likely mistakes that still load (two routes that cross, neither more specific, and decide differently; an undescribed catalog scope no route uses; an empty table) "
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
    listing = grant_commands.add_parser("list", help="list grants (expired ones too) and met conditions", description=(
        "Grants not revoked (expired ones too) and conditions met, filtered by every option given; with --all, revoked grants too, "
        "with when they were revoked."))
    with_config(listing)
    listing.add_argument("--api", metavar="A")
    listing.add_argument("--client", metavar="C")
    listing.add_argument("--subject", metavar="S")
    listing.add_argument("--all", action="store_true", help="revoked grants too, with each grant's state and revocation time")
    listing.add_argument("--json", action="store_true", help="as the admin API's GET /grants answers")
    listing.set_defaults(run=_grants, scope=None)

    health = commands.add_parser(
        "health", help="ask the admin listener whether the gateway serves (the image's health check)",
        description="GET /healthz on the admin.listen address of the config: exit 0 on 200, else 1 with the reason.",
    )
    with_config(health)
    health.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS", help="seconds to wait for the answer (default: 2)")
    health.set_defaults(run=_health)

    keys = commands.add_parser("keys", help="make a signing key for trying the gateway", description="Signing keys for trials and tests.")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    init = key_commands.add_parser(
        "init", help="write a new signing key and its JWKS",
        description="Write DIR/private.pem (a new private key, mode 0600) and DIR/jwks.json (its public key, for tokens.jwks_file), "
        "the kid being the key's RFC 7638 thumbprint. An existing private.pem is never overwritten (exit 2).",
    )
    init.add_argument("--dir", default="keys", help="the folder to write to (default: keys)")
    init.add_argument("--alg", default="RS256", choices=KEY_FILE_ALGORITHMS, help="the signing algorithm (default: RS256)")
    init.set_defaults(run=_keys_init)

    token = commands.add_parser("token", help="mint a test token", description="Tokens for trials and tests.")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    mint = token_commands.add_parser(
        "mint", help="print a token signed with a key file",
        description="Print a JWT signed with --key (its kid the key's thumbprint, its alg from the key's type), whose iss and aud "
        "are the config's tokens.issuer and first tokens.audience, and whose scopes go in the first of tokens.scope_claims. "
        "The config is --config, else gateway.yaml when there is one. Exit 2 when the key, the config or an option is wrong.",
    )
    mint.add_argument("--key", required=True, metavar="PEM", help="the private key, e.g. keys/private.pem (gateway keys init)")
    mint.add_argument("--config", metavar="FILE", help="the gateway config whose issuer and audience the token carries (default: gateway.yaml, if any)")
    mint.add_argument("--issuer", metavar="ISS", help="the iss claim, in place of the config's")
    mint.add_argument("--scopes", default="", metavar='"A B"', help="space-separated scopes (default: none)")
    mint.add_argument("--sub", default="test-user", metavar="S", help="the subject, the user (default: test-user)")
    mint.add_argument("--client", default="test-client", metavar="C", help="the client_id (default: test-client)")
    mint.add_argument("--claims", metavar="JSON", help='other claims, added last, e.g. \'{"acr": "sms", "auth_time": 1700000000}\'')
    mint.add_argument("--ttl", type=float, default=3600, metavar="SECONDS", help="seconds until exp (default: 3600)")
    mint.set_defaults(run=_token_mint)

    importing = commands.add_parser("import", help="write a route table from an API description", description="Route tables from what an API says of itself.")
    import_commands = importing.add_subparsers(dest="import_command", required=True, metavar="FORMAT")
    openapi = import_commands.add_parser(
        "openapi", help="a route table from an OpenAPI 3.0 or 3.1 description",
        description="Write the route table of SPEC (YAML or JSON, local $refs) to stdout: each operation's security as any-of "
        "requirement objects, each all of its OAuth scopes; the catalog from every OAuth flow. Operations without OAuth2 or "
        "OpenID Connect security are left out and listed on stderr. Exit 0; 1, writing nothing, when an operation needs no "
        "token and --allow-public is not given; 2 when SPEC cannot be read.",
    )
    openapi.add_argument("spec", metavar="SPEC", help="the OpenAPI description, a YAML or JSON file")
    openapi.add_argument("--name", metavar="N", help="the table's name (default: from info.title)")
    openapi.add_argument("--upstream", metavar="URL", help="where allowed requests go (default: servers[0].url's origin)")
    openapi.add_argument("--prefix", metavar="/p", help="a gateway path prefix, stripped before matching and forwarding")
    openapi.add_argument("--scheme", metavar="NAME", help="read only this oauth2 or openIdConnect security scheme")
    openapi.add_argument("--allow-public", action="store_true", help="operations with empty security become public routes")
    openapi.add_argument("--within", choices=["all", "any"], default="all",
                         help="the scopes of one requirement object: all together (default, as OpenAPI says) or any one")
    openapi.set_defaults(run=_import_openapi)

    coverage = commands.add_parser(
        "coverage", help="compare a route table with the API's OpenAPI description",
        description="Operations without a route, routes without an operation, and requirements that differ (as sets, the "
        "catalog's implications applied), read with the options recorded in an imported table or given here. "
        "Exit 0 when they agree, 1 when they differ, 2 when the config or SPEC cannot be read.",
    )
    with_config(coverage)
    coverage.add_argument("--openapi", required=True, metavar="SPEC", help="the OpenAPI description, a YAML or JSON file")
    coverage.add_argument("--api", required=True, metavar="NAME", help="the route table's name")
    coverage.add_argument("--json", action="store_true", help="as JSON: missing_routes, undocumented_routes, differing, not_enforceable")
    coverage.add_argument("--scheme", metavar="NAME", help="read only this security scheme (default: as recorded by the import)")
    coverage.add_argument("--within", choices=["all", "any"], help="all or any (default: as recorded by the import, else all)")
    coverage.set_defaults(run=_coverage)

    access = commands.add_parser(
        "access", help="which routes of a table a caller reaches, or the table's routes against its scopes",
        description="With --scopes or --token: every route of the table the caller reaches, one 'METHOD /template' line each, "
        "then the others, each with what is missing indented below it, decided as the gateway decides (catalog rules, "
        "implications, step-up, conditions, and the live grants of the configured store). With --matrix: the table's routes "
        "against its catalog scopes (which scope, with what it implies, opens which route) as Markdown, CSV or one "
        "self-contained HTML page. Exit 0; 2 when the config does not load or an option is wrong.",
    )
    with_config(access)
    access.add_argument("--api", required=True, metavar="NAME", help="the route table's name")
    caller = access.add_mutually_exclusive_group()
    caller.add_argument("--scopes", metavar='"A B"', help="space-separated scopes the caller holds")
    caller.add_argument("--token", metavar="JWT", help="a bearer token to verify and use")
    access.add_argument("--claims", metavar="JSON", help="with --scopes: other claims of the caller, e.g. '{\"sub\": \"u1\"}'")
    access.add_argument("--matrix", action="store_true", help="draw the table's routes against its scopes")
    access.add_argument("--format", choices=["md", "csv", "html"], help="with --matrix: md (default), csv or html")
    access.set_defaults(run=_access)

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
    # every command that reads a config says the same when there is none (token mint reads it only if given)
    if args.run is not _token_mint and (missing := _missing_config(args.config) if hasattr(args, "config") else None) is not None:
        print(missing, file=sys.stderr)
        return _USAGE
    status: int = args.run(args)  # every command's function returns its exit status
    return status


if __name__ == "__main__":
    sys.exit(main())
