"""Reloading while serving (docs/operating.md, "Reloading"): by file change, SIGHUP and POST /reload,
in every worker, under load; a broken change keeps the last good config and shows in /readyz;
requests in flight finish under the config they started with."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import metrics
from gateway.admin import AdminApp
from gateway.app import Gateway
from gateway.loading import load_config
from gateway.reload import FAILURE, SUCCESS, ReloadOutcome, RunDir, ServingReloads
from tests.processes import serving_with_admin as serving
from tests.support import ADMIN_AUTH as AUTH
from tests.support import ADMIN_TOKEN as TOKEN
from tests.support import AUDIENCE, ISSUER, KEYS, EndlessUpstream, LiveServer, Received, RecordingUpstream, answer, free_port, mint, with_admin, write_config

TABLE = """\
name: items
upstream: {upstream}/%s
prefix: /api
routes:
  GET /items/{id}: read:%s
  GET /status: public
"""
TABLE_A, TABLE_B = TABLE % ("A", "a"), TABLE % ("B", "b")
ORDERS = (TABLE % ("O", "o")).replace("name: items", "name: orders").replace("prefix: /api", "prefix: /orders")
BROKEN = "name: items\nupstream: ftp://nowhere\nprefix: /api\nroutes:\n  GET /items/{id}: read:a\n"


def echo(request: Received, connection: Any) -> None:
    """An upstream answer that says which path it was sent to."""
    answer(200, request.target)(request, connection)


class _Echo(asyncio.Protocol):
    """One keep-alive connection to an `EchoUpstream`: each GET is answered with its target."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:  # bodiless requests only
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            target = head.split(b" ", 2)[1]
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (len(target), target))


