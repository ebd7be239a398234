"""`gateway test CASES.yaml`: a cases file against the real app, with throwaway keys and mocked
upstreams; exit 0 when every case passes, 1 with a line per mismatch, 2 for a broken file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.loading import load_config
from gateway.loading.cases import load_cases, matched_api
from tests.support import cli, write_config

ROOT = Path(__file__).parent.parent
SHIPPED_CONFIG = ROOT / "routes" / "tests" / "gateway.yaml"
SHIPPED_CASES = ROOT / "routes" / "tests" / "cases.yaml"
WEBHOOKS = "/api/merchants/M1/webhooks"

# the payments table of tests/support.py: one case per kind of answer, each as it is decided
GOOD_CASES = f"""\
- name: a reader reads
  request: GET {WEBHOOKS}?limit=10
  scopes: psp.webhook:read
  expect: forward
- name: write holds read
  request: GET {WEBHOOKS}
  scopes: [psp.webhook:write]
  expect: forward
- name: a reader cannot write
  request: POST {WEBHOOKS}
  scopes: psp.webhook:read
  headers: {{content-type: application/json}}
  body: '{{"url": "https://example.com/hook"}}'
  expect: 403 forbidden
- request: GET {WEBHOOKS}
  token: none
  expect: 401 unauthorized
- request: GET {WEBHOOKS}
  token: not.a.token
  expect: 401 invalid_token
