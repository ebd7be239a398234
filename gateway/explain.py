"""`gateway explain`: one request's decision, step by step, as the app takes it.

    the canonical path -> candidate routes and the one that matched -> the requirement
    -> the caller's scopes and the claim they came from -> the five catalog steps, with
       each grant read from the store -> GraphQL fields or response members -> the decision,
       its status and its challenge

Every verdict comes from the app's own pipeline (`pipeline.decide`, with a trace); this module
only puts it into words.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.authentication import Authenticator, key_stores
from gateway.catalog import CLIENT_CREDENTIALS
from gateway.decision import Evaluation, grant_state, step_up_shortfall, view_needed
from gateway.errors import InvalidScope, Refusal, TemporarilyUnavailable
from gateway.grants.live import read_view
from gateway.grants.store import GrantView, StoreUnavailable
from gateway.paths import canonicalise
from gateway.pipeline import Outcome, Trace, answer, decide
from gateway.routing import RouteMatch
from gateway.scopes import SCOPE_TOKEN
from gateway.settings import Config
from gateway.tables import Route
from gateway.tokens import VerifiedToken
from gateway.types import Scope

# continuation lines line up under the values of `label:    value` lines
_INDENT = " " * 11


class UsageError(Exception):
    """The request to explain is not given correctly (exit 2)."""


@dataclass(slots=True)
class Caller:
    """Who sends the request: `scopes` (and other `claims`) taken as given, or a `token` to verify."""

    scopes: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    token: str | None = None


@dataclass(slots=True)
class Explanation:
    lines: list[str]
    refusal: Refusal | None  # None: forwarded

    @property
    def status(self) -> int | None:
        """The gateway's own answer's status; None when the request is forwarded."""
        return None if self.refusal is None else self.refusal.status


def parse_claims(text: str | None) -> dict[str, Any]:
    """:raises UsageError: `text` is not a JSON object."""
    if text is None:
        return {}
    try:
        claims = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--claims: not JSON ({exc})") from None
    if not isinstance(claims, dict):
        raise UsageError("--claims: a JSON object of claims, e.g. '{\"sub\": \"u1\", \"acr\": \"sms\"}'")
    return claims


async def explain(
    config: Config, method: str, target: str, caller: Caller, *, body: bytes | None = None, content_type: str | None = None,
) -> Explanation:
    """The decision for `method` `target` (path and query, as sent) from `caller`, in words: the
    trace of the request's way through `pipeline.decide`, the app's own.

    :param body: the request body (a GraphQL route reads it).
    :raises UsageError: a scope given that is not a valid scope.
    """
    method = method.upper()
    path, _, query = target.partition("?")
    lines = [f"request:   {method} {target}"]
    outcome = Outcome(trace=Trace())
    try:
        canonical = canonicalise(path.encode("utf-8"))
        lines.append(f"path:      {canonical.raw.decode('ascii', 'backslashreplace')}, segments {list(canonical.segments)}")
        steps = _Steps(config, caller)
        headers = [(b"content-type", content_type.encode("latin-1"))] if content_type is not None else []
        scope: Scope = {"type": "http", "method": method, "query_string": query.encode("utf-8"), "headers": headers}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body or b"", "more_body": False}

        try:
            await decide(outcome, steps, method, path.encode("utf-8"), query.encode("utf-8"), steps.authorization, scope, receive)
        finally:
            _trace(lines, outcome, method, config.tables.candidates(canonical.segments), steps)
        shadow = outcome.shadow
        if shadow is not None:
            status, _, _ = answer(shadow.refusal, outcome.match)
            upstream = shadow.api.upstream
            lines.append(f"decision:  {status} {shadow.refusal.error}: {shadow.refusal.description}")
            lines.append(f"shadow:    table {shadow.api.name} is in shadow mode (it enforces nothing): the request is forwarded all the same, to "
                         f"{upstream.origin.scheme}://{upstream.authority.decode()}{shadow.target.decode()}")
            return Explanation(lines, None)
        match = outcome.match
        assert match is not None
        upstream = match.route.api.upstream
        lines.append(f"decision:  forward to {upstream.origin.scheme}://{upstream.authority.decode()}{match.upstream_target.decode()}")
        return Explanation(lines, None)
    except Refusal as refusal:
        status, headers, _ = answer(refusal, outcome.match)
        lines.append(f"decision:  {status} {refusal.error}: {refusal.description}")
        for name, value in headers:
            if name == b"www-authenticate":
                lines.append(f"header:    WWW-Authenticate: {value.decode()}")
        return Explanation(lines, refusal)


class _Steps:
    """What the pipeline reads, for `explain`: the config's tables, the caller as given (its
    scopes taken as they are, or its token verified), and the configured grant store read straight."""

    def __init__(self, config: Config, caller: Caller) -> None:
        self.config = config
        self.caller = caller
        self.tables = config.tables
        self.grant_type_claim = config.tokens.grant_type_claim
        self.authenticator = self
        self.grants = self if config.grants.store is not None else None
        self.refresh = 1.0
        self.authorization = [f"Bearer {caller.token}".encode("latin-1")] if caller.token is not None else []
        self.token_lines: list[str] = []  # how the caller's token was read
        self.read_from: str | None = None  # whose grant-store view was read, and where from

    def recall(self, authorization: list[bytes], query: bytes) -> VerifiedToken | None:
        return None

    async def authenticate(self, authorization: list[bytes], query: bytes) -> VerifiedToken:
        return await caller_token(self.config, self.caller, query, self.token_lines)

    def cached(self, api: str, client: str | None, subject: str | None) -> GrantView | None:
        return None

    async def view(self, api: str, client: str | None, subject: str | None) -> GrantView:
        grants = self.config.grants
        assert grants.store is not None
        self.read_from = f"read from {grants.store} for client {client}, user {subject}"
        return await read_view(grants.store, api, client, subject)


def _trace(lines: list[str], outcome: Outcome, method: str, candidates: tuple[Route, ...], steps: _Steps) -> None:
    """The outcome's trace in words, as far as the request got."""
    match = outcome.match
    if match is None:
        _no_route(lines, method, candidates)
        return
    compiled = match.route
    lines.append(f"route:     {_named(compiled)}")
    _candidates(lines, method, candidates, compiled)
    if match.params:
        lines.append("params:    " + ", ".join(f"{name}={value}" for name, value in match.params.items()))
    lines.append(f"requires:  {compiled.requirement.describe()}")
    lines.extend(steps.token_lines)
    trace = outcome.trace
    assert trace is not None
    evaluation = trace.evaluation
    if outcome.token is not None and evaluation is not None:
        _steps(lines, match, outcome.token, evaluation, steps.read_from, steps.grant_type_claim)
        if evaluation.hidden is not None:
            lines.append(f"hidden:    {compiled.method} {compiled.template} says hide: true, so this refusal is answered 404 "
                         f"as if the route did not exist; it is 403 forbidden: {evaluation.hidden.description}")
    lines.extend(trace.exchange)


