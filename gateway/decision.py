"""The decision: pure functions of (matched route, verified token, grant-store view, time).

`authorize()` works out the caller's effective scopes with the API's catalog and decides (403
invalid_scope, 404, 401 step-up, 403 forbidden); `evaluate()` is the same decision, step by step;
`judge_unmet()` judges what a route's exchange found below the route with the same rule. None
touches sockets, so the CLI's `explain` and the tests call exactly what the gateway runs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from gateway.catalog import CLIENT_CREDENTIALS, Assessment, Catalog, GrantNeed, StepUp, grants_needed
from gateway.claims import unmet
from gateway.errors import Forbidden, InsufficientUserAuthentication, InvalidScope, InvalidToken, NotFound, Refusal, Unauthorized
from gateway.grants.store import EMPTY_VIEW, GrantState, GrantView
from gateway.routing import RouteMatch
from gateway.scopes import Access, Allowed, Requirement, Unmet
from gateway.tokens import VerifiedToken


def authorize(
    match: RouteMatch, token: VerifiedToken, grant_type_claim: str = "gty", view: GrantView | None = None, now: float | None = None,
) -> Allowed:
    """Work out the caller's effective scopes for the matched route and decide.

    :param grant_type_claim: the claim naming the token's grant type (`tokens.grant_type_claim`).
    :param view: what the grant store holds for the caller `view_needed` names (None: nothing).
    :param now: the time to judge expiries by (default: now).
    :raises InvalidScope: the token's scopes break a rule of the API's catalog (403).
    :raises NotFound: a user token on another user's resource, an optional scope whose condition
        is not met yet, or a refusal the route hides (404).
    :raises InsufficientUserAuthentication: only a step-up scope would meet the requirement (401).
    :raises Forbidden: the requirement is not met (403).
    """
    route = match.route
    assessment = route.api.catalog.assess(token.scopes)
    # the usual request: no rule, claim or path parameter in play; nothing more to work out
    if assessment.simple and route.plain:
        if route.requirement.met_by(assessment.effective):
            return Allowed(token.subject, token.client, assessment.effective)
        raise _hidden(match, _forbidden(match, route.requirement, assessment.effective, assessment.ignored))
    # the usual live request: only the grant store in play, and every grant it needs active
    effective = assessment.effective_with_live
    if effective is not None and route.plain and view is not None and _all_live_active(assessment, view, time.time() if now is None else now):
        if route.requirement.met_by(effective):
            return Allowed(token.subject, token.client, effective)
    evaluation = evaluate(match, token, grant_type_claim, view, now)
    if evaluation.refusal is not None:
        try:
            raise evaluation.refusal
        finally:
            del evaluation  # else the refusal's traceback holds this frame, which holds the refusal: a cycle
    assert evaluation.allowed is not None
    return evaluation.allowed


def judge_unmet(
    unmet: Unmet, match: RouteMatch, token: VerifiedToken | None, grant_type_claim: str = "gty", view: GrantView | None = None,
    now: float | None = None,
) -> Refusal:
    """The refusal of requirements an exchange found below the route, by the route's own rule:
    401 without a token; 401 step-up or 404 when every one of them would be met after a step-up
    or once the user meets optional scopes' conditions; else 403 forbidden, naming each grant of
    the token's live scopes that is missing, revoked or expired. Only refused requests get here,
    so the decision is taken again step by step."""
    extra = unmet.extra
    if token is None:
        return Unauthorized(unmet.anonymous, **extra)
    evaluation = evaluate(match, token, grant_type_claim, view, now)
    requirements = unmet.requirements
    if None not in requirements:
        waiting = _waiting(evaluation.catalog, requirements, evaluation.effective, evaluation.pending_step_up,  # type: ignore[arg-type]
                           evaluation.pending_optional, unmet.what)
        if waiting is not None:
            waiting.extra.update(extra)
            return waiting
    why = "".join(f"; {reason}" for reason in evaluation.live_missing)
    first = next((requirement for requirement in requirements if requirement is not None), None)
    return Forbidden(unmet.forbidden + why, scope=first.first_alternative() if first else "", **extra)


@dataclass(slots=True)
class Evaluation:
    """Every step of one decision, in the order docs/route-tables.md gives: what `explain` shows, and what
    `authorize` decides with when its shortcut does not apply."""

    catalog: Catalog
    assessment: Assessment
    requirement: Requirement  # bound to the path's parameters
    grant_type: str | None = None  # worked out when a scope or the route depends on it
    stepped_up: tuple[str, ...] = ()  # step-up scopes that count: the authentication is recent and strong enough
    pending_step_up: tuple[tuple[str, StepUp], ...] = ()  # step-up scopes that do not count yet
    live_counted: frozenset[str] = frozenset()  # scopes that count through the grant store
    pending_optional: frozenset[str] = frozenset()  # optional forms whose condition is not met yet
    live_missing: tuple[str, ...] = ()  # each grant missing, expired or revoked, in words
    # each grant the decision read from the grant-store view, in words, and its state (None: missing)
    grants_read: tuple[tuple[str, GrantState | None], ...] = ()
    effective: frozenset[str] = frozenset()
    judged: bool = False  # `effective` was worked out and checked against the requirement (no refusal came first)
    allowed: Allowed | None = None
    refusal: Refusal | None = None
    hidden: Forbidden | None = None  # what a `hide: true` route answers 404 in place of


def view_needed(match: RouteMatch, token: VerifiedToken, grant_type_claim: str = "gty") -> tuple[str | None, str | None] | None:
    """The (client, subject) whose grant-store view the decision needs, or None.

    A client-credentials token on a `user:` route acts through the grants of the user its path
    names; any other token needs its own view when one of its scopes counts only through the store.
    """
    route = match.route
    if route.user is not None and token.grant_type(grant_type_claim) == CLIENT_CREDENTIALS:
        return token.client, match.params[route.user]
    if route.api.catalog.assess(token.scopes).live:
        return token.client, token.subject
    return None


def evaluate(
    match: RouteMatch, token: VerifiedToken, grant_type_claim: str = "gty", view: GrantView | None = None, now: float | None = None,
) -> Evaluation:
    """The decision for `match` and `token`, step by step; never raises a refusal, records it."""
    route = match.route
    catalog = route.api.catalog
    assessment = catalog.assess(token.scopes)
    requirement = route.requirement.bind(match.params) if route.requirement.bound else route.requirement
    evaluation = Evaluation(catalog, assessment, requirement)
    issuers = route.api.issuers
    if issuers is not None and token.issuer not in issuers:
        evaluation.refusal = InvalidToken(f"{route.api.name} accepts tokens of {', '.join(sorted(issuers))} only; this token's issuer is {token.issuer}")
        return evaluation
    # before any scope: a caller of another tenant learns nothing (404), whatever its scopes
    if route.claims and unmet(route.claims, token.claims, match.params) is not None:
        evaluation.refusal = NotFound(f"no route for {route.method} {match.path.raw.decode('ascii', 'backslashreplace')}")
        return evaluation
    if assessment.refusal is not None:
        evaluation.refusal = InvalidScope(assessment.refusal)
        return evaluation
    if assessment.grant_typed or route.user is not None:
        evaluation.grant_type = grant_type = token.grant_type(grant_type_claim)
        for scope, allowed in assessment.grant_typed:
            if grant_type not in allowed:
                evaluation.refusal = InvalidScope(f"{scope} is only for tokens of the {' or '.join(sorted(allowed))} grant; this token's grant is {grant_type}")
                return evaluation
    acting_for: str | None = None
    if route.user is not None:
        user = match.params[route.user]
        if evaluation.grant_type == CLIENT_CREDENTIALS:
            acting_for = user
        elif token.subject != user:
            # another user's resource: answered as if it did not exist
            evaluation.refusal = NotFound(f"no route for {route.method} {match.path.raw.decode('ascii', 'backslashreplace')}")
            return evaluation
    now = time.time() if now is None else now
    view = EMPTY_VIEW if view is None else view
    step_ups = assessment.step_up
    if acting_for is not None:
        # a client-credentials token acts on a user only through that user's offline grants to
        # the client (the grant store): its own scopes, step-up ones included, do not count here
        offline = [(scope, state) for scope, state in view.user_grants.items() if scope.endswith("_offline") and scope.removesuffix("_offline") in catalog.entries]
        counted = frozenset(scope.removesuffix("_offline") for scope, state in offline if state.active(now))
        evaluation.live_counted = counted
        evaluation.grants_read = tuple((f"the offline grant {scope} by {user} to client {token.client}", state) for scope, state in offline)
        step_ups = ()
    elif assessment.live:
        _live_step(evaluation, view, token.client, token.subject, now)
        counted = assessment.counted | evaluation.live_counted
    else:
        counted = assessment.counted
    claims = token.claims if step_ups else {}
    evaluation.stepped_up = tuple(scope for scope, step_up in step_ups if _authenticated_enough(claims, step_up, now))
    evaluation.pending_step_up = tuple((scope, step_up) for scope, step_up in step_ups if scope not in evaluation.stepped_up)
    effective = catalog.with_implications(counted | frozenset(evaluation.stepped_up)) if evaluation.stepped_up or counted != assessment.counted else assessment.effective
    evaluation.effective = effective
    evaluation.judged = True
    if requirement.met_by(effective):
        evaluation.allowed = Allowed(token.subject, token.client, effective)
        return evaluation
    refusal = _refusal(match, requirement, evaluation, acting_for)
    if isinstance(refusal, Forbidden) and route.hide:
        evaluation.hidden = refusal
    evaluation.refusal = _hidden(match, refusal)
    return evaluation


# each kind of grant a live scope needs (`catalog.grants_needed`), in the words of a refusal and of `explain`
_GRANT_WORDS = {
    "client": "the client grant of {scope} to client {client}",
    "user": "the user grant of {scope} by {subject} to client {client}",
    "offline": "the offline grant {scope} by {subject} to client {client}",
}


def _live_step(evaluation: Evaluation, view: GrantView, client: str | None, subject: str | None, now: float) -> None:
    """Step 3: which of the token's live scopes count, which wait for a condition, and why the
    others do not (docs/route-tables.md: active means present, not revoked, and not past `expires_at`)."""
    counted: set[str] = set()
    pending: set[str] = set()
    missing: list[str] = []
    read: list[tuple[str, GrantState | None]] = []
    for reading, grants in evaluation.assessment.live:
        scope = reading.scope
        assert scope is not None
        needed = [(_held(view, need), _GRANT_WORDS[need.kind].format(scope=need.scope, client=client, subject=subject))
                  for need in grants_needed(scope, reading.form, grants)]
        read.extend((what, state) for state, what in needed)
        problems = [problem for state, what in needed if (problem := _grant_problem(state, what, now)) is not None]
        missing.extend(problems)
        if problems:
            continue
        condition = evaluation.catalog.entries[reading.entry].condition if reading.entry is not None else None
        if "optional" in reading.form and condition is not None and scope not in view.conditions:
            pending.add(scope)
            continue
        counted.add(scope)
    evaluation.live_counted = frozenset(counted)
    evaluation.pending_optional = frozenset(pending)
    evaluation.live_missing = tuple(missing)
    evaluation.grants_read = tuple(read)


def _all_live_active(assessment: Assessment, view: GrantView, now: float) -> bool:
    """Every grant and condition that the token's live scopes need is in `view`, active."""
    for need in assessment.live_needs:
        state = _held(view, need)
        if state is None or not state.active(now):
            return False
    for scope in assessment.live_conditions:
        if scope not in view.conditions:
            return False
    return True


