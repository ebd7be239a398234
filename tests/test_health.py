"""`gateway health`, the image's health check: the admin listener's /healthz, asked of a real
`gateway serve`; and the Dockerfile's HEALTHCHECK running it against the config the image serves."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from tests.support import cli, free_port, write_config
from tests.test_admin import with_admin
from tests.test_cli import run, serving

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