def _named(compiled: Route) -> str:
    return f"{compiled.method} {compiled.template}  (table {compiled.api.name}, {compiled.source})"


def _candidates(lines: list[str], method: str, candidates: tuple[Route, ...], matched: Route) -> None:
    """Every route whose template matches the path, most specific first, and why each other one was not taken."""
    for candidate in candidates:
        if candidate is matched:
            why = "matched" if candidate.method == method else f"matched: {method} is answered by the {candidate.method} route"
        else:
            why = "another method" if candidate.method != matched.method else "less specific than the route matched"
        lines.append(f"candidate: {_named(candidate)}: {why}")


def _no_route(lines: list[str], method: str, candidates: tuple[Route, ...]) -> None:
    if not candidates:
        lines.append("route:     none: no route of any method has a template matching this path")
        return
    methods = sorted({candidate.method for candidate in candidates})
    lines.append(f"route:     none for {method}: this path has routes for {', '.join(methods)} only, and a wrong method is "
                 "answered as an unknown path (404), revealing no method")
    for candidate in candidates:
        lines.append(f"candidate: {_named(candidate)}: another method")


async def caller_token(config: Config, caller: Caller, query: bytes, lines: list[str]) -> VerifiedToken:
    """The caller as the decision sees it, and where its scopes came from."""
    if caller.scopes is not None:
        scopes = frozenset(caller.scopes.split())
        for scope in scopes:
            if not SCOPE_TOKEN.fullmatch(scope):
                raise UsageError(f"--scopes: {scope!r} is not a valid scope")
        claims = caller.claims
        lines.append("token:     given with --scopes (signature and claims not checked)"
                     + (f"; claims {json.dumps(claims, sort_keys=True)}" if claims else ""))
        lines.append(f"scopes:    {' '.join(sorted(scopes)) or '(none)'}, from --scopes {caller.scopes!r}")
        subject, client = claims.get("sub"), claims.get("client_id", claims.get("azp"))
        return VerifiedToken(scopes, subject, client, float("inf"), json.dumps(claims).encode())
    header = [f"Bearer {caller.token}".encode("latin-1")] if caller.token is not None else []
    verified = await Authenticator(config.identity, key_stores(config.identity)).authenticate(header, query)
    tokens = next((entry for entry in config.identity.entries if entry.issuer == verified.issuer), config.tokens)
    claims = verified.claims
    lines.append(f"token:     valid; sub={verified.subject} client={verified.client}" + (f" iss={verified.issuer}" if len(config.identity.entries) > 1 else ""))
    found = [name for name in tokens.scope_claims if claims.get(name) is not None]
    if not found:
        lines.append(f"scopes:    (none): the token has no {' or '.join(repr(name) for name in tokens.scope_claims)} claim (tokens.scope_claims)")
    for name in found:
        lines.append(f"scopes:    {json.dumps(claims[name])}, from claim {name!r} (tokens.scope_claims)")
    if len(found) > 1:
        lines.append(f"{_INDENT}together: {' '.join(sorted(verified.scopes))}")
    return verified