def _held(view: GrantView, need: GrantNeed) -> GrantState | None:
    return (view.client_grants if need.kind == "client" else view.user_grants).get(need.scope)


def _grant_problem(state: GrantState | None, what: str, now: float) -> str | None:
    if state is None:
        return f"{what} does not exist"
    if state.revoked_at is not None:
        return f"{what} was revoked at {_when(state.revoked_at)}"
    if state.expires_at is not None and now >= state.expires_at:
        return f"{what} expired at {_when(state.expires_at)}"
    return None


def grant_state(state: GrantState | None, now: float) -> str:
    """A grant's state in words, for explanations: active, expired, revoked or missing."""
    if state is None:
        return "missing"
    if state.revoked_at is not None:
        return f"revoked at {_when(state.revoked_at)}"
    if state.expires_at is None:
        return "active, no expiry"
    if now >= state.expires_at:
        return f"expired at {_when(state.expires_at)}"
    return f"active until {_when(state.expires_at)}"


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _refusal(match: RouteMatch, requirement: Requirement, evaluation: Evaluation, acting_for: str | None) -> Refusal:
    """Why an unmet requirement is refused, in the order docs/route-tables.md gives: step-up, then an optional scope
    whose condition is not met (404), then forbidden (404 if hidden)."""
    route = match.route
    waiting = _waiting(route.api.catalog, [requirement], evaluation.effective, evaluation.pending_step_up, evaluation.pending_optional,
                       f"{route.method} {route.template}")
    if waiting is not None:
        return waiting
    reasons = list(evaluation.live_missing)
    if acting_for is not None:
        reasons.insert(0, f"a client-credentials token acts on user {acting_for} only through that user's active offline grants to this client")
    return _forbidden(match, requirement, evaluation.effective, evaluation.assessment.ignored, reasons)


