"""CPU time the gateway's own code spends per request, measured in one process.

    python bench/inprocess.py [--requests 32000] [--concurrency 32] [--repeats 5]
    python bench/inprocess.py --instructions      # instructions per request, counted by valgrind
    python bench/inprocess.py --mode metrics      # with metrics on (json-log: with JSON access logs)
    python bench/inprocess.py --instructions --workloads get,shadow   # enforce mode against shadow mode
    python bench/inprocess.py --issuers 2         # two issuer entries configured

Calls the ASGI app directly (no server, no wrk) for `--concurrency` concurrent callers on uvloop,
against the same nginx upstream and route table as bench/run.py, and prints the CPU microseconds
per request (the least of `--repeats` runs) and how often the garbage collector ran, per workload.
It isolates the request's path from the server and the load generator, so a change to the hot
path can be judged in seconds and with little noise; bench/run.py is still the measurement that
counts (it adds the server, the sockets to the client, and the peers).

`--instructions` runs the same requests under valgrind (callgrind) instead, twice per workload
with different request counts, and prints the difference in instructions executed divided by the
difference in requests: what one more request costs. Unlike CPU time it barely moves between
runs (under 0.5 %), whatever else the machine does, so it can judge a change of 1 %.

`--mode` says what the gateway notes of each request: nothing (`plain`, the default), its
metrics (`metrics`, as with the admin listener on), or a JSON access line (`json-log`, written to
a file in the temporary folder, as `--access-log --log-format json` writes it to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import material  # noqa: E402
import procs  # noqa: E402

# first_seen spends a new token per request, and minting one costs ~1 ms: fewer, shorter runs
FIRST_SEEN_REQUESTS = 10_000
FIRST_SEEN_REPEATS = 3
WARM = 1000


def http_scope(method: str, path: str, token: str | None, body_length: int = 0) -> dict:
    headers = [(b"host", b"gateway.bench"), (b"user-agent", b"inprocess"), (b"accept", b"*/*")]
    if token is not None:
        headers.append((b"authorization", b"Bearer " + token.encode()))
    if body_length:
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % body_length)]
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "headers": headers,
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080)}


def workloads(tokens: material.Tokens, distinct: list[str]) -> dict[str, list[tuple[dict, bytes, int]]]:
    """Per workload, the requests in the order they are sent: (scope, body, expected status)."""
    body = b'{"url":"https://example.test/hook","active":true,"pad":"' + b"x" * 970 + b'"}'
    path = material.WEBHOOKS_PATH
    return {
        "get": [(http_scope("GET", path, tokens.read), b"", 200)],
        "post": [(http_scope("POST", path, tokens.write, len(body)), body, 200)],
        "refused": [(http_scope("GET", path, None), b"", 401), (http_scope("POST", path, tokens.read, len(body)), body, 403),
                    (http_scope("GET", material.UNKNOWN_PATH, tokens.read), b"", 404)],
        "first_seen": [(http_scope("GET", path, token), b"", 200) for token in distinct],
        "rules": [(http_scope("GET", material.RULES_PATH, tokens.rules), b"", 200)],
        "grants": [(http_scope("GET", material.GRANTS_PATH, tokens.grants), b"", 200)],
        # one GraphQL document, repeated: beside `post`, what reading and checking the operation costs
        "graphql": [(http_scope("POST", material.GRAPHQL_PATH, tokens.read, len(material.GRAPHQL_BODY)), material.GRAPHQL_BODY, 200)],
        # `get` again, its table in shadow mode (`workload_config`): beside `get`, what shadow mode costs
        "shadow": [(http_scope("GET", path, tokens.read), b"", 200)],
    }


async def drive(app, requests: list[tuple[dict, bytes, int]], count: int, concurrency: int, offset: int = 0) -> None:
    """`count` requests by `concurrency` callers, cycling through `requests` from `offset`."""
    statuses: list[int] = []

    async def caller(first: int) -> None:
        for n in range(first, count, concurrency):
            scope, body, expected = requests[(offset + n) % len(requests)]

            async def receive(body=body) -> dict:
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            await app(dict(scope), receive, send)
            if statuses[-1] != expected:
                raise RuntimeError(f"{scope['method']} {scope['path']}: {statuses[-1]}, expected {expected}")

    await asyncio.gather(*(caller(first) for first in range(concurrency)))


MODES = ("plain", "metrics", "json-log")


def build_app(config: Path, mode: str):
    """The gateway of `config`, noting each request as `mode` says (see --mode)."""
    from gateway import logs, metrics
    from gateway.app import Gateway
    from gateway.loading import load_config

    recorder = None
    if mode == "metrics":
        directory = config.parent / "metrics"
        directory.mkdir(exist_ok=True)
        recorder = metrics.enable(directory)
    elif mode == "json-log":
        logs.configure("info", "json", access_log=True)
        handler = logging.FileHandler(config.parent / "access.log")
        handler.setFormatter(logs.JsonFormatter())
        logging.getLogger().handlers = [handler]
    return Gateway(load_config(config), metrics=recorder, access_log=mode == "json-log")


async def measure(config: Path, tokens: material.Tokens, distinct: list[str], settings: argparse.Namespace) -> None:
    app = build_app(config, settings.mode)
    await app.runtime.start()
    cases = workloads(tokens, distinct)
    print(f"{'workload':<12}{'CPU us/request':>16}{'gc runs per 10k (gen 0/1/2)':>32}")
    for name, requests in cases.items():
        if name not in settings.workloads:
            continue
        if name == "shadow":  # its own config: a new app (the last workload, so the others keep theirs)
            await app.runtime.aclose()
            app = build_app(workload_config(config.parent.parent, name), settings.mode)
            await app.runtime.start()
        count, repeats = (FIRST_SEEN_REQUESTS, FIRST_SEEN_REPEATS) if name == "first_seen" else (settings.requests, settings.repeats)
        await drive(app, requests, WARM, settings.concurrency)  # warm: connections, caches
        best = float("inf")
        collections = [0, 0, 0]
        for repeat in range(repeats):
            before = [stats["collections"] for stats in gc.get_stats()]
            started = time.process_time()
            # first_seen: every run takes tokens no earlier one used
            await drive(app, requests, count, settings.concurrency, offset=WARM + repeat * count)
            best = min(best, (time.process_time() - started) / count * 1e6)
            collections = [total + stats["collections"] - was for total, stats, was in zip(collections, gc.get_stats(), before)]
        per_10k = "/".join(f"{runs * 10_000 / (count * repeats):.1f}" for runs in collections)
        print(f"{name:<12}{best:>16.1f}{per_10k:>32}", flush=True)
    await app.runtime.aclose()


# --instructions: requests per counted run, the first and the second (their difference is divided)
COUNTED = (600, 2600)


async def counted_run(config: Path, tokens: material.Tokens, distinct: list[str], workload: str, count: int, concurrency: int, mode: str) -> None:
    """One child run for `--instructions`: warm, then `count` requests of one workload."""
    app = build_app(config, mode)
    await app.runtime.start()
    requests = workloads(tokens, distinct)[workload]
    await drive(app, requests, WARM, concurrency)
    await drive(app, requests, count, concurrency, offset=WARM)
    await app.runtime.aclose()


WORKLOADS = ("get", "post", "refused", "first_seen", "rules", "grants", "graphql", "shadow")


def workload_config(work: Path, workload: str) -> Path:
    """The gateway.yaml a workload runs with: `shadow`'s has the management table in shadow mode."""
    return work / ("gateway-shadow" if workload == "shadow" else "gateway") / "gateway.yaml"


