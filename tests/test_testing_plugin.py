"""The pytest plugin, as a user's test suite meets it: installed, found through its `pytest11`
entry point, with no conftest.py of theirs."""

from __future__ import annotations

import pytest

from tests.support import write_config

pytest_plugins = ["pytester"]

USER_TESTS = """
import pytest

from gateway.harness import GrantFixture

WEBHOOKS = "/api/merchants/M1/webhooks"

def test_a_reader_reads_and_cannot_write(gateway_harness):
    gateway_harness.assert_decision("GET " + WEBHOOKS, "forward", scopes="psp.webhook:read")
    gateway_harness.assert_decision("POST " + WEBHOOKS, "403 forbidden", scopes="psp.webhook:read")
    gateway_harness.assert_decision("GET " + WEBHOOKS, "401 unauthorized", token=None)

def test_the_factory_takes_a_path_from_the_rootdir_and_the_upstream_answers_as_told(make_gateway):
    gateway = make_gateway("gateway.yaml")
    gateway.upstream.get("http://upstream.test:8080/v3/me").respond(201, json={"id": "ana"})
    decision = gateway.request("GET /api/me", claims={"sub": "ana"})
    assert (decision.status, decision.body) == (201, b'{"id":"ana"}')
    assert decision.upstream_request.headers["x-auth-subject"] == "ana"

def test_grants_need_a_store(gateway_harness):
    with pytest.raises(ValueError, match="need a grant store"):
        gateway_harness.request("GET " + WEBHOOKS, scopes="psp.webhook:read", grants=[GrantFixture("psp.webhook:read")])

def test_a_wrong_expectation_fails(gateway_harness):
    gateway_harness.assert_decision("POST " + WEBHOOKS, "forward", scopes="psp.webhook:read")
"""


def test_the_fixtures_come_from_the_installed_entry_point(pytester: pytest.Pytester) -> None:
    write_config(pytester.path)
    pytester.makeini("[pytest]\ngateway_config = gateway.yaml\n")
    pytester.makepyfile(test_routes=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "*AssertionError: assert_decision: POST /api/merchants/M1/webhooks: expected forward, got 403 forbidden (POST /merchants/*",
        "FAILED test_routes.py::test_a_wrong_expectation_fails*",
    ])


def test_gateway_config_defaults_to_gateway_yaml_in_the_rootdir(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(pytester.path)
    pytester.makeini("[pytest]\n")
    tests = pytester.mkdir("tests")
    (tests / "test_routes.py").write_text(USER_TESTS)
    monkeypatch.chdir(tests)  # run from below the rootdir: the path is still the rootdir's
    result = pytester.runpytest("-p", "no:randomly", "-k", "reads")
    result.assert_outcomes(passed=1, deselected=3)


def test_without_the_plugin_its_fixtures_are_unknown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_routes=USER_TESTS)
    result = pytester.runpytest("-p", "no:randomly", "-p", "no:scope_gateway", "-k", "reads")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'gateway_harness' not found*"])
