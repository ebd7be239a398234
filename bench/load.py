"""The load: wrk runs (scripts in bench/wrk/), many idle keep-alive connections, and big streamed
uploads. Every loop here is bounded in time."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

WRK_SCRIPTS = Path(__file__).resolve().parent / "wrk"
SCRIPTS = {"rules": "path", "grants": "path", "graphql": "path"}  # workloads that share a script; the others have their own
HOST = "127.0.0.1"


# --- wrk ---

def wrk_threads(connections: int) -> int:
    return 1 if connections == 1 else 2


def run_wrk(port: int, workload: str, connections: int, duration: float, script_args: list[str], script: str | None = None) -> dict:
    """One wrk run (with the workload's script, or `script`); returns the JSON line of
    bench/wrk/report.lua, or {"failure": ...}."""
    threads = wrk_threads(connections)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "5s",
               "-s", str(WRK_SCRIPTS / f"{script or SCRIPTS.get(workload, workload)}.lua"), f"http://{HOST}:{port}/", "--", *script_args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        return {"failure": "wrk did not finish in time"}
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line.removeprefix("BENCH_RESULT "))
    return {"failure": f"wrk exited {done.returncode}: {(done.stderr or done.stdout).strip()[-500:]}"}


# --- a minimal HTTP/1.1 client for the connection and upload tests ---

async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Reads one response (Content-Length or chunked body); returns its status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:] if line)}
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                break
    return status, body


def _request_head(method: str, path: str, port: int, token: str, extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\n{extra}\r\n").encode()


# --- many idle keep-alive connections ---

@dataclass
class HeldConnections:
    opened: int
    answered_200: int
    seconds_to_open: float


async def _open_and_ask(port: int, path: str, token: str, gate: asyncio.Semaphore, held: list, statuses: list) -> None:
    async with gate:  # a bounded number of connects at once: listen backlogs are finite
        reader, writer = await asyncio.open_connection(HOST, port)
        held.append(writer)
        writer.write(_request_head("GET", path, port, token))
        statuses.append((await _read_response(reader))[0])


async def hold_connections(port: int, count: int, path: str, token: str, measure: Callable[[], dict], timeout: float) -> tuple[HeldConnections, dict]:
    """Opens `count` connections, each sends one GET and stays open; calls `measure()` while they
    are all open, then closes them."""
    held: list[asyncio.StreamWriter] = []
    statuses: list[int] = []
    gate = asyncio.Semaphore(64)
    started = time.monotonic()
    try:
        tasks = [asyncio.create_task(_open_and_ask(port, path, token, gate, held, statuses)) for _ in range(count)]
        await asyncio.wait(tasks, timeout=timeout)
        for task in tasks:
            task.cancel()
        opening = time.monotonic() - started
        await asyncio.sleep(0.5)  # let the server settle (buffers released, workers idle)
        reading = measure()
    finally:
        for writer in held:
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for writer in held), return_exceptions=True)
    return HeldConnections(len(held), statuses.count(200), round(opening, 2)), reading


# --- big streamed uploads ---

@dataclass
class UploadOutcome:
    completed: int
    failed: list[str]
    seconds: float
    bytes_sent: int


async def _upload(port: int, path: str, token: str, size: int, chunk: bytes, sent: list[int]) -> str | None:
    """One upload; None when the upstream's sink got every byte, else what went wrong."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        # X-Bench-Upload: the upstream nginx hands this request to sink.py, which reads the whole body
        extra = f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\nX-Bench-Upload: 1\r\n"
        writer.write(_request_head("POST", path, port, token, extra))
        remaining = size
        while remaining > 0:
            piece = chunk if remaining >= len(chunk) else chunk[:remaining]
            writer.write(piece)
            await writer.drain()
            remaining -= len(piece)
            sent[0] += len(piece)
        status, body = await _read_response(reader)
        if status != 200:
            return f"status {status}"
        received = json.loads(body).get("received")
        return None if received == size else f"upstream received {received} of {size} bytes"
    finally:
        writer.close()


async def upload_many(port: int, path: str, token: str, clients: int, size: int, chunk_size: int,
                      sample: Callable[[], None], timeout: float) -> UploadOutcome:
    """`clients` concurrent uploads of `size` bytes each, streamed in `chunk_size` writes, while
    `sample()` is called every 100 ms (it records the server's memory)."""
    chunk = b"x" * chunk_size
    sent = [0]
    started = time.monotonic()
    tasks = [asyncio.create_task(_upload(port, path, token, size, chunk, sent)) for _ in range(clients)]

    async def sampler() -> None:
        while True:
            sample()
            await asyncio.sleep(0.1)

    sampling = asyncio.create_task(sampler())
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    sampling.cancel()
    sample()
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    failed = [f"timed out after {timeout:.0f} s"] * len(pending)
    completed = 0
    for task in done:
        if task.exception() is not None:
            failed.append(f"{type(task.exception()).__name__}: {task.exception()}")
        elif task.result() is None:
            completed += 1
        else:
            failed.append(task.result())
    return UploadOutcome(completed, failed, time.monotonic() - started, sent[0])
