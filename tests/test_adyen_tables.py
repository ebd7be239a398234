"""routes/adyen-*.yaml against an independent transcription of Adyen's scope page
(tests/cases/adyen.yaml): every listed request, under every subset of Adyen's seven scopes."""

from itertools import combinations
from pathlib import Path

import pytest
import yaml

from gateway.loading import load_config
from gateway.tables import Tables
from gateway.decision import authorize
from gateway.routing import route
from gateway.errors import Forbidden, NotFound
from gateway.tokens import VerifiedToken
from tests.support import cli

ROOT = Path(__file__).parent.parent
CASES = yaml.safe_load((Path(__file__).parent / "cases" / "adyen.yaml").read_text())
SCOPES = [
    "psp.webhook:read", "psp.webhook:write", "psp.onlinepayment:write", "psp.onlinepayment.tokenization:write",
    "psp.rawcarddata:write", "psp:paybylink:write", "psp.accountsettings:write",
]
SUBSETS = [frozenset(chosen) for size in range(len(SCOPES) + 1) for chosen in combinations(SCOPES, size)]


def matched(tables: Tables, request: str):
    method, path = request.split(" ", 1)
    return route(tables, method, path.encode())


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> Tables:
    folder = tmp_path_factory.mktemp("adyen")
    (folder / "routes").mkdir()
    for table in ROOT.glob("routes/adyen-*.yaml"):
        (folder / "routes" / table.name).write_text(table.read_text())
    config = folder / "gateway.yaml"
    config.write_text(f"routes: routes/\ntokens:\n  jwks_file: {ROOT / 'tests' / 'keys' / 'jwks.json'}\n")
    return load_config(config).tables


def test_the_worked_tables_pass_gateway_check() -> None:
    # the config they are tested under (with a grant store: Paysera's and Moneyhub's tables need one)
    result = cli("check", "--config", str(ROOT / "routes" / "tests" / "gateway.yaml"))
    assert result.returncode == 0, result.stdout
    for table in ("adyen-checkout: 26", "adyen-management: 9", "banqup: 30", "moneyhub: 88", "paysera-wallet: 70"):
        assert table in result.stdout


@pytest.mark.parametrize("case", CASES, ids=[case["request"] for case in CASES])
def test_every_scope_combination_is_decided_as_the_seed_says(tables: Tables, case: dict) -> None:
    if not case["granted_by"]:
        with pytest.raises(NotFound):
            matched(tables, case["request"])
        return
    match = matched(tables, case["request"])
    grants = [frozenset(alternative) for alternative in case["granted_by"]]
    for held in SUBSETS:
        token = VerifiedToken(scopes=held, subject=None, client=None, expires_at=float("inf"))
        if any(grant <= held for grant in grants):
            authorize(match, token)
        else:
            with pytest.raises(Forbidden):
                authorize(match, token)


def test_every_route_of_the_tables_is_walked_by_a_case(tables: Tables) -> None:
    walked = {matched(tables, case["request"]).route.source for case in CASES if case["granted_by"]}
    assert walked == {compiled.source for compiled in tables.routes}


def test_every_scope_of_the_seed_is_in_both_catalogs(tables: Tables) -> None:
    for api in tables.apis:
        assert set(api.catalog.descriptions) == set(SCOPES), api.name
