"""The catalog's rules for an authorization server (`gateway scopes validate`): whether a scope
request would be refused with `invalid_scope`, by the same rules the gateway enforces, so the
gateway's catalog can be the one source of truth (Moneyhub and Paysera both answer
`invalid_scope` at their token endpoints)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.catalog import CLIENT_CREDENTIALS
from gateway.decision import grant_state
from gateway.grants.store import GrantState
from gateway.settings import Config

STAGES = ("authorize", "token", "refresh")


@dataclass(frozen=True, slots=True)
class ScopeCheck:
    """The verdict on one scope request."""

    problems: tuple[str, ...]  # each rule broken, in words; empty: the request is valid
    scopes: tuple[str, ...]  # the requested scopes in canonical names (aliases and forms resolved), sorted
    ignored: tuple[str, ...]  # scopes the API's catalog lacks, ignored by its `unknown_scopes: ignore`

    @property
    def valid(self) -> bool:
        return not self.problems


def validate_scopes(
    config: Config, api: str, scopes: str | Iterable[str], *, client: str | None = None,
    client_grants: Mapping[str, GrantState] | None = None, grant_type: str = "authorization_code", stage: str = "token",
) -> ScopeCheck:
    """Apply `api`'s catalog rules to a scope request.

    :param scopes: a space-separated scope string (RFC 6749 3.3) or the scopes themselves.
    :param client: the requesting client, as named in problems.
    :param client_grants: that client's grants on `api` (the grant store's view): a scope that
        counts only through a client grant is refused unless it is active, as Moneyhub refuses a
        scope not enabled for the client. None: not checked.
    :param grant_type: the grant the token would be issued by (`client-credentials` reads as
        `client_credentials`).
    :param stage: `authorize`, `token` or `refresh`: a step-up scope is granted only at `refresh`
        (Paysera's extended scopes are attached when a token is refreshed with the SMS code).
    :raises KeyError: no table is named `api`.
    :raises ValueError: `stage` is not one of `STAGES`.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
    found = next((candidate for candidate in config.tables.apis if candidate.name == api), None)
    if found is None:
        raise KeyError(f"no route table is named {api!r} (tables: {', '.join(candidate.name for candidate in config.tables.apis)})")
    catalog = found.catalog
    requested = scopes.split(" ") if isinstance(scopes, str) else list(scopes)
    readings = [catalog.read(scope) for scope in dict.fromkeys(scope for scope in requested if scope)]
    problems = list(catalog.broken_rules(readings)) if catalog.entries else []
    grant_type = CLIENT_CREDENTIALS if grant_type == "client-credentials" else grant_type
    now = time.time()
    for reading in readings:
        if reading.scope is None:
            continue
        entry = catalog.entries[reading.entry]  # type: ignore[index]  # scope not None: its entry is known
        grants = catalog.grants if entry.grants is None else entry.grants
        if client_grants is not None and "client" in grants:
            state = client_grants.get(reading.scope)
            if state is None or not state.active(now):
                problems.append(f"{reading.scope} is not enabled for client {client}: its client grant is {grant_state(state, now)}")
        if entry.grant_types is not None and grant_type not in entry.grant_types:
            problems.append(f"{reading.scope} is only for the {' or '.join(sorted(entry.grant_types))} grant, not {grant_type}")
        if entry.step_up is not None and stage != "refresh":
            problems.append(f"{reading.scope} is a step-up scope: it is granted only when a token is refreshed after the user confirms it, not at {stage}")
    known = sorted({reading.scope for reading in readings if reading.scope is not None}) if catalog.entries else sorted(r.raw for r in readings)
    ignored = tuple(reading.raw for reading in readings if reading.scope is None and not reading.problem) if catalog.entries else ()
    return ScopeCheck(tuple(problems), tuple(known), () if catalog.refuse_unknown else ignored)