def _waiting(
    catalog: Catalog, requirements: Sequence[Requirement], effective: frozenset[str],
    pending_step_up: tuple[tuple[str, StepUp], ...], pending_optional: frozenset[str], what: str,
) -> Refusal | None:
    """401 when a step-up would meet every one of `requirements`; else 404 when the conditions of
    the pending optional scopes would; else None (forbidden)."""
    if pending_step_up:
        stepped = catalog.with_implications(effective | frozenset(scope for scope, _ in pending_step_up))
        chosen = [next((alternative for alternative in requirement.alternatives if alternative <= stepped), None) for requirement in requirements]
        if all(alternative is not None for alternative in chosen):
            wanted = frozenset().union(*chosen)  # type: ignore[arg-type]  # no None: checked by all() above
            needed = [step_up for scope, step_up in pending_step_up if catalog.with_implications(frozenset({scope})) & wanted]
            acr_values = _acr_values(needed)
            ages = [step_up.max_age for step_up in needed if step_up.max_age is not None]
            names = " and ".join(scope for scope, step_up in pending_step_up if step_up in needed)
            return InsufficientUserAuthentication(
                f"{what} needs {names}, which counts only after a recent authentication"
                f" with acr {' or '.join(acr_values)}" + (f" within {min(ages):g} seconds" if ages else "")
                + ": authenticate again and retry with the new token",
                acr_values=" ".join(acr_values), max_age=min(ages) if ages else None,
            )
    if pending_optional:
        fulfilled = catalog.with_implications(effective | pending_optional)
        if all(any(alternative <= fulfilled for alternative in requirement.alternatives) for requirement in requirements):
            return NotFound(
                f"{' and '.join(sorted(pending_optional))}: the user has not met the scope's condition yet",
                pending=sorted(pending_optional),
            )
    return None


