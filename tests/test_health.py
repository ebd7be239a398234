"""`gateway health`, the image's health check: the admin listener's /healthz, asked of a real
`gateway serve`; and the Dockerfile's HEALTHCHECK running it against the config the image serves."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from gateway import health
from gateway.admin import AdminApp
from gateway.loading import load_config
from tests.processes import run, serving
from tests.support import ADMIN_TOKEN as TOKEN
from tests.support import Received, RecordingUpstream, answer, cli, free_port, with_admin, write_config

DOCKERFILE = Path(__file__).parent.parent / "Dockerfile"


def test_health_answers_0_while_the_admin_listener_serves_and_1_once_it_stopped(tmp_path: Path) -> None:
    admin_port = free_port()
    folder = tmp_path / "served"  # `serving` writes its own config in tmp_path: this one is named after it
    folder.mkdir()
    config = with_admin(write_config(folder), admin_port)
    with serving(tmp_path, "--config", str(config)):
        healthy = run("health", "--config", str(config))
        assert healthy.returncode == 0, healthy.stdout
        assert healthy.stdout.strip() == f'http://127.0.0.1:{admin_port}/healthz: 200 {{"status": "serving"}}'
        # a table being edited does not make a serving gateway unhealthy: only admin.listen is read
        (folder / "routes" / "payments.yaml").write_text("routes: [\n")
        assert cli("health", "--config", str(config)).returncode == 0
    stopped = run("health", "--config", str(config))
    assert stopped.returncode == 1 and f"http://127.0.0.1:{admin_port}/healthz: " in stopped.stdout


def test_health_without_an_admin_listener_says_why_it_fails(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    done = cli("health", "--config", str(config))
    assert done.returncode == 1 and "sets no admin.listen: the health check asks the admin listener's /healthz" in done.stdout
    config.write_text(config.read_text() + "admin:\n  listen: nowhere\n")
    done = cli("health", "--config", str(config))
    assert done.returncode == 1 and "gateway.yaml:8: admin.listen must be host:port, e.g. 127.0.0.1:9901, not 'nowhere'" in done.stdout


def test_the_image_health_check_asks_the_admin_listener_of_the_config_it_serves() -> None:
    text = DOCKERFILE.read_text()
    healthcheck = re.search(r"^HEALTHCHECK .*\\\n\s+CMD (\[.*\])$", text, re.MULTILINE)
    served = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert healthcheck is not None and served is not None
    check, serve = json.loads(healthcheck.group(1)), json.loads(served.group(1))
    assert check[:2] == ["gateway", "health"]
    assert check[check.index("--config") + 1] == serve[serve.index("--config") + 1], shlex.join(check)
    assert re.search(r"^EXPOSE .*\b9901\b", text, re.MULTILINE)


def _proving(token: str) -> Callable[[Received, Any], None]:
    """The answer of a listener that holds `token`: the proof of whatever it is asked."""
    def respond(request: Received, connection: Any) -> None:
        challenge = parse_qs(urlsplit(request.target.decode()).query).get("challenge", [""])[0]
        answer(200, json.dumps({"status": "serving", "proof": health.proof(token.encode(), challenge)}).encode())(request, connection)
    return respond


STRANGERS = {
    "a server answering as the gateway once did": answer(200, b'{"status": "serving"}'),
    "one answering with a made-up proof": answer(200, json.dumps({"status": "serving", "proof": "0" * 64}).encode()),
    "one answering with a proof that is no string": answer(200, b'{"status": "serving", "proof": ["x"]}'),
    "one answering anything": answer(200, b"OK"),
    "a gateway of another admin token": _proving("another-admin-token-0123456789"),
}


@pytest.mark.parametrize("behaviour", STRANGERS.values(), ids=STRANGERS.keys())
def test_health_is_not_fooled_by_another_process_on_the_admin_port(tmp_path: Path, behaviour: Callable[[Received, Any], None]) -> None:
    stranger = RecordingUpstream(behaviour)
    try:
        port = int(stranger.url.rpartition(":")[2])
        config = with_admin(write_config(tmp_path), port)
        done = run("health", "--config", str(config))
        assert done.returncode == 1, done.stdout
        assert f"http://127.0.0.1:{port}/healthz: " in done.stdout
        # it was asked, and the question never carried the token
        assert stranger.received and all(TOKEN.encode() not in request.target + b"".join(v for _, v in request.headers) for request in stranger.received)
    finally:
        stranger.close()
    # the same answers, from a listener that holds the token, are healthy
    holder = RecordingUpstream(_proving(TOKEN))
    try:
        with_admin(write_config(tmp_path), int(holder.url.rpartition(":")[2]))
        assert run("health", "--config", str(tmp_path / "gateway.yaml")).returncode == 0
    finally:
        holder.close()


@pytest.mark.anyio
async def test_healthz_proves_the_admin_token_only_when_asked_and_never_shows_it(tmp_path: Path) -> None:
    app = AdminApp(load_config(with_admin(write_config(tmp_path))), None, TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as client:
        plain = await client.get("/healthz")
        assert plain.status_code == 200 and plain.json() == {"status": "serving"}
        asked = await client.get("/healthz", params={"challenge": "n0nce"})
        assert asked.json() == {"status": "serving", "proof": health.proof(TOKEN.encode(), "n0nce")}
        assert TOKEN not in asked.text
        assert asked.json()["proof"] != health.proof(TOKEN.encode(), "other")
        assert (await client.get("/healthz", params={"challenge": "x" * 129})).json() == {"status": "serving"}
