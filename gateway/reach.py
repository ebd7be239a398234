"""`gateway access --api NAME --scopes/--token`: each route of one table that a caller reaches,
and for the others what is missing.

Each route is decided by `evaluate`, the step-by-step decision the app and `explain` run, with the
grants the configured store holds; this module only chooses the path parameters and puts the
verdicts into words. A path parameter is given the value the decision would need: the token's
own subject for a `user:` parameter, each instance the token holds for a parameterised scope
(`id:{bankId}` -> every `id:B1` held), else it is left as `{name}`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from urllib.parse import quote

from gateway.catalog import CLIENT_CREDENTIALS, is_parameterised, split_parameterised
from gateway.decision import Evaluation, evaluate
from gateway.errors import Forbidden, InvalidScope, NotFound, Refusal
from gateway.explain import Caller, UsageError, caller_token, grant_view
from gateway.paths import CanonicalPath
from gateway.routing import RouteMatch, parse_template
from gateway.scopes import Access, Requirement
from gateway.settings import Config
from gateway.tables import Api, Route
from gateway.tokens import VerifiedToken

# parameter values tried per route at most: a token holding many instances is a rare, odd token
_MAX_BINDINGS = 64


@dataclass(frozen=True, slots=True)
class Reach:
    """One route, and whether the caller reaches it."""

    route: Route
    reached: bool
    # the path parameters it is reached with (`bankId=B1`), or why it is not, one line each
    notes: tuple[str, ...] = ()


def find_api(config: Config, name: str) -> Api:
    """:raises UsageError: no table has that name."""
    for api in config.tables.apis:
        if api.name == name:
            return api
    raise UsageError(f"no route table is named {name!r} (tables: {', '.join(api.name for api in config.tables.apis)})")


async def reach(config: Config, api: Api, caller: Caller) -> tuple[list[str], list[Reach]]:
    """How the caller's token was read (the lines `explain` prints of it), and each route of `api`.

    :raises UsageError: a scope given that is not a valid scope.
    """
    lines: list[str] = []
    token: VerifiedToken | None = None
    refused: Refusal | None = None
    try:
        token = await caller_token(config, caller, b"", lines)
    except Refusal as refusal:  # a bad token reaches the public routes only
        lines.append(f"token:     refused: {refusal.status} {refusal.error}: {refusal.description}")
        refused = refusal
    if token is not None:
        broken = api.catalog.assess(token.scopes).refusal
        if broken is not None:
            lines.append(f"rules:     broken, so every route that needs a token is refused: {broken}")
    found = []
    for route in config.tables.routes:
        if route.api is not api:
            continue
        if route.requirement.access is Access.PUBLIC:
            found.append(Reach(route, True, ("public: no token needed",)))
        elif token is None:
            assert refused is not None
            found.append(Reach(route, False, (f"{refused.status} {refused.error}",)))
        else:
            found.append(await _decide(config, route, token))
    return lines, found


async def _decide(config: Config, route: Route, token: VerifiedToken) -> Reach:
    """The route decided with every binding of its parameters worth trying; reached if one is allowed."""
    claim = config.tokens.grant_type_claim
    first: tuple[RouteMatch, Evaluation | Refusal] | None = None
    allowed = []
    for values in _bindings(route, token, claim):
        match = _match(route, values)
        try:
            view, _ = await grant_view(config, match, token)
            outcome: Evaluation | Refusal = evaluate(match, token, claim, view)
        except Refusal as refusal:  # the grant store cannot be read: 503, as the app answers then
            outcome = refusal
        if isinstance(outcome, Evaluation) and outcome.refusal is None:
            allowed.append(values)
        elif first is None:
            first = (match, outcome)
    if allowed:
        shown = [", ".join(f"{name}={value}" for name, value in values.items() if value != f"{{{name}}}") for values in allowed]
        return Reach(route, True, tuple(f"with {binding}" for binding in shown if binding))
    assert first is not None
    return Reach(route, False, _missing(route, *first))


def _bindings(route: Route, token: VerifiedToken, grant_type_claim: str) -> list[dict[str, str]]:
    """The values of the route's path parameters to decide with."""
    names = [name for name, _ in route.params]
    choices: dict[str, list[str]] = {name: [f"{{{name}}}"] for name in names}
    if route.user is not None and token.subject is not None and token.grant_type(grant_type_claim) != CLIENT_CREDENTIALS:
        choices[route.user] = [token.subject]
    catalog = route.api.catalog
    for scope in _bound_scopes(route.requirement):
        parts = split_parameterised(scope)
        assert parts is not None
        prefix, suffix = parts
        name = scope[len(prefix) + 1:len(scope) - len(suffix) - 1]
        held = sorted({
            reading.scope[len(prefix):len(reading.scope) - len(suffix)]
            for reading in catalog.assess(token.scopes).readings
            if reading.scope is not None and len(reading.scope) > len(prefix) + len(suffix)
            and reading.scope.startswith(prefix) and reading.scope.endswith(suffix)
        })
        if held and name in choices:
            choices[name] = held
    combinations = itertools.islice(itertools.product(*(choices[name] for name in names)), _MAX_BINDINGS)
    return [dict(zip(names, values, strict=True)) for values in combinations]


