"""A property test of step 3 (docs/route-tables.md, "Live grants"): random sequences of
grant changes on a real SQLite store, then every request, decided by the gateway and by a plain
model of the rules as docs/route-tables.md words them; the two must agree."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.decision import authorize, evaluate
from gateway.routing import route
from gateway.errors import Refusal
from gateway.grants.sqlite import SQLiteStore
from gateway.loading import load_config
from gateway.tokens import VerifiedToken
from tests.support import KEYS

NOW = 2_000_000_000.0
TABLE = """\
name: model
upstream: http://model.test
scopes:
  a:
    grants: [client]
  b:
    grants: [user]
  c:
    grants: [client, user]
  d:
    suffixes: [offline]
  e:
    suffixes: [optional]
    condition: the user did something
routes:
  GET /a: a
  GET /b: b
  GET /c: c
  GET /d: d
  GET /e: e
"""
CLIENTS = ["k1", "k2"]
SUBJECTS = ["u1", "u2"]
GRANTED = ["a", "b", "c", "d_offline"]
# (route, token scope) pairs asked after the changes
REQUESTS = [("/a", "a"), ("/b", "b"), ("/c", "c"), ("/d", "d"), ("/d", "d_offline"), ("/e", "e"), ("/e", "e_optional")]

expiry = st.sampled_from([None, NOW - 1, NOW + 1])
change = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(CLIENTS), st.sampled_from([None, *SUBJECTS]), st.sampled_from(GRANTED), expiry),
    st.tuples(st.just("revoke"), st.sampled_from(CLIENTS), st.sampled_from([None, *SUBJECTS]), st.sampled_from(GRANTED)),
    st.tuples(st.just("fulfil"), st.sampled_from(SUBJECTS)),
    st.tuples(st.just("unfulfil"), st.sampled_from(SUBJECTS)),
)


class Model:
    """The documented rules, as plainly as they can be written."""

    def __init__(self) -> None:
        self.grants: dict[tuple[str, str | None, str], tuple[float | None, bool]] = {}  # -> (expires_at, revoked)
        self.conditions: set[str] = set()

    def apply(self, step: tuple[object, ...]) -> None:
        kind = step[0]
        if kind == "add":
            _, client, subject, scope, expires = step
            self.grants[(client, subject, scope)] = (expires, False)  # type: ignore[index, assignment]
        elif kind == "revoke":
            _, client, subject, scope = step
            if (client, subject, scope) in self.grants:
                self.grants[(client, subject, scope)] = (self.grants[(client, subject, scope)][0], True)  # type: ignore[index]
        elif kind == "fulfil":
            self.conditions.add(step[1])  # type: ignore[arg-type]
        else:
            self.conditions.discard(step[1])  # type: ignore[arg-type]

    def active(self, client: str, subject: str | None, scope: str) -> bool:
        found = self.grants.get((client, subject, scope))
        return found is not None and not found[1] and (found[0] is None or NOW < found[0])

    def allows(self, scope: str, client: str, subject: str) -> int:
        """200 forwarded, 403 or 404."""
        rules = {
            "a": self.active(client, None, "a"),
            "b": self.active(client, subject, "b"),
            "c": self.active(client, None, "c") and self.active(client, subject, "c"),
            "d": True,
            "d_offline": self.active(client, subject, "d_offline"),
            "e": True,
        }
        if scope == "e_optional":
            return 200 if subject in self.conditions else 404
        return 200 if rules[scope] else 403


async def _decide_all(folder: Path, steps: list[tuple[object, ...]]) -> list[tuple[str, str, str, str, int, int, int]]:
    (folder / "routes").mkdir()
    (folder / "routes" / "model.yaml").write_text(TABLE)
    (folder / "gateway.yaml").write_text(f"routes: routes/\ntokens:\n  jwks_file: {KEYS / 'jwks.json'}\ngrants:\n  store: sqlite:///grants.db\n")
    tables = load_config(folder / "gateway.yaml").tables
    store = SQLiteStore(folder / "grants.db")
    model = Model()
    try:
        for step in steps:
            model.apply(step)
            if step[0] == "add":
                await store.put_grant("model", step[1], step[2], step[3], step[4])  # type: ignore[arg-type]
            elif step[0] == "revoke":
                await store.revoke_grant("model", step[1], step[2], step[3])  # type: ignore[arg-type]
            else:
                await store.set_condition("model", step[1], "e", step[0] == "fulfil")  # type: ignore[arg-type]
        disagreements = []
        for client in CLIENTS:
            for subject in SUBJECTS:
                view = await store.view("model", client, subject)
                for path, scope in REQUESTS:
                    claims = {"sub": subject, "client_id": client}
                    token = VerifiedToken(frozenset({scope}), subject, client, NOW + 600, json.dumps(claims).encode())
                    match = route(tables, "GET", path.encode())
                    evaluation = evaluate(match, token, view=view, now=NOW)
                    status = 200 if evaluation.allowed is not None else evaluation.refusal.status  # type: ignore[union-attr]
                    expected = model.allows(scope, client, subject)
                    # what the gateway runs: evaluate's step by step, or authorize's shortcut
                    try:
                        decided = 200 if authorize(match, token, view=view, now=NOW) else 0
                    except Refusal as refusal:
                        decided = refusal.status
                    if (status, decided) != (expected, expected):
                        disagreements.append((client, subject, path, scope, status, decided, expected))
        return disagreements
    finally:
        await store.aclose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(change, max_size=25))
def test_the_live_step_agrees_with_a_model_of_the_rules(steps: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        assert asyncio.run(_decide_all(Path(folder), steps)) == []