def instructions(work: Path, concurrency: int, mode: str, chosen: list[str]) -> None:
    """Per workload, instructions per request: two runs under callgrind, differenced."""
    print(f"{'workload':<12}{'instructions/request':>22}")
    for workload in chosen:
        totals = []
        for count in COUNTED:
            command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
                       "--child", str(work), workload, str(count), "--concurrency", str(concurrency), "--mode", mode]
            # a fixed hash seed: dict and set layouts, hence instruction counts, are the same each run
            done = subprocess.run(command, check=False, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}, timeout=900)
            found = re.search(r"Collected : (\d+)", done.stderr)
            if done.returncode != 0 or found is None:
                raise SystemExit(f"{workload}: the counted run failed:\n{done.stderr[-2000:]}")
            totals.append(int(found.group(1)))
        print(f"{workload:<12}{(totals[1] - totals[0]) / (COUNTED[1] - COUNTED[0]):>22,.0f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32_000, help="requests per measured run (default 32000)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent callers (default 32)")
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per workload; the least is reported (default 5)")
    parser.add_argument("--instructions", action="store_true", help="count instructions per request with valgrind instead of timing")
    parser.add_argument("--mode", default="plain", choices=MODES, help="what each request notes: nothing (default), metrics, a JSON access line")
    parser.add_argument("--issuers", type=int, default=1, help="issuer entries in tokens (default 1); the tokens name the first")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"which to run, comma-separated (default {','.join(WORKLOADS)})")
    parser.add_argument("--child", nargs=3, metavar=("WORK", "WORKLOAD", "COUNT"), help=argparse.SUPPRESS)
    settings = parser.parse_args(argv)
    settings.workloads = settings.workloads.split(",")
    unknown = sorted(set(settings.workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"--workloads: unknown {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    import uvloop

    if settings.child:
        work, workload, count = Path(settings.child[0]), settings.child[1], int(settings.child[2])
        saved = json.loads((work / "tokens.json").read_text())
        tokens = material.Tokens(read=saved["read"], write=saved["write"], rules=saved["rules"], grants=saved["grants"])
        distinct = (work / "distinct.txt").read_text().split()
        uvloop.run(counted_run(workload_config(work, workload), tokens, distinct, workload, count, settings.concurrency, settings.mode))
        return 0
    if settings.instructions and shutil.which("valgrind") is None:
        print("--instructions needs valgrind: apt-get install -y valgrind")
        return 1

    if shutil.which("nginx") is None:
        print("needs nginx: run bench/run.py once (it installs it), or apt-get install nginx-light")
        return 1
    work = Path(tempfile.mkdtemp(prefix="gateway-inprocess-"))
    work.chmod(0o755)  # nginx workers run as nobody
    keys = material.make_keys()
    tokens = material.make_tokens(keys)
    (work / "tokens.json").write_text(json.dumps({"read": tokens.read, "write": tokens.write, "rules": tokens.rules, "grants": tokens.grants}))
    distinct_file = work / "distinct.txt"
    material.mint_distinct_tokens(keys.private_pem, WARM + max(FIRST_SEEN_REQUESTS * FIRST_SEEN_REPEATS, COUNTED[1]), distinct_file)
    distinct = distinct_file.read_text().split()
    sink_port, upstream_port = procs.free_port(), procs.free_port()
    services = [
        procs.Service("sink", [sys.executable, str(BENCH / "sink.py"), str(sink_port)], sink_port, work / "sink.log"),
        procs.Service("upstream", ["nginx", "-p", str(work), "-e", str(work / "upstream-start.log"), "-c",
                                   str(material.write_upstream_nginx(work, upstream_port, sink_port))], upstream_port, work / "upstream.log"),
    ]
    try:
        for service in services:
            service.start()
            service.wait_listening(30)
        config = material.write_gateway_config(work / "gateway", keys, upstream_port, grants=True, graphql=True, issuers=settings.issuers)
        material.write_gateway_config(work / "gateway-shadow", keys, upstream_port, grants=True, graphql=True, shadow=True)
        if settings.instructions:
            instructions(work, settings.concurrency, settings.mode, settings.workloads)
        else:
            uvloop.run(measure(config, tokens, distinct, settings))
    finally:
        for service in reversed(services):
            service.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