- request: GET {WEBHOOKS}
  scopes: psp.webhook:read
  claims: {{iss: https://another-issuer.test}}
  expect: 401
- request: GET /api/status
  token: none
  expect: forward
- request: GET /api/me
  claims: {{sub: ana}}
  expect: forward
- request: GET /api/merchants/M1/secrets
  scopes: psp.webhook:read
  expect: 404 not_found
"""


def write_cases(folder: Path, text: str) -> Path:
    cases = folder / "cases.yaml"
    cases.write_text(text)
    return cases


def problems(cases: Path, config: Path) -> list[str]:
    """What `gateway test` says of a cases file it refuses (exit 2), line by line."""
    result = cli("test", str(cases), "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    return result.stdout.splitlines()


def test_every_case_passing_exits_0_with_a_summary(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cases = write_cases(tmp_path, GOOD_CASES)
    result = cli("test", str(cases), "--config", str(config))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"OK: 9 cases passed in {cases}\n", "")


def test_the_config_defaults_to_gateway_yaml_in_the_current_folder(tmp_path: Path) -> None:
    write_config(tmp_path)
    write_cases(tmp_path, GOOD_CASES)
    assert cli("test", "cases.yaml", cwd=tmp_path).returncode == 0


def test_wrong_expectations_exit_1_with_one_line_per_mismatch(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cases = write_cases(tmp_path, f"""\
- name: a reader writes
  request: POST {WEBHOOKS}
  scopes: psp.webhook:read
  expect: forward
- request: GET {WEBHOOKS}
  scopes: psp.webhook:read
  expect: 403 forbidden
- name: right
  request: GET {WEBHOOKS}
  scopes: psp.webhook:read
  expect: forward
- name: the wrong error
  request: GET {WEBHOOKS}
  token: none
  expect: 401 invalid_token
- name: the wrong status
  request: GET /api/merchants/M1/secrets
  scopes: psp.webhook:read
  expect: 403
""")
    result = cli("test", str(cases), "--config", str(config))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{cases}:1: a reader writes: expected forward, got 403 forbidden (POST /merchants/{{merchantId}}/webhooks requires "
        "psp.webhook:write; the token grants psp.webhook:read (missing psp.webhook:write))",
        f"{cases}:5: GET {WEBHOOKS}: expected 403 forbidden, got forward",
        f"{cases}:12: the wrong error: expected 401 invalid_token, got 401 unauthorized "
        "(this route requires a bearer token: send 'Authorization: Bearer <token>')",
        f"{cases}:16: the wrong status: expected 403, got 404 not_found (no route for GET /api/merchants/M1/secrets)",
    ]
    assert result.stderr == f"FAILED: 4 of 5 cases in {cases}\n"


def test_a_broken_cases_file_exits_2_with_every_problem_at_its_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cases = write_cases(tmp_path, f"""\
- name: no request
  scopes: psp.webhook:read
  expect: forward
- request: get {WEBHOOKS}
  scopes: psp.webhook:read
  expect: 200
- request: GET {WEBHOOKS}
  scopes: psp.webhook:read
  token: none
  expect: forward
  expected: forward
- request: GET {WEBHOOKS}
  expect: 403 Forbidden
- request: GET {WEBHOOKS}
  claims: {{auth_time: yesterday, sub: ana, extra: 2026-01-01}}
  expect: forward
- request: GET {WEBHOOKS}
  scopes: psp.webhook:read
  grants: [{{scope: psp.webhook:read}}]
  expect: forward
- a case is a mapping
""")
    assert problems(cases, config) == [
        f"{cases}:1: case: missing key 'request' (request: GET /path)",
        f"{cases}:4: request: 'get {WEBHOOKS}' is not a request line such as 'GET /path?query'",
        f"{cases}:6: expect must be 'forward' or a refusal's 'STATUS error', such as '403 forbidden', not '200'",
        f"{cases}:9: token: a case sends either a given token (or none) or a minted one (scopes:, claims:), not both",
        f"{cases}:11: case: unknown key 'expected' (expected one of: body, claims, conditions, expect, grants, headers, name, request, scopes, token)",
        f"{cases}:12: case: say who calls: 'scopes:' (a minted token's scopes), 'claims:', or 'token: none'",
        f"{cases}:13: expect must be 'forward' or a refusal's 'STATUS error', such as '403 forbidden', not '403 Forbidden'",
        f"{cases}:15: claims.auth_time: 'yesterday' is not a time: write seconds since the epoch, now, now-SECONDS or now+SECONDS",
        f"{cases}:15: claims.extra: datetime.date(2026, 1, 1) is not a JSON value (quote it to send it as a string)",
        f"{cases}:19: grants: {config} names no grant store (grants.store) to hold them",
        f"{cases}:21: case must be a mapping",
    ]


def test_grants_and_conditions_are_checked_against_the_tables(tmp_path: Path) -> None:
    cases = write_cases(tmp_path, """\
- request: GET /moneyhub/accounts
  scopes: accounts:read
  grants:
    - {scope: accounts:details}
    - {scope: user:update, api: bank}
    - {scope: user:update, ttl: 5, expires: 2026-01-01T00:00:00Z}
    - {scope: user:update, expires: "next week"}
    - {client: c1}
  expect: forward
- request: GET /nowhere
  token: none
  grants: [{scope: user:update}]
  conditions: [{scope: phone, api: paysera-wallet}]
  expect: 404
- request: GET /paysera/rest/v1/user/me/phone
  token: none
  grants: [{scope: phone_offline, subject: u1}]
  expect: 401
""")
    assert problems(cases, SHIPPED_CONFIG) == [
        f"{cases}:4: grant: 'accounts:details' is neither a scope of this API's catalog nor the _offline form of one that offers it (moneyhub)",
        f"{cases}:5: grant: no route table is named 'bank' (tables: adyen-checkout, adyen-management, banqup, fluz, moneyhub, paysera-wallet)",
        f"{cases}:6: grant: give expires or ttl, not both",
        f"{cases}:7: grant expires must be an RFC 3339 time with its zone, unquoted, e.g. 2026-12-31T23:59:59Z, not 'next week'",
        f"{cases}:8: grant: missing key 'scope'",
        f"{cases}:12: grant: the request matches no route: name the table with api:",
        f"{cases}:13: condition: name its subject: the case sends no minted token to take it from",
        f"{cases}:17: grant: name its client: the case sends no minted token to take it from",
    ]


def test_a_config_that_does_not_load_exits_2_with_its_problems(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text() + "listen: 8080\n")
    cases = write_cases(tmp_path, GOOD_CASES)
    result = cli("test", str(cases), "--config", str(config))
    assert result.returncode == 2
    assert result.stdout.startswith(f"{config}:7: gateway config: unknown key 'listen'")


def test_a_missing_cases_file_exits_2(tmp_path: Path) -> None:
    result = cli("test", str(tmp_path / "absent.yaml"), "--config", str(write_config(tmp_path)))
    assert result.returncode == 2
    assert result.stdout.startswith(f"{tmp_path / 'absent.yaml'}:1: cannot read file:")


@pytest.mark.parametrize("text", ["[]\n", "request: GET /api/status\n"])
def test_a_cases_file_is_a_non_empty_list(tmp_path: Path, text: str) -> None:
    cases = write_cases(tmp_path, text)
    assert problems(cases, write_config(tmp_path)) == [f"{cases}:1: a cases file is a non-empty list of cases, each '- request: GET /path' with its caller and 'expect:'"]


def test_the_shipped_cases_pass_under_the_shipped_config() -> None:
    result = cli("test", str(SHIPPED_CASES), "--config", str(SHIPPED_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: ")


def test_the_shipped_cases_forward_and_refuse_on_every_shipped_table() -> None:
    config = load_config(SHIPPED_CONFIG)
    outcomes: dict[str | None, set[bool]] = {}
    for case in load_cases(SHIPPED_CASES, config):
        outcomes.setdefault(matched_api(config.tables, case.probe), set()).add(case.expect.status is None)
    for api in config.tables.apis:
        assert outcomes.get(api.name) == {True, False}, f"routes/tests/cases.yaml needs a forwarded and a refused case for {api.name}"


def test_the_shipped_config_loads_every_table_of_routes_and_nothing_else() -> None:
    config = load_config(SHIPPED_CONFIG)
    assert {api.name for api in config.tables.apis} == {yaml.safe_load(table.read_text())["name"] for table in (ROOT / "routes").glob("*.yaml")}