class EchoUpstream:
    """A loopback upstream on keep-alive connections, in its own thread and loop, answering each
    request with its target: what a load of thousands of requests needs."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(self._loop.create_server(_Echo, "127.0.0.1", 0, backlog=1024))
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._server.close()
        self._loop.close()


def until(condition: Callable[[], Any], timeout: float = 30, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        time.sleep(0.05)


def write_table(config: Path, text: str, upstream: str) -> None:
    # written whole and renamed over the old one, as editors and config management do
    table = config.parent / "routes" / "payments.yaml"
    temporary = table.with_name(".payments.yaml.tmp")
    temporary.write_text(text.replace("{upstream}", upstream))
    os.replace(temporary, table)


def get(base: str, scope: str) -> httpx.Response:
    return httpx.get(f"{base}/api/items/7", headers={"authorization": f"Bearer {mint(scope, lifetime=600)}"}, timeout=10)


def test_a_table_change_sighup_and_post_reload_each_reload_the_serving_process(tmp_path: Path) -> None:
    upstream = RecordingUpstream(echo)
    config = write_config(tmp_path, upstream=upstream.url, table=TABLE_A)
    try:
        with serving(config) as served:
            assert get(served.base, "read:a").text == "/A/items/7"
            assert get(served.base, "read:b").status_code == 403

            write_table(config, TABLE_B, upstream.url)
            until(lambda: served.reloaded(1), what="the reload after the table changed")
            assert get(served.base, "read:b").text == "/B/items/7"
            refused = get(served.base, "read:a")
            assert refused.status_code == 403 and refused.json()["required"] == [["read:b"]]
            ready = served.ready()
            assert ready.status_code == 200 and ready.json()["status"] == "ready" and "reload" not in ready.json()
            [before] = served.processes()
            assert before["reload"]["result"] == SUCCESS

            # SIGHUP reloads in place: the same process, one more reload, answering the request
            served.process.send_signal(signal.SIGHUP)
            until(lambda: served.reloaded(2), what="the reload after SIGHUP")
            [after] = served.processes()
            assert after["pid"] == before["pid"] and after["request"] == before["request"] + 1
            assert get(served.base, "read:b").status_code == 200

            # POST /reload needs the admin token, and answers once every process has reloaded
            refused = httpx.post(f"{served.admin}/reload")
            assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
            assert served.processes()[0]["reloads"][SUCCESS] == 2
            done = httpx.post(f"{served.admin}/reload", headers=AUTH, timeout=40)
            assert done.status_code == 200 and done.json()["result"] == SUCCESS and done.json()["processes"] == 1
            assert served.processes()[0]["reloads"][SUCCESS] == 3
            # the admin listener is never reachable through the proxy's port
            assert httpx.post(f"{served.base}/reload", headers=AUTH).status_code == 404
    finally:
        upstream.close()
    assert "config reloaded from" in served.output


def test_a_broken_table_keeps_the_last_good_config_and_shows_in_readyz_until_fixed(tmp_path: Path) -> None:
    upstream = RecordingUpstream(echo)
    config = write_config(tmp_path, upstream=upstream.url, table=TABLE_A)
    table = tmp_path / "routes" / "payments.yaml"
    problem = f"{table}:2: upstream must be an http:// or https:// URL with a host, not 'ftp://nowhere'"
    try:
        with serving(config) as served:
            write_table(config, BROKEN, upstream.url)
            until(lambda: served.ready().json().get("status") == "degraded", what="the failed reload in /readyz")
            ready = served.ready()
            # still usable: the last good config serves, so the process stays in its load balancer
            assert ready.status_code == 200
            assert ready.json()["reload"]["result"] == FAILURE and ready.json()["reload"]["problems"] == [problem]
            assert get(served.base, "read:a").text == "/A/items/7"
            assert get(served.base, "read:b").status_code == 403

            asked = httpx.post(f"{served.admin}/reload", headers=AUTH, timeout=40)
            assert asked.status_code == 422 and asked.json()["error"] == "invalid_config"
            assert asked.json()["problems"] == [problem]
            assert get(served.base, "read:a").status_code == 200

            write_table(config, TABLE_B, upstream.url)
            until(lambda: served.ready().json().get("status") == "ready", what="the recovery in /readyz")
            assert "reload" not in served.ready().json()
            assert get(served.base, "read:b").text == "/B/items/7"
    finally:
        upstream.close()
    assert f"ERROR gateway.reload: {problem}" in served.output


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_every_worker_reloads_and_sighup_restarts_none(tmp_path: Path, server: str) -> None:
    upstream = RecordingUpstream(echo)
    config = write_config(tmp_path, upstream=upstream.url, table=TABLE_A)
    try:
        with serving(config, "--workers", "2", "--server", server) as served:
            workers = until(lambda: len(served.processes()) == 2 and served.processes(), what="both workers' status")
            write_table(config, TABLE_B, upstream.url)
            until(lambda: served.reloaded(1), what="both workers' reload")
            for _ in range(30):  # whichever worker takes it
                assert get(served.base, "read:b").text == "/B/items/7"
                assert get(served.base, "read:a").status_code == 403

            # both servers restart their workers on SIGHUP; the gateway's reload them in place
            served.process.send_signal(signal.SIGHUP)
            until(lambda: served.reloaded(2), what="both workers' reload after SIGHUP")
            assert sorted(p["pid"] for p in served.processes()) == sorted(p["pid"] for p in workers)
            done = httpx.post(f"{served.admin}/reload", headers=AUTH, timeout=40)
            assert done.status_code == 200 and done.json()["processes"] == 2
            assert all(p["reloads"][SUCCESS] == 3 for p in served.processes())
    finally:
        upstream.close()


def test_twenty_reloads_under_load_lose_no_request_and_every_decision_follows_a_table(tmp_path: Path) -> None:
    upstream = EchoUpstream()
    config = write_config(tmp_path, upstream=upstream.url, table=TABLE_A)
    tokens = {scope: f"Bearer {mint(scope, lifetime=600)}" for scope in ("read:a", "read:b")}
    outcomes: Counter[str] = Counter()
    failures: list[str] = []

    async def load(base: str, stop: threading.Event) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=20) as client:
            async def caller(number: int) -> None:
                while not stop.is_set() or outcomes.total() < 3000:
                    scope = ("read:a", "read:b")[number % 2]
                    try:
                        answer = await client.get("/api/items/7", headers={"authorization": tokens[scope]})
                    except httpx.HTTPError as exc:
                        failures.append(f"{scope}: {exc!r}")
                        continue
                    letter = scope[-1]
                    # under the table that asks for this token's scope: forwarded to that table's upstream;
                    # under the other: refused, naming the other scope. Anything else is a failure
                    if answer.status_code == 200 and answer.text == f"/{letter.upper()}/items/7":
                        outcomes[f"{scope} forwarded"] += 1
                    elif answer.status_code == 403 and answer.json()["required"] == [[f"read:{'b' if letter == 'a' else 'a'}"]]:
                        outcomes[f"{scope} refused"] += 1
                    else:
                        failures.append(f"{scope}: {answer.status_code} {answer.text}")

            await asyncio.gather(*(caller(number) for number in range(8)))

    try:
        with serving(config) as served:
            stop = threading.Event()
            loader = threading.Thread(target=lambda: asyncio.run(load(served.base, stop)))
            loader.start()
            try:
                for number in range(1, 21):
                    write_table(config, TABLE_B if number % 2 else TABLE_A, upstream.url)
                    until(lambda: served.reloaded(number), what=f"reload {number}")
                    time.sleep(0.1)  # some requests under each table
            finally:
                stop.set()
                loader.join(120)
            assert not failures, failures[:10]
            [process] = served.processes()
            assert process["reloads"] == {SUCCESS: 20, FAILURE: 0}
    finally:
        upstream.close()
    assert outcomes.total() >= 3000
    # both tables decided requests of both tokens
    assert set(outcomes) == {"read:a forwarded", "read:a refused", "read:b forwarded", "read:b refused"}, outcomes


# --- in one process: what a reload keeps, what it closes, and when ----------------------------------


@pytest.fixture
def reloads() -> Iterator[Callable[[Path], tuple[LiveServer, ServingReloads]]]:
    """The gateway under uvicorn in a thread, with the reloads of a serving process."""
    servers: list[LiveServer] = []

    def start(config: Path) -> tuple[LiveServer, ServingReloads]:
        app = Gateway(load_config(config))
        service = ServingReloads(app)
        app.services.append(service)
        servers.append(LiveServer(app))
        return servers[-1], service

    yield start
    for server in servers:
        server.close()


def reload_now(service: ServingReloads) -> ReloadOutcome:
    """A reload, as SIGHUP or POST /reload asks for one, in the server's own loop."""
    assert service.loop is not None
    return asyncio.run_coroutine_threadsafe(service.reloader.reload(), service.loop).result(30)


