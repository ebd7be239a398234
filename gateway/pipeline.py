"""One request's path to its outcome, in one function (`decide`): the route it matches, the
verified token, the effective scopes and the decision, the identity headers, and what the route's
exchange makes of it. The proxy app forwards on the outcome, decision mode answers it, and
`gateway explain` prints its trace: all three take the request through this one function.

    canonical path + route match   routing.route                 400 / 404
    -> public route? done
    -> credentials, verified token  authentication               401 / 400
    -> the caller's grant-store view (memory, else the store)    503
    -> effective scopes, decision   decision.authorize           403 / 404 / 401 step-up
    -> identity headers             identity
    -> the route's exchange         Exchange.prepare, its `Unmet` judged by decision.judge_unmet

The outcome is filled in as the steps take it, so a refused request's outcome still says how far
it got (the route, the token): what the access log and the metrics note.

A table in shadow mode (`mode: shadow`) decides the same way; where it would refuse the caller
(401, 403, 404: `Refusal.about_caller`), `decide` turns the refusal into `Outcome.shadow` here, in
one place, and the request is forwarded (decision mode: allowed) with only the identity headers a
verified token gives. What is refused for the request's form or the gateway's state (an ambiguous
path, several credentials, an unreadable GraphQL request, 5xx) stays refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.asgi import read_body
from gateway.decision import Evaluation, authorize, evaluate, judge_unmet, view_needed
from gateway.errors import InvalidToken, Refusal, TemporarilyUnavailable, render
from gateway.grants.store import GrantView, StoreUnavailable
from gateway.identity import caller_headers, identity_headers
from gateway.paths import canonicalise
from gateway.routing import RouteMatch, route
from gateway.scopes import Access, Allowed, Unmet
from gateway.tables import Api, Forwarding, Tables
from gateway.tokens import VerifiedToken
from gateway.types import Headers, Receive, Scope

logger = logging.getLogger("gateway")
_PUBLIC = Access.PUBLIC  # a module global: one lookup per request, not two


class Authenticating(Protocol):
    """Credentials to a verified token (`authentication.Authenticator`, or `explain`'s given scopes)."""

    def recall(self, authorization: list[bytes], query: bytes) -> VerifiedToken | None: ...

    async def authenticate(self, authorization: list[bytes], query: bytes) -> VerifiedToken: ...


class GrantViews(Protocol):
    """The grant store's views (`grants.live.LiveGrants`, or `explain`'s straight reads)."""

    refresh: float

    def cached(self, api: str, client: str | None, subject: str | None) -> GrantView | None: ...

    async def view(self, api: str, client: str | None, subject: str | None) -> GrantView: ...


class Steps(Protocol):
    """What the pipeline reads: a `runtime.Runtime`, or what `explain` builds from a config."""

    @property
    def tables(self) -> Tables: ...

    @property
    def authenticator(self) -> Authenticating: ...

    @property
    def grants(self) -> GrantViews | None: ...

    @property
    def grant_type_claim(self) -> str: ...


@dataclass(slots=True)
class Trace:
    """What `explain` shows beside the outcome: the decision step by step, and the exchange's words."""

    view_of: tuple[str | None, str | None] | None = None  # (client, subject) whose grant-store view was read
    evaluation: Evaluation | None = None
    exchange: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Shadow:
    """A request its table in shadow mode would refuse, forwarded instead."""

    refusal: Refusal  # what enforce mode would answer
    api: Api  # the table: the route's, or for a path no route matches, the table whose prefix holds it
    target: bytes  # the upstream's request target: its base path, the path after the prefix, the query


# per-request values are not frozen: a frozen dataclass's __init__ costs four times as much
@dataclass(slots=True)
class Outcome:
    """One request's outcome, filled in step by step by `decide` (a refused request's still says
    how far it got)."""

    match: RouteMatch | None = None
    token: VerifiedToken | None = None  # None: not verified (a public route, or refused before)
    allowed: Allowed | None = None  # None: a public route, or refused
    identity: Sequence[tuple[bytes, bytes]] = ()  # the identity headers the upstream gets
    forwarding: Forwarding | None = None  # what the route's exchange decided; None: forward as received
    trace: Trace | None = None  # given: `decide` records the steps in it
    shadow: Shadow | None = None  # set: refused by a table in shadow mode, and forwarded all the same


async def decide(
    outcome: Outcome, steps: Steps, method: str, path: bytes, query: bytes, authorization: list[bytes],
    scope: Scope | None = None, receive: Receive | None = None,
) -> None:
    """Take a request to its outcome, filling `outcome` in.

    :param path: the raw path, as received (without its query).
    :param authorization: every Authorization header value the request carried.
    :param scope: the request's ASGI scope and `receive`: a route with an exchange reads them
        (its body, its media type). Decision mode serves no such route.
    :raises Refusal: the request is refused; `outcome` holds what was worked out until then. A
        refusal of the caller by a table in shadow mode is not raised: it is `outcome.shadow`.
    """
    view = None
    body = None  # the request body, once a route's exchange has read it
    try:
        # no coroutine per step and no await unless one is needed: the usual request resumes none
        match = outcome.match = route(steps.tables, method, path, query)
        compiled = match.route
        if compiled.requirement.access is not _PUBLIC:
            authenticator = steps.authenticator
            token = authenticator.recall(authorization, query)
            if token is None:
                token = await authenticator.authenticate(authorization, query)
            outcome.token = token
            grants = steps.grants
            trace = outcome.trace
            if compiled.live and grants is not None:
                caller = view_needed(match, token, steps.grant_type_claim)
                if caller is not None:
                    if trace is not None:
                        trace.view_of = caller
                    view = grants.cached(compiled.api.name, *caller) or await _grant_view(grants, compiled.api.name, caller)
            if trace is None:
                allowed = authorize(match, token, steps.grant_type_claim, view)
            else:
                evaluation = trace.evaluation = evaluate(match, token, steps.grant_type_claim, view)
                if evaluation.refusal is not None:
                    raise evaluation.refusal
                assert evaluation.allowed is not None
                allowed = evaluation.allowed
            outcome.allowed = allowed
            outcome.identity = identity_headers(allowed)
        exchange = compiled.exchange
        if exchange is not None:
            assert scope is not None and receive is not None, "a route with an exchange reads the request"
            body = None if exchange.body_limit is None else await read_body(receive, exchange.body_limit)
            if outcome.trace is not None:
                outcome.trace.exchange = await exchange.describe(scope, body, outcome.allowed)
            try:
                outcome.forwarding = await exchange.prepare(scope, body, outcome.allowed)
            except Unmet as unmet:
                raise judge_unmet(unmet, match, outcome.token, steps.grant_type_claim, view) from None
    except Refusal as refusal:
        if not refusal.about_caller:
            raise
        owner: Api | None
        if outcome.match is not None:
            owner = outcome.match.route.api
        else:
            tables = steps.tables
            # no route: the path belongs to the table whose prefix holds it, unless a table's RFC
            # 9728 document is served there (no table forwards what the gateway answers itself)
            owner = None if path in tables.documents else tables.owner(canonicalise(path).segments)
        if owner is None or owner.shadow is None:
            raise
        _shadow(outcome, refusal, owner, steps.grant_type_claim, method, path, query, body, view)


def _shadow(
    outcome: Outcome, refusal: Refusal, api: Api, grant_type_claim: str, method: str, path: bytes, query: bytes, body: bytes | None,
    view: GrantView | None,
) -> None:
    """Forward `refusal`'s request all the same, for its table is in shadow mode: to the route's
    upstream target, or (no route) to the path after the table's prefix; with the body as the
    exchange read it, not rewritten; with identity headers only from a verified token's own."""
    match = outcome.match
    if match is not None:
        target = match.upstream_target
        where = f"{match.route.method} {match.route.template}"
    else:
        target = api.upstream.base_path + canonicalise(path).raw_tail(len(api.prefix)) + (b"?" + query if query else b"")
        where = "no route"
    token = outcome.token
    if outcome.allowed is None:  # else the route allowed it and its exchange refused: its identity headers stand
        # a missing token, or one this table does not accept (its issuer), vouches for no one
        if token is None or match is None or isinstance(refusal, InvalidToken):
            outcome.identity = ()
        else:
            # the effective scopes where the decision worked them out (they did not meet the
            # requirement); a refusal before that (a catalog rule, a claim, another user's
            # resource) counted none, so none are claimed
            evaluation = evaluate(match, token, grant_type_claim, view)
            outcome.identity = (identity_headers(Allowed(token.subject, token.client, evaluation.effective)) if evaluation.judged
                                else caller_headers(token.subject, token.client))
    outcome.forwarding = None if body is None else Forwarding(body=body)
    outcome.shadow = Shadow(refusal, api, target)
    logger.info("%s %s: table %s is in shadow mode: forwarded what it would refuse (%s): %d %s: %s", method,
                path.decode("ascii", "backslashreplace"), api.name, where, refusal.status, refusal.error, refusal.description)


async def _grant_view(grants: GrantViews, api: str, caller: tuple[str | None, str | None]) -> GrantView:
    """The grant-store view of `caller`, read from the store (the view was not in memory).

    :raises TemporarilyUnavailable: the store cannot be read (503, never a decision on a guess).
    """
    try:
        return await grants.view(api, *caller)
    except StoreUnavailable as exc:
        logger.warning("grant store unavailable for %s: %s", api, exc)
        retry = max(1, math.ceil(grants.refresh))
        raise TemporarilyUnavailable(f"the grants this request needs cannot be read right now; retry in {retry} s", retry_after=retry) from None


def answer(refusal: Refusal, match: RouteMatch | None) -> tuple[int, Headers, bytes]:
    """Proxy mode's answer to `refusal` (status, headers, body), in the realm and with the RFC 9728
    metadata of the route's table when the request got as far as a route."""
    graphql = _graphql(match)
    if match is None:
        return render(refusal, graphql=graphql)
    api = match.route.api
    metadata_url = api.resource.metadata_url if api.resource is not None else None
    return render(refusal, api.name, metadata_url, graphql=graphql)


def _graphql(match: RouteMatch | None) -> bool:
    """Whether the request's route is a GraphQL route: its every refusal is a GraphQL response too,
    whichever step refused it (no token, a bad one, the route's own requirement, a field)."""
    return match is not None and match.route.exchange is not None and match.route.exchange.graphql