def _forbidden(
    match: RouteMatch, requirement: Requirement, effective: frozenset[str], ignored: tuple[str, ...] = (), reasons: list[str] | None = None,
) -> Forbidden:
    """403 forbidden naming what is missing (and why, for live grants), and the token's scopes
    the catalog does not know, which a caller may have believed counted."""
    route = match.route
    missing = [sorted(alternative - effective) for alternative in requirement.alternatives]
    shown = " and ".join(missing[0]) if len(missing) == 1 else "one of: " + "; ".join(" and ".join(scopes) for scopes in missing)
    held = " ".join(sorted(effective)) or "no scopes"
    description = f"{route.method} {route.template} requires {requirement.describe()}; the token grants {held} (missing {shown})"
    if ignored:
        description += f"; ignored: {' '.join(ignored)}, not in the catalog of {route.api.name}"
    if reasons:
        description += "; " + "; ".join(reasons)
    return Forbidden(description, scope=requirement.first_alternative(), required=[sorted(alternative) for alternative in requirement.alternatives])


def _hidden(match: RouteMatch, refusal: Refusal) -> Refusal:
    """A route that hides answers 404 in place of 403 forbidden, revealing nothing."""
    if match.route.hide and isinstance(refusal, Forbidden):
        return NotFound(f"no route for {match.route.method} {match.path.raw.decode('ascii', 'backslashreplace')}")
    return refusal


def _acr_values(needed: list[StepUp]) -> list[str]:
    """The acr values that satisfy every needed step-up, in the first one's order of preference
    (all of them, when no single value satisfies every one)."""
    first = list(needed[0].acr)
    common = [value for value in first if all(value in step_up.acr for step_up in needed[1:])]
    return common or list(dict.fromkeys(value for step_up in needed for value in step_up.acr))


def _authenticated_enough(claims: Mapping[str, Any], step_up: StepUp, now: float) -> bool:
    return step_up_shortfall(claims, step_up, now) is None


def step_up_shortfall(claims: Mapping[str, Any], step_up: StepUp, now: float) -> str | None:
    """What keeps a step-up scope from counting, in words; None: nothing. RFC 9470: the token's
    `acr` (or an `amr` entry) is an accepted value, and `auth_time` is at most `max_age` seconds old."""
    acr = claims.get("acr")
    amr = claims.get("amr")
    methods = amr if isinstance(amr, list) else []
    if not (isinstance(acr, str) and acr in step_up.acr) and not any(isinstance(method, str) and method in step_up.acr for method in methods):
        accepted = " or ".join(step_up.acr)
        if acr is None and not methods:
            return f"the token has no acr claim (nor amr): it needs acr {accepted}"
        return f"the token's acr is {json.dumps(acr)}" + (f" and amr {json.dumps(amr)}" if methods else "") + f", not {accepted}"
    if step_up.max_age is None:
        return None
    auth_time = claims.get("auth_time")
    if auth_time is None:
        return f"the token has no auth_time claim: it needs an authentication at most {step_up.max_age:g} s old"
    if isinstance(auth_time, bool) or not isinstance(auth_time, (int, float)) or not math.isfinite(auth_time):
        return f"the token's auth_time {json.dumps(auth_time)} is not a time (seconds since 1970)"
    if now - auth_time > step_up.max_age:
        return f"the token's authentication is {now - auth_time:.0f} s old (auth_time), over max_age {step_up.max_age:g} s"
    return None


def is_public(match: RouteMatch) -> bool:
    return match.route.requirement.access is Access.PUBLIC