def test_a_request_in_flight_finishes_under_its_config_and_the_old_pool_closes_after_it(
    tmp_path: Path, reloads: Callable[[Path], tuple[LiveServer, ServingReloads]],
) -> None:
    upstream = EndlessUpstream(interval=0.05)
    table = "name: items\nupstream: {upstream}/v\nprefix: /api\nroutes:\n  GET /events: authenticated\n  GET /status: public\n"
    config = write_config(tmp_path, upstream=upstream.url, table=table)
    server, service = reloads(config)
    base = f"http://127.0.0.1:{server.port}"
    old_upstream = service.app.runtime.upstream  # the runtime itself is not held: only requests hold it
    closed: list[float] = []
    close = old_upstream.aclose

    async def closing() -> None:  # the old pool's closing, noted
        closed.append(time.monotonic())
        await close()

    old_upstream.aclose = closing  # type: ignore[method-assign]
    try:
        with httpx.stream("GET", f"{base}/api/events", headers={"authorization": f"Bearer {mint(lifetime=600)}"}, timeout=10) as stream:
            lines = stream.iter_lines()
            events = [next(line for line in lines if line.startswith("data:")) for _ in range(3)]
            # the route goes away and the upstream client's settings change: a new pool
            write_table(config, table.replace("  GET /events: authenticated\n", ""), upstream.url)
            config.write_text(config.read_text() + "proxy:\n  read_timeout: 20\n")
            assert reload_now(service).result == SUCCESS
            assert service.app.runtime.upstream is not old_upstream
            assert httpx.get(f"{base}/api/events", headers={"authorization": f"Bearer {mint(lifetime=600)}"}).status_code == 404
            assert httpx.get(f"{base}/api/status").text == "ok"  # through the new pool
            # the stream goes on under the old config, through the old pool, which stays open
            events += [next(line for line in lines if line.startswith("data:")) for _ in range(3)]
            assert events == [f"data: {number}" for number in range(1, 7)]
            assert not closed
            ended = time.monotonic()
        # the stream has ended: the old pool is closed after it; the new one keeps its connection
        until(lambda: closed, timeout=10, what="the old pool's closing")
        assert closed[0] >= ended
        until(lambda: upstream.open_connections() == 1, timeout=10, what="the stream's upstream connection closing")
    finally:
        upstream.close()


