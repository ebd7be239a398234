"""`gateway` in subprocesses, as a user runs it: a command, and `gateway serve` in front of a
loopback upstream (`serving`) or with its admin listener (`serving_with_admin`)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.reload import SUCCESS
from tests.support import RecordingUpstream, eventually, free_port, with_admin, write_config

GATEWAY = shutil.which("gateway") or str(Path(sys.executable).parent / "gateway")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GATEWAY, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def wait_for(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


@contextlib.contextmanager
def serving(tmp_path: Path, *options: str, output: list[str] | None = None) -> Iterator[tuple[str, RecordingUpstream]]:
    """`gateway serve` in front of a loopback upstream; yields the gateway's base URL. What the
    process printed is appended to `output` once it has stopped."""
    upstream = RecordingUpstream()
    port = free_port()
    process = subprocess.Popen([GATEWAY, "serve", "--config", str(write_config(tmp_path, upstream=upstream.url)), "--port", str(port), *options],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(port, process)
        yield f"http://127.0.0.1:{port}", upstream
    finally:
        process.send_signal(signal.SIGINT)
        printed = process.communicate(timeout=15)[0]
        if output is not None:
            output.append(printed)
        upstream.close()


@dataclass
class Served:
    process: subprocess.Popen[str]
    base: str
    admin: str
    output: str = ""

    def ready(self) -> httpx.Response:
        return httpx.get(f"{self.admin}/readyz", timeout=10)

    def processes(self) -> list[dict[str, Any]]:
        return self.ready().json().get("processes", [])  # type: ignore[no-any-return]

    def reloaded(self, successes: int) -> bool:
        """Every serving process has had `successes` successful reloads, and they serve the same files."""
        processes = self.processes()
        return bool(processes) and all(p["reloads"][SUCCESS] >= successes for p in processes) and len({p["fingerprint"] for p in processes}) == 1


@contextlib.contextmanager
def serving_with_admin(config: Path, *options: str, admin_port: int | None = None) -> Iterator[Served]:
    """`gateway serve` with its admin listener, as an operator runs it (`admin_port`: the one the
    config already names)."""
    port = free_port()
    if admin_port is None:
        admin_port = free_port()
        with_admin(config, admin_port)
    process = subprocess.Popen([GATEWAY, "serve", "--config", str(config), "--port", str(port), *options],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    served = Served(process, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}")
    try:
        def up() -> bool:
            assert process.poll() is None, process.communicate()[0]
            try:
                return httpx.get(f"{served.base}/api/status", timeout=2).status_code == 200 and bool(served.processes())
            except httpx.HTTPError:
                return False

        eventually(up, timeout=30, what="the gateway's start")
        yield served
    finally:
        process.send_signal(signal.SIGINT)
        try:
            served.output = process.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            served.output = process.communicate()[0]