async def grant_view(config: Config, match: RouteMatch, token: VerifiedToken) -> tuple[GrantView | None, str | None]:
    """The grant-store view the decision needs, read from the configured store, and whose it is
    in words (None, None: none is needed).

    :raises TemporarilyUnavailable: the store cannot be read, as the app answers then.
    """
    caller = view_needed(match, token, config.tokens.grant_type_claim)
    if caller is None or config.grants.store is None:
        return None, None
    try:
        view = await read_view(config.grants.store, match.route.api.name, *caller)
    except StoreUnavailable as exc:
        raise TemporarilyUnavailable(f"the grant store cannot be read: {exc}", retry_after=1) from None
    return view, f"read from {config.grants.store} for client {caller[0]}, user {caller[1]}"


def _steps(lines: list[str], match: RouteMatch, token: VerifiedToken, evaluation: Evaluation, read_from: str | None, grant_type_claim: str) -> None:
    """The steps of the effective scopes, in their order (docs/route-tables.md), as `evaluate` took them."""
    compiled = match.route
    catalog = compiled.api.catalog
    assessment = evaluation.assessment
    if compiled.requirement.bound:
        lines.append(f"bound:     {evaluation.requirement.describe()} (the path's parameters in the requirement)")
    if not catalog.entries:
        lines.append(f"step 1, aliases and forms: nothing to do: table {compiled.api.name} has no scope catalog, so scopes are read as written")
        lines.append("step 2, rules: nothing to do: no catalog")
    else:
        lines.append("step 1, aliases and forms:")
        for reading in assessment.readings:
            ignored = " (ignored)" if reading.scope is None and not reading.problem and not catalog.refuse_unknown else ""
            lines.append(f"{_INDENT}{reading.describe()}{ignored}")
        if not assessment.readings:
            lines.append(f"{_INDENT}nothing to do: the token holds no scope")
        if assessment.refusal is not None:
            lines.append(f"step 2, rules: broken: {assessment.refusal}")
            return
        lines.append("step 2, rules: none broken")
    if evaluation.grant_type is not None:
        lines.append(f"{_INDENT}grant type {evaluation.grant_type}: {_grant_type_source(token, grant_type_claim)}")
        if isinstance(evaluation.refusal, InvalidScope):
            return
    user = compiled.user
    acting = user is not None and evaluation.grant_type == CLIENT_CREDENTIALS
    if user is not None:
        lines.append(f"user:      the route acts on user {match.params[user]!r} (parameter {user}); "
                     + ("a client-credentials token acts only through that user's offline grants to its client" if acting
                        else f"the token's subject is {token.subject!r}"))
        if not acting and token.subject != match.params[user]:
            lines.append(f"{_INDENT}another user's resource: answered as if it did not exist")
            return
    _live(lines, evaluation, read_from, acting)
    _step_up(lines, evaluation, token.claims)
    counted = assessment.counted | evaluation.live_counted | frozenset(evaluation.stepped_up)
    implied = sorted(evaluation.effective - counted)
    lines.append(f"step 5, implications: {' '.join(implied)} (implied by the catalog of {compiled.api.name})" if implied
                 else "step 5, implications: nothing implied")
    lines.append(f"effective: {' '.join(sorted(evaluation.effective)) or '(none)'}")