def test_a_table_only_reload_keeps_the_token_cache_grant_views_and_pool(
    tmp_path: Path, reloads: Callable[[Path], tuple[LiveServer, ServingReloads]],
) -> None:
    config = write_config(tmp_path, table=TABLE_A.replace("{upstream}", "http://upstream.test"))
    server, service = reloads(config)
    before = service.app.runtime
    write_table(config, TABLE_B, "http://upstream.test")
    assert reload_now(service).result == SUCCESS
    after = service.app.runtime
    assert after.tables is not before.tables
    assert (after.authenticator, after.keys, after.upstream) == (before.authenticator, before.keys, before.upstream)
    # a change to the token rules starts a new cache: what the old rules accepted may not pass now
    config.write_text(config.read_text().replace("leeway: 5", "leeway: 0"))
    assert reload_now(service).result == SUCCESS
    assert service.app.runtime.authenticator is not after.authenticator and service.app.runtime.keys is after.keys


def test_a_rotated_jwks_file_is_reloaded_and_tokens_of_the_removed_key_are_refused(
    tmp_path: Path, reloads: Callable[[Path], tuple[LiveServer, ServingReloads]],
) -> None:
    upstream = RecordingUpstream(echo)
    jwks = tmp_path / "jwks.json"
    jwks.write_text((KEYS / "jwks.json").read_text())
    config = write_config(tmp_path, upstream=upstream.url, table=TABLE_A)
    config.write_text(config.read_text().replace(str(KEYS / "jwks.json"), "jwks.json"))
    document = json.loads(jwks.read_text())
    old_kid = "rsa-1"
    assert any(key.get("kid") == old_kid for key in document["keys"])
    server, service = reloads(config)
    base = f"http://127.0.0.1:{server.port}"
    old_token = mint("read:a", lifetime=600)
    new_token = mint("read:a", key="rsa-other", kid="rsa-2", lifetime=600)
    try:
        assert get_with(base, old_token).status_code == 200  # and now cached
        assert get_with(base, new_token).status_code == 401
        # the rotation: the new key in, the old one out
        import jwt
        from cryptography.hazmat.primitives import serialization

        other = serialization.load_pem_public_key((KEYS / "rsa-other.pub.pem").read_bytes())
        rotated = {"keys": [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(other)), "kid": "rsa-2", "use": "sig", "alg": "RS256"}]}
        temporary = tmp_path / ".jwks.json.tmp"
        temporary.write_text(json.dumps(rotated))
        os.replace(temporary, jwks)
        until(lambda: service.reloader.counts[SUCCESS] == 1, timeout=20, what="the reload after the key file changed")
        assert get_with(base, new_token).status_code == 200
        refused = get_with(base, old_token)
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
    finally:
        upstream.close()


def get_with(base: str, token: str) -> httpx.Response:
    return httpx.get(f"{base}/api/items/7", headers={"authorization": f"Bearer {token}"}, timeout=10)


def test_each_outcome_reaches_the_reload_metrics(tmp_path: Path, reloads: Callable[[Path], tuple[LiveServer, ServingReloads]]) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    recorder = metrics.enable(directory)
    try:
        config = write_config(tmp_path, table=TABLE_A.replace("{upstream}", "http://upstream.test"))
        server, service = reloads(config)
        write_table(config, BROKEN, "")
        failed = reload_now(service)
        assert failed.result == FAILURE
        assert failed.problems[0].startswith(f"{tmp_path / 'routes' / 'payments.yaml'}:2: upstream must be")
        assert (recorder.reloads["failure"], recorder.reloads["success"], recorder.last_reload[0]) == (1, 0, 0)
        write_table(config, TABLE_B, "http://upstream.test")
        assert reload_now(service).result == SUCCESS
        assert (recorder.reloads["failure"], recorder.reloads["success"], recorder.last_reload[0]) == (1, 1, 1)
    finally:
        metrics.disable()


