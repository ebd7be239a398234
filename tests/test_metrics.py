"""Metrics (docs/operating.md, "Metrics"): what each request, token lookup, JWKS fetch, grant-store
failure and reload adds, as `/metrics` shows it; summed over real `gateway serve --workers 2`
processes; never on the proxy's port."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import respx
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.admin import AdminApp
from gateway.app import Gateway
from gateway.keys import KeyStore
from gateway.loading import ConfigError, load_config
from tests.processes import GATEWAY, serving, wait_for
from tests.support import ADMIN_TOKEN as TOKEN
from tests.support import AUDIENCE, ISSUER, KEYS, RecordingUpstream, Wallet, free_port, mint, requests_total, samples, with_admin, write_config
from tests.support import write_wallet as write

pytestmark = pytest.mark.anyio
UPSTREAM = "http://upstream.test:8080"
@pytest.fixture
async def client(tmp_path: Path, recorder: metrics.Recorder) -> AsyncIterator[httpx.AsyncClient]:
    app = Gateway(load_config(write_config(tmp_path, upstream=f"{UPSTREAM}/v3", proxy="proxy:\n  client: httpx\n")), metrics=recorder)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as http:
        yield http


async def test_requests_are_counted_by_api_method_route_decision_and_status(client: httpx.AsyncClient, recorder: metrics.Recorder) -> None:
    read = {"Authorization": f"Bearer {mint()}"}
    with respx.mock(assert_all_called=False) as router:
        router.route(host="upstream.test", path="/v3/status").mock(side_effect=httpx.ConnectError("refused"))
        router.route(host="upstream.test").mock(return_value=httpx.Response(201))
        for _ in range(3):
            assert (await client.get("/api/merchants/M1/webhooks", headers=read)).status_code == 201
        assert (await client.head("/api/merchants/M2/webhooks", headers=read)).status_code == 201
        assert (await client.post("/api/merchants/M1/webhooks", headers=read)).status_code == 403
        assert (await client.get("/api/merchants/M1/webhooks")).status_code == 401
        assert (await client.get("/api/merchants/M1/webhooks", headers={"Authorization": "Bearer a.b.c"})).status_code == 401
        assert (await client.get("/api/nowhere", headers=read)).status_code == 404
        assert (await client.request("BREW", "/api/status")).status_code == 404
        assert (await client.get("/api/merchants/M1%2Fx/webhooks")).status_code == 400
        assert (await client.get("/api/status")).status_code == 502
    recorder.flush()
    found = samples(recorder.directory)
    webhooks = "/merchants/{merchantId}/webhooks"
    assert requests_total(found) == {
        ("payments", "GET", webhooks, "forward", "201"): 3,
        ("payments", "HEAD", webhooks, "forward", "201"): 1,
        ("payments", "POST", webhooks, "refuse", "403"): 1,
        ("payments", "GET", webhooks, "refuse", "401"): 2,
        ("", "GET", "", "refuse", "404"): 1,
        ("", "other", "", "refuse", "404"): 1,
        ("", "GET", "", "refuse", "400"): 1,
        # allowed and sent: the upstream failed
        ("payments", "GET", "/status", "forward", "502"): 1,
    }
    # the one token: verified once, then recalled; the forged one verified and refused
    assert found[("gateway_token_cache_total", frozenset({("result", "miss")}))] == 2
    assert found[("gateway_token_cache_total", frozenset({("result", "hit")}))] == 4
    assert found[("gateway_request_duration_seconds_count", frozenset())] == 11
    assert found[("gateway_request_duration_seconds_bucket", frozenset({("le", "+Inf")}))] == 11
    assert found[("gateway_upstream_duration_seconds_count", frozenset())] == 5  # the forwarded ones, the failed one too
    assert 0 < found[("gateway_request_duration_seconds_sum", frozenset())] < 30


def test_reloads_set_the_counter_and_the_gauge(recorder: metrics.Recorder) -> None:
    recorder.flush()
    assert samples(recorder.directory)[("gateway_config_last_reload_success", frozenset())] == 1  # the start's load
    metrics.reload_failed()
    recorder.flush()
    found = samples(recorder.directory)
    assert found[("gateway_config_reload_total", frozenset({("result", "failure")}))] == 1
    assert found[("gateway_config_reload_total", frozenset({("result", "success")}))] == 0
    assert found[("gateway_config_last_reload_success", frozenset())] == 0
    metrics.reload_succeeded()
    metrics.reload_succeeded()
    recorder.flush()
    found = samples(recorder.directory)
    assert found[("gateway_config_reload_total", frozenset({("result", "success")}))] == 2
    assert found[("gateway_config_last_reload_success", frozenset())] == 1


def test_the_functions_do_nothing_while_metrics_are_off(tmp_path: Path) -> None:
    metrics.reload_failed()
    assert metrics._recorder is None
    recorder = metrics.enable(tmp_path)
    try:
        assert (recorder.reloads, recorder.grant_store_errors, recorder.jwks_fetch) == ({"success": 0, "failure": 0}, 0, {"success": 0, "failure": 0})
    finally:
        metrics.disable()


def _exit() -> None:
    pass


def test_stopped_processes_still_count_but_no_longer_say_whether_their_reload_failed(recorder: metrics.Recorder) -> None:
    stopped = multiprocessing.get_context("spawn").Process(target=_exit)
    stopped.start()
    stopped.join(30)
    assert stopped.pid is not None and stopped.exitcode == 0
    metrics.reload_failed()
    recorder.request(("payments", "GET", "/status", "forward", 200), 0.001, 0.0005, None)
    gone = recorder.snapshot() | {"pid": stopped.pid}
    (recorder.directory / f"{stopped.pid}.json").write_text(json.dumps(gone))
    metrics.reload_succeeded()
    recorder.request(("payments", "GET", "/status", "forward", 200), 0.001, 0.0005, None)
    recorder.flush()
    found = samples(recorder.directory)
    assert requests_total(found) == {("payments", "GET", "/status", "forward", "200"): 1 + 2}
    assert found[("gateway_config_reload_total", frozenset({("result", "failure")}))] == 2
    assert found[("gateway_config_last_reload_success", frozenset())] == 1  # the stopped one's 0 is not read


async def test_jwks_fetches_are_counted_by_result(recorder: metrics.Recorder) -> None:
    with respx.mock() as router:
        route = router.get("https://idp.test/jwks")
        route.mock(return_value=httpx.Response(200, content=(KEYS / "jwks.json").read_bytes()))
        keys = KeyStore((), "https://idp.test/jwks", refetch_interval=0, metrics=recorder)
        await keys.start()
        route.mock(return_value=httpx.Response(503))
        await keys.refresh()
        await keys.refresh()
        await keys.aclose()
    assert recorder.jwks_fetch == {"success": 1, "failure": 2}
    recorder.flush()
    found = samples(recorder.directory)
    assert found[("gateway_jwks_fetch_total", frozenset({("result", "failure")}))] == 2


async def test_the_apps_recorder_counts_its_key_stores_and_a_reloads_new_ones_with_no_global_recorder(tmp_path: Path) -> None:
    # handed down, not looked up: a second app in the process (a test's, the harness's) counts apart
    recorder = metrics.Recorder(tmp_path)
    tokens = f"tokens:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  jwks_url: https://idp.test/%s\n"
    for name in ("first", "rotated"):
        (tmp_path / name).mkdir()
    config = load_config(write_config(tmp_path / "first", tokens=tokens % "jwks"))
    rotated = load_config(write_config(tmp_path / "rotated", tokens=tokens % "rotated"))
    app = Gateway(config, metrics=recorder)
    with respx.mock() as router:
        router.get("https://idp.test/jwks").mock(return_value=httpx.Response(200, content=(KEYS / "jwks.json").read_bytes()))
        router.get("https://idp.test/rotated").mock(return_value=httpx.Response(503))
        await app.runtime.start()
        successor = app.runtime.successor(rotated)  # another key source: a key store of its own
        assert successor.keys is not app.runtime.keys
        await successor.start(previous=app.runtime)
        await successor.aclose(keep=app.runtime.parts)
        await app.runtime.aclose()
    assert metrics._recorder is None
    assert recorder.jwks_fetch == {"success": 1, "failure": 1}


async def test_grant_store_errors_are_counted(tmp_path: Path, recorder: metrics.Recorder) -> None:
    gateway = Wallet(write(tmp_path, store=f"sqlite:///{tmp_path / 'gone'}/grants.db"), metrics=recorder)
    await gateway.app.runtime.start()  # its first read of the store fails
    try:
        assert recorder.grant_store_errors == 1
        assert (await gateway.ask("GET /w/accounts/details", "accounts_details:read"))[0] == 503
        assert (await gateway.ask("GET /w/balance", "balance"))[0] == 200  # needs no store: no error
        assert recorder.grant_store_errors == 2
    finally:
        await gateway.app.runtime.aclose()
    recorder.flush()
    assert samples(recorder.directory)[("gateway_grant_store_errors_total", frozenset())] >= 2


async def test_metrics_are_served_without_a_token_and_only_when_on(tmp_path: Path, recorder: metrics.Recorder) -> None:
    config = load_config(with_admin(write(tmp_path)))
    recorder.flush()
    for directory, status in ((recorder.directory, 200), (None, 404)):
        app = AdminApp(config, None, TOKEN, metrics_directory=directory)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as admin:
            answer = await admin.get("/metrics")
            assert answer.status_code == status
            if status == 200:
                assert answer.headers["content-type"].startswith("text/plain")
                assert "gateway_config_last_reload_success 1.0" in answer.text


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("true", True), (None, True)])
def test_admin_metrics_is_read_from_the_config(tmp_path: Path, value: str | None, expected: bool) -> None:
    config = with_admin(write(tmp_path))
    if value is not None:
        config.write_text(config.read_text() + f"  metrics: {value}\n")
    assert load_config(config).admin.metrics is expected


def test_admin_metrics_must_be_true_or_false(tmp_path: Path) -> None:
    config = with_admin(write(tmp_path))
    config.write_text(config.read_text() + "  metrics: yes please\n")
    with pytest.raises(ConfigError, match=r"gateway.yaml:\d+: admin.metrics must be true or false, not 'yes please'"):
        load_config(config)


def test_two_workers_metrics_are_summed_on_the_admin_listener_and_never_on_the_proxy_port(tmp_path: Path) -> None:
    upstream = RecordingUpstream()
    port, admin_port = free_port(), free_port()
    config = with_admin(write_config(tmp_path, upstream=upstream.url), admin_port)
    # TMPDIR: the serve's private metrics folder is made here, and must be gone once it stops
    process = subprocess.Popen([GATEWAY, "serve", "--config", str(config), "--port", str(port), "--workers", "2", "--access-log"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        wait_for(port, process)
        base = f"http://127.0.0.1:{port}"
        token = {"Authorization": f"Bearer {mint()}"}
        # a refusal's X-Request-Id starts with the answering process's own prefix: go on until both answered
        answered_by: set[str] = set()
        sent = 0
        while len(answered_by) < 2:
            assert sent < 400, "one worker answered every request"
            with httpx.Client() as fresh:  # a new connection each time, for either worker to accept
                assert fresh.get(f"{base}/api/merchants/M1/webhooks", headers=token).status_code == 200
                refused = fresh.get(f"{base}/api/merchants/M1/webhooks")
            assert refused.status_code == 401
            answered_by.add(refused.headers["x-request-id"].split("-")[0])
            sent += 1
        assert httpx.get(f"{base}/metrics").status_code == 404
        webhooks = "/merchants/{merchantId}/webhooks"
        expected = {("payments", "GET", webhooks, "forward", "200"): sent, ("payments", "GET", webhooks, "refuse", "401"): sent,
                    ("", "GET", "", "refuse", "404"): 1}
        deadline = time.monotonic() + 15  # every worker writes what it counted each second
        while True:
            exposition = httpx.get(f"http://127.0.0.1:{admin_port}/metrics")
            found = {(sample.name, frozenset(sample.labels.items())): sample.value
                     for family in text_string_to_metric_families(exposition.text) for sample in family.samples}
            if requests_total(found) == expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert exposition.status_code == 200
        assert requests_total(found) == expected
        assert found[("gateway_token_cache_total", frozenset({("result", "hit")}))] + found[("gateway_token_cache_total", frozenset({("result", "miss")}))] == sent
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=20)[0]
        upstream.close()
    assert not list(tmp_path.glob("gateway-metrics-*")), output


def test_with_admin_metrics_false_nothing_is_counted_or_served(tmp_path: Path) -> None:
    admin_port = free_port()
    folder = tmp_path / "served"  # `serving` writes its own config in tmp_path: this one is named after it
    folder.mkdir()
    config = with_admin(write_config(folder), admin_port)
    config.write_text(config.read_text() + "  metrics: false\n")
    with serving(tmp_path, "--config", str(config)) as (base, _):
        assert httpx.get(f"{base}/api/nowhere").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{admin_port}/metrics").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{admin_port}/healthz").status_code == 200