def _bound_scopes(requirement: Requirement) -> list[str]:
    if not requirement.bound:
        return []
    return sorted({scope for alternative in requirement.alternatives for scope in alternative if is_parameterised(scope)})


def _match(route: Route, values: dict[str, str]) -> RouteMatch:
    """A match of `route` for the path its template makes with `values` (not routed again: a
    literal sibling route could take the path otherwise)."""
    template = tuple(segment if segment is not None else "" for segment in parse_template(route.template))
    segments = list(route.api.prefix) + list(template)
    for name, index in route.params:
        segments[index] = values[name]
    raw = "/" + "/".join(quote(segment, safe="") for segment in segments)
    return RouteMatch(route, CanonicalPath(tuple(segments), raw.encode("ascii")), b"")


def _missing(route: Route, match: RouteMatch, outcome: Evaluation | Refusal) -> tuple[str, ...]:
    """What the caller lacks for `route`, in words: the scopes (and the grants that did not
    count) where the requirement is not met, else the refusal as the gateway would answer it."""
    if isinstance(outcome, Refusal):
        return (f"{outcome.status} {outcome.error}: {outcome.description}",)
    refusal = outcome.refusal
    assert refusal is not None
    if isinstance(refusal, InvalidScope) and outcome.assessment.refusal is not None:
        return ("403 invalid_scope: the token's scopes break the catalog's rule above",)
    unmet = isinstance(refusal, Forbidden) or (isinstance(refusal, NotFound) and route.hide and "pending" not in refusal.extra)
    if not unmet:
        return (f"{refusal.status} {refusal.error}: {refusal.description}",)
    missing = [" and ".join(sorted(alternative - outcome.effective)) for alternative in outcome.requirement.alternatives]
    notes = ["missing " + (missing[0] if len(missing) == 1 else "one of: " + "; ".join(missing))]
    notes.extend(outcome.live_missing)
    if route.user is not None and match.params.get(route.user, "").startswith("{"):
        notes.append("a client-credentials token acts on a user only through that user's active offline grants to its client")
    if route.hide:
        notes.append("the route is hidden: the gateway answers 404 not_found")
    return tuple(notes)


def render_reach(api: Api, lines: list[str], found: list[Reach]) -> str:
    """The list `gateway access` prints: the routes reached, then the others with what is missing."""
    reached = [item for item in found if item.reached]
    others = [item for item in found if not item.reached]
    out = [*lines, f"reaches {len(reached)} of {len(found)} routes of {api.name}:"]
    for item in reached:
        out.append(f"{item.route.method} {item.route.template}" + (f"  ({'; '.join(item.notes)})" if item.notes else ""))
    if others:
        out.append(f"does not reach {len(others)}:")
    for item in others:
        out.append(f"{item.route.method} {item.route.template}")
        out.extend(f"    {note}" for note in item.notes)
    return "\n".join(out)

