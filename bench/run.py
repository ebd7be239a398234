"""Benchmark scope-gateway against nginx, HAProxy and a hand-written Starlette proxy, in one run.

    python bench/run.py [--smoke] [--rounds 3] [--duration 5] [--out bench/results] [--targets a,b] [--workloads a,b]

Installs what is missing, generates keys, tokens and configs in a temp dir, starts every target on
127.0.0.1, checks they all answer alike, then measures them in interleaved rounds with wrk, plus
memory under many connections and big uploads, and gateway throughput by route count. Results go
to --out as results.json, results.md and chart.png. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import load  # noqa: E402  (standard library only)
import procs  # noqa: E402

WORKLOADS = ["get", "post", "refused", "first_seen"]
PLAIN_WORKLOADS = ["get", "post"]  # the targets without token checks only answer or forward
# the gateway's own features, each beside the same target's plain REST request: catalog rules in
# play on every request and live grants (a client grant and a user grant, both read from the grant
# store's views) beside `get`; a repeated GraphQL document beside `post`
FEATURE_WORKLOADS = ["rules", "grants", "graphql"]
FEATURE_CONNECTIONS = 32
FIRST_SEEN_CONNECTIONS = 32
EXPECTED_FIRST_SEEN_RATE = 15_000  # req/s, generous: sizes the pool of distinct tokens
GATEWAY_CACHE_SIZE = 10_000  # tokens.cache_size in the generated gateway.yaml
TARGET_NAMES = ["nginx-proxy", "haproxy-1t", "haproxy-2t", "naive", "gateway-uvicorn-1w", "gateway-granian-1w",
                "gateway-uvicorn-2w", "gateway-granian-2w", "gateway-uvicorn-1w-metrics", "gateway-uvicorn-1w-jsonlog",
                "decision-uvicorn-1w", "nginx-decision"]
# the decision listener asked directly, as Traefik and Caddy ask it: no body and no upstream leg
DECISION_WORKLOADS = ["get", "refused", "first_seen"]


# --- settings ---

@dataclass
class Settings:
    smoke: bool
    rounds: int
    duration: float
    out: Path
    connections: list[int]
    first_seen_tokens: int
    held_connections: int
    upload_clients: int
    upload_bytes: int
    route_counts: list[int]
    warmup: float
    only: list[str] = field(default_factory=list)
    workloads: list[str] = field(default_factory=list)  # only these cells, and none of the extras; empty: everything


def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny and quick: 1 round of 1 s, 1 and 32 connections (for CI)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; every target runs every cell once per round (default 3)")
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="results folder (default bench/results)")
    parser.add_argument("--targets", default="", help="comma-separated subset of targets (default: all); upstream always runs")
    parser.add_argument("--workloads", default="", help="comma-separated subset of workloads, without the memory and route extras (default: all)")
    args = parser.parse_args(argv)
    only = [name for name in args.targets.split(",") if name]
    unknown = sorted(set(only) - set(TARGET_NAMES))
    if unknown:
        parser.error(f"--targets: unknown {', '.join(unknown)}; choose from {', '.join(TARGET_NAMES)}")
    workloads = [name for name in args.workloads.split(",") if name]
    unknown = sorted(set(workloads) - set(WORKLOADS + FEATURE_WORKLOADS))
    if unknown:
        parser.error(f"--workloads: unknown {', '.join(unknown)}; choose from {', '.join(WORKLOADS + FEATURE_WORKLOADS)}")
    if args.smoke:
        return Settings(True, 1, 1, args.out, [1, 32], 300, 50, 4, 2**20, [10, 1000], 0.5, only, workloads)
    # first_seen: enough distinct tokens for one run at a generous rate, and always more than the
    # gateway's cache holds, so cycling through them never hits the cache
    pool = int(min(100_000, max(1.5 * GATEWAY_CACHE_SIZE, args.duration * EXPECTED_FIRST_SEEN_RATE)))
    return Settings(False, args.rounds, args.duration, args.out, [1, 32, 256], pool, 1000, 32, 100 * 2**20, [10, 1000, 10_000], 1.0, only, workloads)


# --- set-up: what the benchmark needs on the machine ---

def _run_visible(command: list[str], **options) -> int:
    print("  $", " ".join(command), flush=True)
    return subprocess.run(command, **options).returncode


def install_missing() -> None:
    """Debian packages haproxy, nginx-light, wrk and the Python packages, when missing."""
    tools = {"haproxy": "haproxy", "nginx": "nginx-light", "wrk": "wrk"}
    missing = [package for tool, package in tools.items() if not _which(tool)]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(f"set-up: missing {', '.join(missing)}; install as root: apt-get install -y haproxy nginx-light wrk")
        print(f"set-up: installing {', '.join(missing)} with apt-get", flush=True)
        environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "haproxy", "nginx-light", "wrk"]
        if _run_visible(install, env=environment) != 0:
            _run_visible(["apt-get", "update"], env=environment)
            if _run_visible(install, env=environment) != 0:
                raise SystemExit("set-up: apt-get install failed")
        for service in ("nginx", "haproxy"):  # apt starts them; they would only get in the way
            _run_visible(["service", service, "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        print("set-up: haproxy, nginx, wrk already installed")
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    if importlib.util.find_spec("gateway") is None or importlib.util.find_spec("granian") is None:
        print("set-up: installing the gateway with its [granian] extra", flush=True)
        if _run_visible([*pip, "-e", f"{REPO}[granian]"]) != 0:
            raise SystemExit("set-up: pip install of the gateway failed")
    packages = [name for name in ("starlette", "matplotlib") if importlib.util.find_spec(name) is None]
    if packages:
        print(f"set-up: installing {', '.join(packages)} from PyPI", flush=True)
        if _run_visible([*pip, *packages]) != 0:
            raise SystemExit("set-up: pip install failed")
    else:
        print("set-up: starlette, matplotlib already installed")
    importlib.invalidate_caches()


def _which(tool: str) -> str | None:
    # root's PATH has /usr/sbin, a developer's may not
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")


def raise_fd_limit() -> None:
    """Thousands of sockets: ours, and (inherited) the targets'."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted) if hard != resource.RLIM_INFINITY else hard))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def gateway_command() -> list[str]:
    """The gateway's own CLI: the console script beside this interpreter, else on PATH."""
    script = Path(sys.executable).parent / "gateway"
    return [str(script)] if script.exists() else [shutil.which("gateway") or "gateway"]