def keys_or_404(request: Received, connection: Any) -> None:
    """An identity server's JWKS at /jwks, and nothing anywhere else."""
    found = request.target == b"/jwks"
    answer(200 if found else 404, (KEYS / "jwks.json").read_bytes() if found else b"no such file")(request, connection)


def remote_keys(url: str) -> str:
    return f"tokens:\n  issuer: https://auth.test\n  audience: payments-api\n  jwks_url: {url}/jwks\n"


def test_a_new_jwks_url_that_yields_no_key_fails_the_reload_and_the_old_keys_serve_on(
    tmp_path: Path, reloads: Callable[[Path], tuple[LiveServer, ServingReloads]],
) -> None:
    upstream, identity = RecordingUpstream(echo), RecordingUpstream(keys_or_404)
    config = write_config(tmp_path, upstream=upstream.url, table=TABLE_A, tokens=remote_keys(identity.url))
    server, service = reloads(config)
    token = mint("read:a", lifetime=600)
    try:
        assert get_with(f"http://127.0.0.1:{server.port}", token).status_code == 200
        config.write_text(config.read_text().replace("/jwks\n", "/moved\n"))
        outcome = reload_now(service)
        assert outcome.result == FAILURE
        assert outcome.problems == (f"{config}: tokens: no usable key (JWKS fetch from {identity.url}/moved failed: status 404)",)
        assert service.app.runtime.config.tokens.jwks_url == f"{identity.url}/jwks"
        assert get_with(f"http://127.0.0.1:{server.port}", mint("read:a", lifetime=600)).status_code == 200
    finally:
        upstream.close()
        identity.close()


@pytest.mark.anyio
async def test_a_failure_only_the_serving_processes_see_reaches_post_reload_and_readyz(tmp_path: Path) -> None:
    # the admin listener loads the same files, but only a serving process fetches keys: what it
    # reports through the run folder is what the admin listener answers
    identity = RecordingUpstream(keys_or_404)
    config = with_admin(write_config(tmp_path, table=TABLE_A.replace("{upstream}", "http://upstream.test"), tokens=remote_keys(identity.url)))
    run_dir = RunDir(tmp_path / "run").create()
    app = Gateway(load_config(config))
    app.services.append(ServingReloads(app, run_dir))
    server = LiveServer(app)
    admin = AdminApp(load_config(config), None, TOKEN, run_dir)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=admin), base_url="http://admin.test") as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "ready"
            assert [process["keys"] for process in ready.json()["processes"]] == [2]
            config.write_text(config.read_text().replace("/jwks\n", "/moved\n"))
            problem = f"{config}: tokens: no usable key (JWKS fetch from {identity.url}/moved failed: status 404)"
            asked = await client.post("/reload", headers=AUTH)
            assert asked.status_code == 422 and asked.json()["problems"] == [problem]
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "degraded"
            assert ready.json()["reload"]["problems"] == [problem]
    finally:
        server.close()
        identity.close()


# --- what the watch follows: the names the config read, as given ----------------------------------

# seconds after which a watch (set again after a reload) has looked for what changed while it was
# not set: a change made later is seen by the watch alone
SETTLED = 0.8


