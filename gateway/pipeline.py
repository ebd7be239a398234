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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.asgi import read_body
from gateway.decision import Evaluation, authorize, evaluate, judge_unmet, view_needed
from gateway.errors import Refusal, TemporarilyUnavailable, render
from gateway.grants.store import GrantView, StoreUnavailable
from gateway.identity import identity_headers
from gateway.routing import RouteMatch, route
from gateway.scopes import Access, Allowed, Unmet
from gateway.tables import Forwarding, Tables
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


async def decide(
    outcome: Outcome, steps: Steps, method: str, path: bytes, query: bytes, authorization: list[bytes],
    scope: Scope | None = None, receive: Receive | None = None,
) -> None:
    """Take a request to its outcome, filling `outcome` in.

    :param path: the raw path, as received (without its query).
    :param authorization: every Authorization header value the request carried.
    :param scope: the request's ASGI scope and `receive`: a route with an exchange reads them
        (its body, its media type). Decision mode serves no such route.
    :raises Refusal: the request is refused; `outcome` holds what was worked out until then.
    """
    # no coroutine per step and no await unless one is needed: the usual request resumes none
    match = outcome.match = route(steps.tables, method, path, query)
    compiled = match.route
    if compiled.requirement.access is not _PUBLIC:
        authenticator = steps.authenticator
        token = authenticator.recall(authorization, query)
        if token is None:
            token = await authenticator.authenticate(authorization, query)
        outcome.token = token
        view = None
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
    else:
        view = None
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