# --- targets ---

@dataclass
class Target:
    name: str
    service: procs.Service
    checks_tokens: bool
    features: bool = False  # a gateway whose config has the feature workloads' tables
    # "forward-auth": a decision listener, asked about each request (GET /forward-auth, X-Forwarded-*)
    asked: bool = False
    # processes it needs that are measured with it (nginx-decision's decision listener)
    helpers: list[procs.Service] = field(default_factory=list)
    extras: bool = True  # measured with many connections and big uploads too

    @property
    def workloads(self) -> list[str]:
        if self.asked:
            return DECISION_WORKLOADS
        if self.features:
            return WORKLOADS + FEATURE_WORKLOADS
        return WORKLOADS if self.checks_tokens else PLAIN_WORKLOADS


def define_targets(work: Path, material, keys, upstream_port: int) -> list[Target]:
    """Every target but the upstream, with its config written; none started yet."""
    public_pem = work / "public.pem"
    gateway_config = material.write_gateway_config(work / "gateway", keys, upstream_port, grants=True, graphql=True)
    targets: list[Target] = []

    def add(name: str, command: list[str], port: int, checks_tokens: bool = True, env: dict | None = None, features: bool = False) -> None:
        targets.append(Target(name, procs.Service(name, command, port, work / f"{name}.log", env), checks_tokens, features))

    port = procs.free_port()
    add("nginx-proxy", ["nginx", "-p", str(work), "-e", str(work / "nginx-proxy-start.log"),
                        "-c", str(material.write_proxy_nginx(work, port, upstream_port))], port, checks_tokens=False)
    for threads in (1, 2):
        port = procs.free_port()
        add(f"haproxy-{threads}t", ["haproxy", "-db", "-f", str(material.write_haproxy(work, port, upstream_port, threads, public_pem))], port)
    port = procs.free_port()
    add("naive", [sys.executable, "-m", "uvicorn", "--app-dir", str(BENCH), "naive_proxy:app", "--host", "127.0.0.1",
                  "--port", str(port), "--log-level", "warning", "--no-access-log"], port,
        env={"NAIVE_UPSTREAM": f"http://127.0.0.1:{upstream_port}/v3", "NAIVE_PUBLIC_KEY": str(public_pem),
             "NAIVE_ISSUER": material.ISSUER, "NAIVE_AUDIENCE": material.AUDIENCE})
    for server, workers in (("uvicorn", 1), ("granian", 1), ("uvicorn", 2), ("granian", 2)):
        port = procs.free_port()
        add(f"gateway-{server}-{workers}w", gateway_serve(gateway_config, port, server, workers), port, features=True)
    # what metrics and the access log cost: gateway-uvicorn-1w with the admin listener (metrics on
    # by default), and with --access-log --log-format json (its lines go to the target's log file)
    port = procs.free_port()
    with_metrics = material.write_gateway_config(work / "gateway-metrics", keys, upstream_port, admin_port=procs.free_port())
    add("gateway-uvicorn-1w-metrics", gateway_serve(with_metrics, port), port)
    port = procs.free_port()
    add("gateway-uvicorn-1w-jsonlog", [*gateway_serve(gateway_config, port), "--access-log", "--log-format", "json"], port)
    # decision mode (no GraphQL table: it needs the body): the decision listener alone, and behind
    # nginx's auth_request as examples/nginx ships it; neither forwards bodies of its own, so the
    # connection and upload extras are left to the proxies
    decision_config = material.write_gateway_config(work / "gateway-decision", keys, upstream_port, grants=True)
    port = procs.free_port()
    add("decision-uvicorn-1w", [*gateway_serve(decision_config, port), "--mode", "decision"], port)
    targets[-1].asked, targets[-1].extras = True, False
    decision_port, port = procs.free_port(), procs.free_port()
    helper = procs.Service("nginx-decision-gateway", [*gateway_serve(decision_config, decision_port), "--mode", "decision"], decision_port,
                           work / "nginx-decision-gateway.log")
    add("nginx-decision", ["nginx", "-p", str(work), "-e", str(work / "nginx-decision-start.log"),
                           "-c", str(material.write_decision_nginx(work, port, decision_port, upstream_port))], port)
    targets[-1].helpers, targets[-1].extras = [helper], False
    return targets