def test_a_replaced_routes_folder_is_reloaded_and_so_is_every_later_edit_and_new_table(
    tmp_path: Path, reloads: Callable[[Path], tuple[LiveServer, ServingReloads]],
) -> None:
    upstream = RecordingUpstream(echo)
    config = write_config(tmp_path, upstream=upstream.url, table=TABLE_A)
    server, service = reloads(config)
    base = f"http://127.0.0.1:{server.port}"
    routes = tmp_path / "routes"
    try:
        assert get(base, "read:a").text == "/A/items/7"
        # a whole new folder of tables swapped in by renames (`mv routes.new routes`): the watch
        # set on the old folder sees nothing that happens in the new one unless it is set again
        time.sleep(SETTLED)
        staged = tmp_path / "routes.new"
        staged.mkdir()
        (staged / "payments.yaml").write_text(TABLE_B.replace("{upstream}", upstream.url))
        routes.rename(tmp_path / "routes.old")
        staged.rename(routes)
        shutil.rmtree(tmp_path / "routes.old")
        # (a reload may also catch the moment between the renames, and fail: no folder)
        until(lambda: get(base, "read:b").text == "/B/items/7", what="the reload after the folder was replaced")

        time.sleep(SETTLED)
        write_table(config, TABLE_A, upstream.url)  # an edit in the new folder
        until(lambda: get(base, "read:a").text == "/A/items/7", what="the reload after an edit in the new folder")

        time.sleep(SETTLED)
        (routes / "orders.yaml").write_text(ORDERS.replace("{upstream}", upstream.url))
        orders = {"authorization": f"Bearer {mint('read:o', lifetime=600)}"}
        until(lambda: httpx.get(f"{base}/orders/items/7", headers=orders).text == "/O/items/7",
              what="the reload after a table was added to the new folder")

        # the same again, with the replaced folder holding the same tables: nothing to reload,
        # but the watch must move to the new folder all the same
        staged.mkdir()
        for table in routes.glob("*.yaml"):
            shutil.copy(table, staged / table.name)
        routes.rename(tmp_path / "routes.old")
        staged.rename(routes)
        shutil.rmtree(tmp_path / "routes.old")
        time.sleep(SETTLED)
        write_table(config, TABLE_B, upstream.url)
        until(lambda: get(base, "read:b").text == "/B/items/7", what="the reload after an edit in a folder replaced by the same tables")
        assert service.reloader.last is not None and service.reloader.last.result == SUCCESS
    finally:
        upstream.close()


def test_a_replaced_config_folder_is_reloaded_and_so_is_every_later_edit(
    tmp_path: Path, reloads: Callable[[Path], tuple[LiveServer, ServingReloads]],
) -> None:
    upstream = RecordingUpstream(echo)
    folder, staged = tmp_path / "conf", tmp_path / "conf.new"
    folder.mkdir()
    staged.mkdir()
    config = write_config(folder, upstream=upstream.url, table=TABLE_A)
    write_config(staged, upstream=upstream.url, table=TABLE_B)
    server, _ = reloads(config)
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(base, "read:a").text == "/A/items/7"
        time.sleep(SETTLED)
        folder.rename(tmp_path / "conf.old")
        time.sleep(SETTLED)  # a reload in between fails (no gateway.yaml), and the watch is set again
        staged.rename(folder)  # the old one is kept: no event from it
        until(lambda: get(base, "read:b").text == "/B/items/7", what="the reload after the config's folder was replaced")
        time.sleep(SETTLED)
        write_table(config, TABLE_A, upstream.url)
        until(lambda: get(base, "read:a").text == "/A/items/7", what="the reload after an edit in the new folder")
    finally:
        upstream.close()


def test_writes_to_a_file_the_config_never_read_neither_reload_nor_log(
    tmp_path: Path, reloads: Callable[[Path], tuple[LiveServer, ServingReloads]], caplog: pytest.LogCaptureFixture,
) -> None:
    # a log file beside gateway.yaml: were each write noticed and logged, it would feed itself
    config = write_config(tmp_path, table=TABLE_A.replace("{upstream}", "http://upstream.test"))
    _, service = reloads(config)
    time.sleep(SETTLED)
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    unread = [tmp_path / "gateway.log", tmp_path / "routes" / "notes.txt", tmp_path / "routes" / ".payments.yaml.swp",
              tmp_path / "routes" / "payments.yaml.bak", tmp_path / "routes.yaml"]
    for number in range(20):
        for file in unread:
            with file.open("a") as log:
                log.write(f"line {number}\n")
        time.sleep(0.02)
    (tmp_path / "sub").mkdir()
    (tmp_path / "routes" / "old").mkdir()
    (tmp_path / "routes" / "old" / "previous.yaml").write_text("not a table: its folder is not loaded")
    time.sleep(1)  # longer than the watch waits for more events (50 ms)
    assert service.reloader.counts == {SUCCESS: 0, FAILURE: 0}
    assert [record.getMessage() for record in caplog.records] == []
    # a table added to the routes folder is a change, and the only one
    (tmp_path / "routes" / "orders.yaml").write_text(ORDERS.replace("{upstream}", "http://upstream.test"))
    until(lambda: service.reloader.counts[SUCCESS] == 1, what="the reload after a table was added")
    assert sorted(api.name for api in service.app.runtime.tables.apis) == ["items", "orders"]
    assert [record.getMessage() for record in caplog.records if record.name != "gateway.reload"] == []
    time.sleep(SETTLED)
    assert service.reloader.counts == {SUCCESS: 1, FAILURE: 0}