def _grant_type_source(token: VerifiedToken, claim: str) -> str:
    """Where `VerifiedToken.grant_type` read the grant type from, in words."""
    value = token.claims.get(claim)
    if isinstance(value, str) and value:
        return f"from claim {claim!r} (tokens.grant_type_claim)"
    if token.subject is None:
        reason = "the token has no subject"
    elif token.subject == token.client:
        reason = "its subject is its client"
    else:
        reason = "its subject is not its client"
    return f"inferred: no claim {claim!r}, and {reason}"


def _live(lines: list[str], evaluation: Evaluation, read_from: str | None, acting: bool) -> None:
    """Step 3: each grant and condition read from the store, with its state."""
    if read_from is None:
        lines.append("step 3, live grants: nothing to do: no scope of the token counts only through the grant store")
        return
    lines.append(f"step 3, live grants: {read_from}")
    now = time.time()
    for what, state in evaluation.grants_read:
        lines.append(f"{_INDENT}{what}: {grant_state(state, now)}")
    if acting and not evaluation.grants_read:
        lines.append(f"{_INDENT}the user has no offline grant to this client")
    for reading, _ in evaluation.assessment.live:
        # a condition is read once the form's grants are active: then it counts, or waits for it
        condition = evaluation.catalog.entries[reading.entry].condition if reading.entry is not None else None
        if "optional" in reading.form and condition is not None:
            if reading.scope in evaluation.pending_optional:
                lines.append(f"{_INDENT}the condition of {reading.scope} ({condition}): not met: {reading.raw} waits for it")
            elif reading.scope in evaluation.live_counted:
                lines.append(f"{_INDENT}the condition of {reading.scope} ({condition}): met")
    lines.append(f"{_INDENT}counts: {' '.join(sorted(evaluation.live_counted)) or '(nothing)'}")


def _step_up(lines: list[str], evaluation: Evaluation, claims: Mapping[str, Any]) -> None:
    if not evaluation.stepped_up and not evaluation.pending_step_up:
        lines.append("step 4, step-up: nothing to do: no step-up scope in play")
        return
    lines.append("step 4, step-up:")
    for scope in evaluation.stepped_up:
        lines.append(f"{_INDENT}{scope} counts: the token's authentication is recent and strong enough")
    for scope, step_up in evaluation.pending_step_up:
        age = f" within {step_up.max_age:g} s" if step_up.max_age is not None else ""
        lines.append(f"{_INDENT}{scope} is pending: it counts only after an authentication with acr {' or '.join(step_up.acr)}{age}")
        shortfall = step_up_shortfall(claims, step_up, time.time())
        if shortfall is not None:
            lines.append(f"{_INDENT}{_INDENT}{shortfall}")