def gateway_serve(config: Path, port: int, server: str = "uvicorn", workers: int = 1) -> list[str]:
    # the default log level and logs, as a user who only says where the config is would run it
    return [*gateway_command(), "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--server", server, "--workers", str(workers)]


def gateway_check(config: Path) -> str:
    done = subprocess.run([*gateway_command(), "check", "--config", str(config)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"gateway check --config {config} failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip()


def start_all(services: list[procs.Service], timeout: float = 60) -> None:
    for service in services:
        service.start()
    for service in services:
        service.wait_listening(timeout)


# --- sanity: every token-checking target must answer exactly as the gateway does ---

def sanity_cases(material) -> list[dict]:
    webhooks, merchant = material.WEBHOOKS_PATH, f"{material.PREFIX}/merchants/M123"
    return [
        {"name": "GET webhooks, read token", "method": "GET", "path": webhooks, "token": "read", "expected": 200},
        {"name": "GET webhooks, write token (implies read)", "method": "GET", "path": webhooks, "token": "write", "expected": 200},
        {"name": "POST webhooks, write token", "method": "POST", "path": webhooks, "token": "write", "expected": 200},
        {"name": "POST webhooks, read token", "method": "POST", "path": webhooks, "token": "read", "expected": 403},
        {"name": "GET webhooks, no token", "method": "GET", "path": webhooks, "token": None, "expected": 401},
        {"name": "GET webhooks, forged signature", "method": "GET", "path": webhooks, "token": "forged", "expected": 401},
        {"name": "GET webhooks, payload altered", "method": "GET", "path": webhooks, "token": "tampered", "expected": 401},
        {"name": "GET webhooks, alg none", "method": "GET", "path": webhooks, "token": "alg_none", "expected": 401},
        {"name": "GET webhooks, expired", "method": "GET", "path": webhooks, "token": "expired", "expected": 401},
        {"name": "GET webhooks, wrong audience", "method": "GET", "path": webhooks, "token": "wrong_audience", "expected": 401},
        {"name": "GET webhooks, wrong issuer", "method": "GET", "path": webhooks, "token": "wrong_issuer", "expected": 401},
        {"name": "GET webhooks, other scope", "method": "GET", "path": webhooks, "token": "other_scope", "expected": 403},
        {"name": "GET unknown path, read token", "method": "GET", "path": material.UNKNOWN_PATH, "token": "read", "expected": 404},
        {"name": "PUT webhooks (no such route)", "method": "PUT", "path": webhooks, "token": "write", "expected": 404},
        {"name": "GET webhook, read token", "method": "GET", "path": f"{webhooks}/W1", "token": "read", "expected": 200},
        {"name": "DELETE webhook, read token", "method": "DELETE", "path": f"{webhooks}/W1", "token": "read", "expected": 403},
        {"name": "GET merchant, other scope (any-of)", "method": "GET", "path": merchant, "token": "other_scope", "expected": 200},
        {"name": "GET merchant, read token", "method": "GET", "path": merchant, "token": "read", "expected": 403},
    ]


def ask(port: int, cases: list[dict], tokens: dict[str, str], asked: bool = False) -> dict[str, int | str]:
    """Each case's status; with `asked`, the decision listener's answer to GET /forward-auth about it."""
    import httpx

    answers: dict[str, int | str] = {}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for case in cases:
            headers = {"Authorization": f"Bearer {tokens[case['token']]}"} if case["token"] else {}
            body = b'{"url":"https://example.com/hook"}' if case["method"] in ("POST", "PATCH", "PUT") else None
            method, path = case["method"], case["path"]
            if asked:
                headers.update({"X-Forwarded-Method": method, "X-Forwarded-Uri": path})
                method, path, body = "GET", "/forward-auth", None
            try:
                answers[case["name"]] = client.request(method, path, headers=headers, content=body).status_code
            except httpx.HTTPError as failure:
                answers[case["name"]] = type(failure).__name__
    return answers


def sanity_check(targets: list[Target], upstream: procs.Service, cases: list[dict], tokens: dict[str, str]) -> tuple[dict, list[str]]:
    """Status codes per case and target; returns them and the names of the targets that failed.
    Targets without token checks must answer 200 to the allowed requests only."""
    answers, failed = {}, []
    for target in [Target("upstream", upstream, False), *targets]:
        mine = cases if target.checks_tokens else [case for case in cases if case["expected"] == 200]
        answers[target.name] = ask(target.service.port, mine, tokens, target.asked)
        if any(answers[target.name][case["name"]] != case["expected"] for case in mine):
            failed.append(target.name)
    print_sanity(cases, answers, failed)
    return {"cases": [{"name": case["name"], "expected": case["expected"]} for case in cases], "answers": answers,
            "failed": failed}, failed


def print_sanity(cases: list[dict], answers: dict, failed: list[str]) -> None:
    names = list(answers)
    width = max(len(case["name"]) for case in cases)
    print("\nsanity check: status codes (expected = the gateway's answers)")
    print(f"{'case':<{width}}  exp  " + " ".join(f"{name[:12]:>12}" for name in names))
    for case in cases:
        cells = []
        for name in names:
            answer = answers[name].get(case["name"], "-")
            mark = "!" if answer not in ("-", case["expected"]) else " "
            cells.append(f"{str(answer) + mark:>12}")
        print(f"{case['name']:<{width}}  {case['expected']}  " + " ".join(cells))
    print("failed (dropped from the benchmark): " + (", ".join(failed) if failed else "none"), flush=True)


# --- throughput rounds ---

def script_args(workload: str, tokens: dict[str, str], first_seen_file: Path, cursor: int, connections: int, asked: bool = False) -> list[str]:
    import material

    if asked and workload in ("get", "refused"):
        return [workload, tokens["read"], material.WEBHOOKS_PATH, material.UNKNOWN_PATH]
    if asked and workload == "first_seen":
        return [str(first_seen_file), str(cursor), str(load.wrk_threads(connections)), "forward-auth"]
    if workload == "graphql":
        return [tokens["read"], material.GRAPHQL_PATH, "POST", material.GRAPHQL_BODY.decode()]
    if workload in FEATURE_WORKLOADS:
        return [tokens[workload], {"rules": material.RULES_PATH, "grants": material.GRANTS_PATH}[workload]]
    if workload == "post":
        return [tokens["write"]]
    if workload == "first_seen":
        return [str(first_seen_file), str(cursor), str(load.wrk_threads(connections))]
    return [tokens["read"]]


def run_problems(run: dict) -> list[str]:
    """What makes a run count as failed in --smoke (and is reported in the full run)."""
    if "failure" in run:
        return [run["failure"]]
    problems = []
    socket_errors = run["errors_connect"] + run["errors_read"] + run["errors_write"] + run["errors_timeout"]
    if run["requests"] == 0:
        problems.append("no requests")
    if socket_errors:
        problems.append(f"{socket_errors} socket errors")
    if run["workload"] == "refused":
        if run["non_2xx"] < run["requests"]:
            problems.append(f"{run['requests'] - run['non_2xx']} not refused")
    elif run["non_2xx"]:
        problems.append(f"{run['non_2xx']} non-2xx")
    return problems


def measure(target: Target, workload: str, connections: int, duration: float, args: list[str]) -> dict:
    processes = [target.service, *target.helpers]
    cpu_before = sum(procs.cpu_seconds(service.pid) for service in processes)
    raw = wrk(target, workload, connections, duration, args)
    cpu = sum(procs.cpu_seconds(service.pid) for service in processes) - cpu_before
    run = {"workload": workload, "connections": connections, **raw}
    if "failure" not in raw:
        seconds = raw["duration_us"] / 1e6
        run.update(rps=raw["requests"] / seconds if seconds else 0, p50_ms=raw["latency_p50_us"] / 1000,
                   p99_ms=raw["latency_p99_us"] / 1000, cpu_s=round(cpu, 3),
                   cpu_s_per_10k=cpu / raw["requests"] * 10_000 if raw["requests"] else None)
    run["problems"] = run_problems(run)
    return run


def wrk(target: Target, workload: str, connections: int, duration: float, args: list[str]) -> dict:
    script = "forward_auth" if target.asked and workload in ("get", "refused") else None
    return load.run_wrk(target.service.port, workload, connections, duration, args, script)


def describe(run: dict) -> str:
    if "failure" in run:
        return f"FAILED: {run['failure']}"
    text = f"{run['rps']:>9,.0f} req/s  p50 {run['p50_ms']:6.2f} ms  p99 {run['p99_ms']:7.2f} ms  CPU {run['cpu_s_per_10k'] or 0:.3f} s/10k"
    return text + (f"  [{'; '.join(run['problems'])}]" if run["problems"] else "")


def cells(settings: Settings) -> list[tuple[str, int]]:
    grid = [(workload, connections) for workload in ("get", "post", "refused") for connections in settings.connections]
    every = grid + [("first_seen", FIRST_SEEN_CONNECTIONS)] + [(workload, FEATURE_CONNECTIONS) for workload in FEATURE_WORKLOADS]
    return [cell for cell in every if not settings.workloads or cell[0] in settings.workloads]


def throughput_rounds(settings: Settings, targets: list[Target], tokens: dict[str, str], first_seen_file: Path) -> list[dict]:
    """Round r: every cell (workload x connections), every target in turn; so each ratio compares
    runs made minutes apart at most."""
    runs = []
    cursors = {target.name: 0 for target in targets}  # first_seen: next unused token position
    for round_number in range(1, settings.rounds + 1):
        for workload, connections in cells(settings):
            for target in targets:
                if workload not in target.workloads:
                    continue
                args = script_args(workload, tokens, first_seen_file, cursors[target.name], connections, target.asked)
                run = measure(target, workload, connections, settings.duration, args)
                if workload == "first_seen" and "next_token" in run:
                    cursors[target.name] = run["next_token"] + 64
                run.update(round=round_number, target=target.name)
                runs.append(run)
                print(f"[round {round_number}/{settings.rounds}] {workload:<10} c={connections:<3} {target.name:<19} {describe(run)}", flush=True)
    return runs


def warm_up(settings: Settings, targets: list[Target], tokens: dict[str, str]) -> None:
    for target in targets:
        wrk(target, "get", 32, settings.warmup, script_args("get", tokens, Path(), 0, 32, target.asked))


# --- memory ---

def memory_with_connections(settings: Settings, targets: list[Target], tokens: dict[str, str], path: str) -> list[dict]:
    rows = []
    for target in targets:
        pid = target.service.pid
        idle_rss, _ = procs.memory_kib(pid)
        held, (rss, hwm) = asyncio.run(load.hold_connections(target.service.port, settings.held_connections, path, tokens["read"],
                                                             lambda: procs.memory_kib(pid), timeout=120))
        row = {"target": target.name, "idle_rss_kib": idle_rss, "rss_kib": rss, "hwm_kib": hwm,
               "kib_per_connection": (rss - idle_rss) / max(1, held.opened), **asdict(held)}
        row["problems"] = [] if held.answered_200 == settings.held_connections else [f"{held.answered_200}/{settings.held_connections} answered 200"]
        rows.append(row)
        print(f"[connections] {target.name:<19} idle {idle_rss / 1024:7.1f} MiB, with {held.opened} conns {rss / 1024:7.1f} MiB, "
              f"HWM {hwm / 1024:7.1f} MiB, {held.answered_200} answered 200" + (f"  [{row['problems'][0]}]" if row["problems"] else ""), flush=True)
    return rows


def memory_with_uploads(settings: Settings, targets: list[Target], tokens: dict[str, str], path: str) -> list[dict]:
    rows = []
    for target in targets:
        pid = target.service.pid
        baseline, _ = procs.memory_kib(pid)
        peak = [baseline]

        def sample() -> None:
            peak[0] = max(peak[0], procs.memory_kib(pid)[0])

        outcome = asyncio.run(load.upload_many(target.service.port, path, tokens["write"], settings.upload_clients, settings.upload_bytes,
                                               64 * 1024, sample, timeout=300))
        row = {"target": target.name, "baseline_rss_kib": baseline, "peak_rss_kib": peak[0], "growth_kib": peak[0] - baseline,
               "seconds": round(outcome.seconds, 2), "mib_per_s": outcome.bytes_sent / 2**20 / outcome.seconds if outcome.seconds else None,
               "completed": outcome.completed, "failed": outcome.failed[:5]}
        row["problems"] = [f"{len(outcome.failed)} uploads failed: {outcome.failed[0]}"] if outcome.failed else []
        rows.append(row)
        print(f"[uploads] {target.name:<19} baseline {baseline / 1024:7.1f} MiB, peak {peak[0] / 1024:7.1f} MiB, "
              f"{outcome.completed}/{settings.upload_clients} complete in {outcome.seconds:.1f} s"
              + (f"  [{row['problems'][0]}]" if row["problems"] else ""), flush=True)
    return rows


# --- route count ---

def route_scaling(settings: Settings, work: Path, material, keys, upstream_port: int, tokens: dict[str, str], services: list) -> tuple[list[dict], dict]:
    """gateway-uvicorn-1w with 10, 1,000 and 10,000 routes (the bench tables' 8 + generated ones)."""
    gateways, meta = {}, {}
    for count in settings.route_counts:
        config = material.write_gateway_config(work / f"routes-{count}", keys, upstream_port,
                                               generated_routes=max(0, count - material.BENCH_ROUTE_COUNT))
        print(f"[routes] {gateway_check(config)}", flush=True)
        port = procs.free_port()
        service = procs.Service(f"gateway-{count}-routes", gateway_serve(config, port), port, work / f"routes-{count}.log")
        services.append(service)
        started = time.monotonic()
        service.start()
        service.wait_listening(120)
        meta[count] = {"startup_s": round(time.monotonic() - started, 2)}
        gateways[count] = service
    for count, service in gateways.items():
        load.run_wrk(service.port, "get", 32, settings.warmup, [tokens["read"]])
        meta[count]["idle_rss_kib"] = procs.memory_kib(service.pid)[0]
    runs = []
    for round_number in range(1, settings.rounds + 1):
        for count, service in gateways.items():
            run = measure(Target("gateway-uvicorn-1w", service, True), "get", 32, settings.duration, [tokens["read"]])
            run.update(round=round_number, routes=count, target="gateway-uvicorn-1w")
            runs.append(run)
            print(f"[round {round_number}/{settings.rounds}] routes={count:<6} {describe(run)}", flush=True)
    for service in gateways.values():
        service.stop()
    return runs, meta


# --- machine ---

def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        return ((done.stdout or "") + (done.stderr or "")).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    memory_kib = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "gateway"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu, "cpus": str(len(os.sched_getaffinity(0))), "memory": f"{memory_kib / 2**20:.1f} GiB", "kernel": platform.release(),
        "python": platform.python_version(), "haproxy": _first_line(["haproxy", "-v"]), "nginx": _first_line(["nginx", "-v"]),
        "wrk": _first_line(["wrk", "--version"]), "uvicorn": _version("uvicorn"), "granian": _version("granian"),
        "starlette": _version("starlette"), "httpx": _version("httpx"), "pyjwt": _version("pyjwt"),
        "gateway": f"{_version('scope-gateway')} at {commit}" + (" with uncommitted changes in gateway/" if dirty else ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# --- the run ---

def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both unwind through the finally that stops every process. Setting the
    SIGINT handler also matters when we were started in the background with SIGINT ignored: the
    targets would inherit that, and shrug off the SIGINT that stops them gracefully."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, handler)


def make_tokens(settings: Settings, work: Path, material):
    """The key pair, the named tokens (read, write, and the ones to refuse) and the file of
    distinct first_seen tokens."""
    keys = material.make_keys()
    (work / "public.pem").write_bytes(keys.public_pem)
    made = material.make_tokens(keys)
    tokens = {"read": made.read, "write": made.write, "rules": made.rules, "grants": made.grants, **material.refusal_tokens(keys)}
    first_seen_file = work / "first-seen-tokens.txt"
    seconds = material.mint_distinct_tokens(keys.private_pem, settings.first_seen_tokens, first_seen_file)
    print(f"minted {settings.first_seen_tokens:,} distinct tokens for first_seen in {seconds:.1f} s", flush=True)
    return keys, tokens, first_seen_file


def benchmark(settings: Settings, work: Path, services: list[procs.Service]) -> tuple[dict, list[str]]:
    """Everything between set-up and writing the results; every process started is appended to
    `services` at once, so that main() stops it whatever happens."""
    import material  # needs pyjwt and cryptography: imported after the set-up step
    import report

    failures: list[str] = []
    keys, tokens, first_seen_file = make_tokens(settings, work, material)

    sink_port = procs.free_port()
    sink = procs.Service("sink", [sys.executable, str(BENCH / "sink.py"), str(sink_port)], sink_port, work / "sink.log")
    upstream_port = procs.free_port()
    upstream = procs.Service("upstream", ["nginx", "-p", str(work), "-e", str(work / "upstream-start.log"), "-c",
                                          str(material.write_upstream_nginx(work, upstream_port, sink.port))], upstream_port, work / "upstream.log")
    targets = define_targets(work, material, keys, upstream_port)
    if settings.only:
        targets = [target for target in targets if target.name in settings.only]
    print(f"gateway config: {gateway_check(work / 'gateway' / 'gateway.yaml')}")
    helpers = [helper for target in targets for helper in target.helpers]
    services += [sink, upstream, *helpers, *(target.service for target in targets)]
    start_all([sink, upstream, *helpers])
    start_all([target.service for target in targets])
    print(f"started: upstream :{upstream.port}, " + ", ".join(f"{target.name} :{target.service.port}" for target in targets), flush=True)

    sanity, failed = sanity_check(targets, upstream, sanity_cases(material), tokens)
    failures += [f"sanity check failed: {name}" for name in failed]
    if "upstream" in failed:
        raise RuntimeError("the upstream itself does not answer 200; nothing to measure")
    measured = [Target("upstream", upstream, False), *(target for target in targets if target.name not in failed)]
    warm_up(settings, measured, tokens)

    extras = not settings.workloads  # a run limited to some workloads measures only them
    extra_targets = [target for target in measured if target.extras]
    held = memory_with_connections(settings, extra_targets, tokens, material.WEBHOOKS_PATH) if extras else []
    runs = throughput_rounds(settings, measured, tokens, first_seen_file)
    uploads = memory_with_uploads(settings, extra_targets, tokens, material.WEBHOOKS_PATH) if extras else []
    route_runs, route_meta = route_scaling(settings, work, material, keys, upstream_port, tokens, services) if extras else ([], {})

    failures += [f"{run['target']} {run['workload']} c={run['connections']} round {run['round']}: {'; '.join(run['problems'])}"
                 for run in runs + route_runs if run["problems"]]
    failures += [f"{row['target']}: {'; '.join(row['problems'])}" for row in held + uploads if row["problems"]]
    names = [target.name for target in measured]
    results = {
        "settings": {**asdict(settings), "out": str(settings.out), "targets": names},
        "targets": names,
        "machine": machine(),
        "sanity": sanity,
        "runs": runs,
        "summary": report.summarize(runs, names),
        "observability": report.summarize_observability(runs, names),
        "decision": report.summarize_decision(runs, names),
        "held_connections": held,
        "uploads": uploads,
        "routes_runs": route_runs,
        "routes_summary": report.summarize_routes(route_runs),
        "routes_meta": route_meta,
        "failures": failures,
    }
    return results, failures


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    settings = parse_settings(argv)
    _stop_on_signals()
    raise_fd_limit()
    install_missing()
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    os.chmod(work, 0o755)  # nginx workers run as nobody and must reach their temp dirs
    services: list[procs.Service] = []
    print(f"work dir: {work}", flush=True)
    try:
        results, failures = benchmark(settings, work, services)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", flush=True)
        return 130
    except RuntimeError as failure:  # a target that would not start, a config `gateway check` refused
        print(f"\nbenchmark aborted: {failure}", flush=True)
        return 1
    finally:
        for service in reversed(services):
            service.stop()
        shutil.rmtree(work, ignore_errors=True)
    import report

    results["elapsed_s"] = round(time.monotonic() - started, 1)
    text = report.write(results, settings.out)
    print("\n" + text)
    print(f"results: {settings.out / 'results.md'}, {settings.out / 'results.json'}, {settings.out / 'chart.png'}")
    print(f"elapsed: {results['elapsed_s']:.0f} s")
    if failures:
        print("\nproblems:\n  " + "\n  ".join(failures))
    return 1 if failures and (settings.smoke or any(failure.startswith("sanity") for failure in failures)) else 0


if __name__ == "__main__":
    sys.exit(main())