_VERSIONS = itertools.count()


def publish(volume: Path, files: dict[str, str]) -> None:
    """A ConfigMap's update as kubelet's atomic writer makes it: every file in a new folder named
    after the time, a `..data_tmp` link to it renamed over `..data`, a link per file into `..data`
    (made once), and the previous folder deleted."""
    data = volume / "..data"
    previous = volume / os.readlink(data) if data.is_symlink() else None
    version = volume / time.strftime(f"..%Y_%m_%d_%H_%M_%S.{next(_VERSIONS)}")
    version.mkdir()
    for name, text in files.items():
        (version / name).write_text(text)
    (volume / "..data_tmp").symlink_to(version.name)
    os.replace(volume / "..data_tmp", data)
    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")
    if previous is not None:
        shutil.rmtree(previous)


def test_a_configmap_update_is_reloaded_from_the_names_given_and_so_is_every_later_one(tmp_path: Path) -> None:
    upstream = RecordingUpstream(echo)
    volume = tmp_path / "config"
    volume.mkdir()
    admin_port = free_port()

    def files(table: str) -> dict[str, str]:
        return {
            "gateway.yaml": f"routes: payments.yaml\ntokens:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  jwks_file: {KEYS / 'jwks.json'}\n"
                            f"admin:\n  listen: 127.0.0.1:{admin_port}\n  token_file: admin.token\n",
            "payments.yaml": table.replace("{upstream}", upstream.url),
            "admin.token": TOKEN,
        }

    publish(volume, files(TABLE_A))
    config = volume / "gateway.yaml"
    try:
        with serving(config, admin_port=admin_port) as served:
            assert get(served.base, "read:a").text == "/A/items/7"
            assert [process["config"] for process in served.processes()] == [str(config)]  # not the version folder
            first = volume / os.readlink(volume / "..data")
            time.sleep(SETTLED)
            publish(volume, files(TABLE_B))
            assert not first.exists()
            until(lambda: get(served.base, "read:b").text == "/B/items/7", what="the reload after the ConfigMap's update")
            # the next update: the folder first read from is gone, the one after it too
            time.sleep(SETTLED)
            publish(volume, files(TABLE_A))
            until(lambda: get(served.base, "read:a").text == "/A/items/7", what="the reload after the next update")
            done = httpx.post(f"{served.admin}/reload", headers=AUTH, timeout=40)
            assert done.status_code == 200 and done.json()["result"] == SUCCESS, done.text
            assert [process["reload"]["result"] for process in served.processes()] == [SUCCESS]
    finally:
        upstream.close()


def test_an_edit_of_a_schema_or_manifest_a_table_names_reloads(
    tmp_path: Path, reloads: Callable[[Path], tuple[LiveServer, ServingReloads]],
) -> None:
    from tests.graphql_support import BANK_TABLE_HEAD as HEAD
    from tests.graphql_support import GRAPHQL_ROUTE as ROUTE
    from tests.graphql_support import SDL

    config = write_config(tmp_path, table=HEAD + ROUTE + "      schema: bank.graphql\n      persisted_queries: persisted.json\n")
    sdl, manifest = tmp_path / "routes" / "bank.graphql", tmp_path / "routes" / "persisted.json"
    sdl.write_text(SDL.read_text())
    manifest.write_text('{"format": "apollo-persisted-query-manifest", "version": 1, "operations": []}')
    assert {sdl, manifest} <= set(load_config(config).files)
    _, service = reloads(config)
    time.sleep(SETTLED)
    with sdl.open("a") as file:
        file.write("\n# reviewed\n")
    until(lambda: service.reloader.counts[SUCCESS] == 1, what="the reload after the schema changed")
    time.sleep(SETTLED)
    manifest.write_text('{"format": "apollo-persisted-query-manifest", "version": 1, "operations": [] }')
    until(lambda: service.reloader.counts[SUCCESS] == 2, what="the reload after the manifest changed")
