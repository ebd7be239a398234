"""`gateway coverage`: a loaded route table against the OpenAPI description of its API.

Operations and routes meet by method and path shape (`/a/{x}` is `/a/{y}`). Requirements are
compared as sets of alternatives, each a set of scopes, once the table's catalog has been applied:
each alternative widened by what its scopes imply (holding `write` is holding `read` too), then
every alternative that holds another dropped. Two requirements that let the same tokens through
are then equal, however they are written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.catalog import Catalog
from gateway.openapi import Spec
from gateway.routing import parse_template
from gateway.scopes import Access, Requirement
from gateway.tables import Route

Key = tuple[str, tuple[str | None, ...]]


@dataclass(frozen=True, slots=True)
class Difference:
    method: str
    template: str
    spec: Any  # "public", "authenticated", or a list of all-of lists
    table: Any


@dataclass(frozen=True, slots=True)
class Coverage:
    missing_routes: tuple[str, ...]  # "METHOD /template" of operations without a route (the gateway answers 404)
    undocumented_routes: tuple[str, ...]  # routes without an operation
    differing: tuple[Difference, ...]
    not_enforceable: tuple[str, ...]  # operations a bearer-token gateway cannot enforce, with why

    @property
    def agree(self) -> bool:
        return not (self.missing_routes or self.undocumented_routes or self.differing)

    def as_json(self) -> dict[str, Any]:
        return {
            "missing_routes": list(self.missing_routes),
            "undocumented_routes": list(self.undocumented_routes),
            "differing": [{"method": d.method, "template": d.template, "spec": d.spec, "table": d.table} for d in self.differing],
            "not_enforceable": list(self.not_enforceable),
        }


def compare(spec: Spec, routes: tuple[Route, ...], catalog: Catalog) -> tuple[Coverage, list[str]]:
    """The differences between `spec` and one table's `routes`, and a line of text for each."""
    table: dict[Key, Route] = {(route.method, parse_template(route.template)): route for route in routes}
    documented: set[Key] = set()
    missing: list[str] = []
    differing: list[Difference] = []
    lines: list[str] = []
    for operation in spec.operations:
        key = (operation.method, parse_template(operation.template)) if operation.requirement is not None else None
        if key is None:
            continue
        documented.add(key)
        route = table.get(key)
        if route is None and operation.method == "HEAD":
            route = table.get(("GET", key[1]))  # the gateway lets HEAD through wherever GET goes
        if route is None:
            missing.append(operation.key)
            lines.append(f"missing route: {operation.key} ({operation.pointer}): the gateway answers 404")
            continue
        assert operation.requirement is not None
        wanted, written = _canonical(operation.requirement, catalog), _canonical(route.requirement, catalog)
        if wanted != written:
            difference = Difference(operation.method, operation.template, _shown(wanted), _shown(written))
            differing.append(difference)
            lines.append(f"differs: {operation.key} ({operation.pointer}, {route.source}): the spec requires "
                         f"{_described(wanted)}, the table {_described(written)}")
    undocumented = []
    for key, route in table.items():
        if key not in documented:
            undocumented.append(f"{route.method} {route.template}")
            lines.append(f"undocumented route: {route.method} {route.template} ({route.source}): no operation of the spec")
    not_enforceable = []
    for operation in spec.not_enforceable:
        not_enforceable.append(operation.key)
        lines.append(f"not enforceable: {operation.key} ({operation.pointer}): {operation.reason}")
    coverage = Coverage(tuple(missing), tuple(undocumented), tuple(differing), tuple(not_enforceable))
    return coverage, lines


_Canonical = str | frozenset[frozenset[str]]


def _canonical(requirement: Requirement, catalog: Catalog) -> _Canonical:
    """`public`, or the smallest alternatives closed under implication (`authenticated`: one, empty)."""
    if requirement.access is Access.PUBLIC:
        return "public"
    if requirement.access is Access.AUTHENTICATED:
        return frozenset({frozenset()})
    closed = {catalog.with_implications(alternative) for alternative in requirement.alternatives}
    return frozenset(alternative for alternative in closed if not any(other < alternative for other in closed))


def _shown(canonical: _Canonical) -> Any:
    if isinstance(canonical, str):
        return canonical
    if canonical == frozenset({frozenset()}):
        return "authenticated"
    return sorted(sorted(alternative) for alternative in canonical)


def _described(canonical: _Canonical) -> str:
    shown = _shown(canonical)
    if isinstance(shown, str):
        return shown
    return " or ".join("[" + ", ".join(alternative) + "]" for alternative in shown)
