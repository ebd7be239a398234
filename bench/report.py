"""Turning raw runs into results: medians across rounds, per-round ratios, results.json,
results.md and chart.png."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

REFERENCE = "haproxy-1t"
UPSTREAM = "upstream"
CHART_WORKLOADS = ["get", "post", "refused", "first_seen"]
ORDER = CHART_WORKLOADS + ["rules", "grants", "graphql"]
# what a feature workload is compared with on the same target in the same round: the plain REST
# request of its kind
PLAIN_OF = {"rules": "get", "grants": "get", "graphql": "post"}
CHART_CONNECTIONS = 32


def _median(values: list[float]) -> float | None:
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None


def _find(runs: list[dict], **key) -> dict | None:
    for run in runs:
        if all(run.get(name) == value for name, value in key.items()) and "failure" not in run:
            return run
    return None


def _baseline(runs: list[dict], target: str, run: dict) -> dict | None:
    """The same cell (round, workload, connections) on another target. The upstream runs only
    get and post: for refused and first_seen its get run is the baseline."""
    found = _find(runs, target=target, round=run["round"], workload=run["workload"], connections=run["connections"])
    if found is None and target == UPSTREAM:
        found = _find(runs, target=target, round=run["round"], workload="get", connections=run["connections"])
    return found


def summarize(runs: list[dict], targets: list[str]) -> list[dict]:
    """One row per workload x connections x target: medians across rounds, and medians of the
    per-round ratios and latency differences."""
    rows = []
    cells = sorted({(run["workload"], run["connections"]) for run in runs},
                   key=lambda cell: (ORDER.index(cell[0]) if cell[0] in ORDER else 99, cell[1]))
    for workload, connections in cells:
        for target in targets:
            mine = [run for run in runs if (run["target"], run["workload"], run["connections"]) == (target, workload, connections)]
            if not mine:
                continue
            good = [run for run in mine if "failure" not in run]
            ratios_reference, ratios_upstream, ratios_plain, added_p50, added_p99 = [], [], [], [], []
            for run in good:
                plain = _find(runs, target=target, round=run["round"], workload=PLAIN_OF.get(workload), connections=connections)
                if plain and plain["rps"]:
                    ratios_plain.append(run["rps"] / plain["rps"])
                reference = _baseline(runs, REFERENCE, run)
                upstream = _baseline(runs, UPSTREAM, run)
                if reference and reference["rps"]:
                    ratios_reference.append(run["rps"] / reference["rps"])
                if upstream and upstream["rps"]:
                    ratios_upstream.append(run["rps"] / upstream["rps"])
                    added_p50.append(run["p50_ms"] - upstream["p50_ms"])
                    added_p99.append(run["p99_ms"] - upstream["p99_ms"])
            rows.append({
                "workload": workload, "connections": connections, "target": target, "rounds": len(good),
                "rps": _median([run["rps"] for run in good]),
                "ratio_to_haproxy_1t": _median(ratios_reference),
                "ratio_to_upstream": _median(ratios_upstream),
                "ratio_to_own_plain": _median(ratios_plain),  # the same target's plain REST request (PLAIN_OF) in the same round
                "p50_ms": _median([run["p50_ms"] for run in good]),
                "p99_ms": _median([run["p99_ms"] for run in good]),
                "added_p50_ms": _median(added_p50),
                "added_p99_ms": _median(added_p99),
                "cpu_s_per_10k": _median([run["cpu_s_per_10k"] for run in good]),
                "problems": sorted({problem for run in mine for problem in run.get("problems", [])}),
            })
    return rows


# gateway-uvicorn-1w with metrics on, and with JSON access logs: each against it, in the same round
PLAIN_GATEWAY = "gateway-uvicorn-1w"
OBSERVED_GATEWAYS = ["gateway-uvicorn-1w-metrics", "gateway-uvicorn-1w-jsonlog"]


def summarize_observability(runs: list[dict], targets: list[str]) -> list[dict]:
    """Per workload x connections, the throughput of each observed gateway as a ratio to the plain
    one in the same round (median across rounds)."""
    rows = []
    for row in summarize(runs, [target for target in OBSERVED_GATEWAYS if target in targets]):
        ratios = []
        for run in runs:
            if (run["target"], run["workload"], run["connections"]) != (row["target"], row["workload"], row["connections"]) or "failure" in run:
                continue
            plain = _baseline(runs, PLAIN_GATEWAY, run)
            if plain and plain["rps"]:
                ratios.append(run["rps"] / plain["rps"])
        rows.append({"workload": row["workload"], "connections": row["connections"], "target": row["target"], "rps": row["rps"],
                     f"ratio_to_{PLAIN_GATEWAY}": _median(ratios), "cpu_s_per_10k": row["cpu_s_per_10k"]})
    return rows


# decision mode beside what it stands in for, in the same round: the decision listener alone
# beside proxy mode (the same decision, without the upstream leg), and nginx + auth_request + the
# decision listener beside nginx proxy_pass (no checks) and HAProxy's jwt_verify
DECISION_PAIRS = [("decision-uvicorn-1w", PLAIN_GATEWAY), ("nginx-decision", "nginx-proxy"), ("nginx-decision", REFERENCE)]
DECISION_GOAL = 1.3  # the decision listener alone, x proxy mode's req/s


def summarize_decision(runs: list[dict], targets: list[str]) -> list[dict]:
    """Per workload x connections, each decision-mode target's throughput as a ratio to what it is
    compared with, in the same round (median across rounds)."""
    rows = []
    for target, against in DECISION_PAIRS:
        if target not in targets or against not in targets:
            continue
        for row in summarize(runs, [target]):
            ratios = []
            for run in runs:
                if (run["target"], run["workload"], run["connections"]) != (target, row["workload"], row["connections"]) or "failure" in run:
                    continue
                other = _baseline(runs, against, run)
                if other and other["rps"]:
                    ratios.append(run["rps"] / other["rps"])
            if ratios:
                rows.append({"workload": row["workload"], "connections": row["connections"], "target": target, "against": against,
                             "rps": row["rps"], "ratio": _median(ratios), "cpu_s_per_10k": row["cpu_s_per_10k"]})
    return rows


def summarize_routes(runs: list[dict]) -> list[dict]:
    counts = sorted({run["routes"] for run in runs})
    base = counts[0] if counts else None
    rows = []
    for count in counts:
        mine = [run for run in runs if run["routes"] == count and "failure" not in run]
        ratios = []
        for run in mine:
            reference = next((other for other in runs if other["routes"] == base and other["round"] == run["round"] and "failure" not in other), None)
            if reference and reference["rps"]:
                ratios.append(run["rps"] / reference["rps"])
        rows.append({"routes": count, "rps": _median([run["rps"] for run in mine]), "ratio_to_fewest": _median(ratios),
                     "p99_ms": _median([run["p99_ms"] for run in mine])})
    return rows


# --- Markdown ---

def _number(value: float | None, digits: int = 0, sign: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{value:+,.{digits}f}" if sign else f"{value:,.{digits}f}"
    return text


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """A Markdown table; the first `text_columns` columns left-aligned, the numbers right-aligned."""
    alignment = ["---" if index < text_columns else "--:" for index in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(alignment) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def throughput_table(rows: list[dict]) -> list[str]:
    header = ["workload", "conns", "target", "req/s", "× haproxy-1t", "× upstream", "× own REST", "+p50 ms", "+p99 ms", "CPU s/10k req", "problems"]
    body = [[row["workload"], str(row["connections"]), row["target"], _number(row["rps"]), _number(row["ratio_to_haproxy_1t"], 2),
             _number(row["ratio_to_upstream"], 2), _number(row.get("ratio_to_own_plain"), 2), _number(row["added_p50_ms"], 2, sign=True), _number(row["added_p99_ms"], 2, sign=True),
             _number(row["cpu_s_per_10k"], 3), "; ".join(row["problems"]) or ""] for row in rows]
    return _table(header, body, text_columns=3)


def _mib(kib: float | None) -> str:
    return "–" if kib is None else f"{kib / 1024:,.1f}"


def memory_tables(held: list[dict], uploads: list[dict], routes: list[dict], route_runs_meta: dict, settings: dict) -> list[str]:
    lines = [f"### Memory with {settings['held_connections']:,} open keep-alive connections", "",
             "Sum over the target's process tree (master and workers). VmHWM is each process's peak since it started, summed.", ""]
    lines += _table(["target", "idle RSS MiB", "RSS with conns MiB", "KiB per conn", "VmHWM MiB", "answered 200"], [
        [row["target"], _mib(row.get("idle_rss_kib")), _mib(row.get("rss_kib")),
         _number(row.get("kib_per_connection"), 1), _mib(row.get("hwm_kib")), f"{row.get('answered_200', 0)}/{row.get('opened', 0)}"]
        for row in held])
    size = settings["upload_bytes"] / 2**20
    lines += ["", f"### Memory while {settings['upload_clients']} clients each upload {size:g} MiB (64 KiB writes)", "",
              "The upstream nginx hands these uploads to bench/sink.py, which reads every byte before answering, so each "
              "target must stream the whole body.", ""]
    lines += _table(["target", "baseline RSS MiB", "peak RSS MiB", "growth MiB", "seconds", "MiB/s", "completed"], [
        [row["target"], _mib(row.get("baseline_rss_kib")), _mib(row.get("peak_rss_kib")), _mib(row.get("growth_kib")),
         _number(row.get("seconds"), 2), _number(row.get("mib_per_s"), 0), f"{row.get('completed', 0)}/{settings['upload_clients']}"
         + (f" ({row['failed'][0]})" if row.get("failed") else "")]
        for row in uploads])
    lines += ["", "### Gateway throughput by number of routes (gateway-uvicorn-1w, get, 32 connections)", ""]
    lines += _table(["routes", "req/s", "ratio to fewest", "p99 ms", "start-up s", "idle RSS MiB"], [
        [f"{row['routes']:,}", _number(row["rps"]), _number(row["ratio_to_fewest"], 2), _number(row["p99_ms"], 2),
         _number(route_runs_meta.get(row["routes"], {}).get("startup_s"), 1), _mib(route_runs_meta.get(row["routes"], {}).get("idle_rss_kib"))]
        for row in routes])
    return lines


def sanity_table(sanity: dict) -> list[str]:
    targets = list(sanity["answers"])
    header = ["case", "expected", *targets]
    body = [[case["name"], str(case["expected"]), *(_answer(sanity["answers"][target].get(case["name"], "–"), case["expected"]) for target in targets)]
            for case in sanity["cases"]]
    return _table(header, body)


def _answer(answer, expected: int) -> str:
    return f"**{answer}** (expected {expected})" if answer not in ("–", expected) else str(answer)


def markdown(results: dict) -> str:
    settings = results["settings"]
    machine = results["machine"]
    lines = [
        "# scope-gateway benchmark", "",
        f"{settings['rounds']} round(s) of {settings['duration']:g} s per run{' (smoke mode)' if settings['smoke'] else ''}; "
        f"req/s and CPU are medians across rounds; ratios and added latencies are medians of per-round "
        f"values (the machine is shared and noisy: compare within this run only). Upstream baseline for "
        f"refused and first_seen: the upstream's get run. CPU s/10k req: CPU seconds of the target's "
        f"processes (not the upstream's, not wrk's) per 10,000 requests.", "",
        "## Throughput and latency", "",
        *throughput_table(results["summary"]), "",
        f"## Metrics and access logs (x {PLAIN_GATEWAY} in the same round)", "",
        *_table(["workload", "conns", "target", "req/s", f"× {PLAIN_GATEWAY}", "CPU s/10k req"], [
            [row["workload"], str(row["connections"]), row["target"], _number(row["rps"]), _number(row[f"ratio_to_{PLAIN_GATEWAY}"], 3),
             _number(row["cpu_s_per_10k"], 3)] for row in results.get("observability", [])], text_columns=3), "",
        "## Decision mode (x the compared target in the same round)", "",
        f"The decision listener alone (`gateway serve --mode decision`, GET /forward-auth with X-Forwarded-Method/-Uri) "
        f"against proxy mode (goal: at least {DECISION_GOAL} x); nginx + auth_request + the decision listener (examples/nginx) "
        f"against nginx proxy_pass and HAProxy jwt_verify. CPU s/10k req of nginx-decision counts its decision listener too.", "",
        *_table(["workload", "conns", "target", "against", "req/s", "×", "CPU s/10k req"], [
            [row["workload"], str(row["connections"]), row["target"], row["against"], _number(row["rps"]), _number(row["ratio"], 3),
             _number(row["cpu_s_per_10k"], 3)] for row in results.get("decision", [])], text_columns=4), "",
        "## Memory and routes", "",
        *memory_tables(results["held_connections"], results["uploads"], results["routes_summary"], results["routes_meta"], settings), "",
        "## Sanity check (status codes before benchmarking)", "",
        *sanity_table(results["sanity"]), "",
        "## Machine", "",
        *[f"- {name}: {value}" for name, value in machine.items()], "",
    ]
    return "\n".join(lines)


# --- chart ---

def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in results["summary"] if row["connections"] == CHART_CONNECTIONS and row["workload"] in CHART_WORKLOADS]
    workloads = [workload for workload in CHART_WORKLOADS if any(row["workload"] == workload for row in rows)]
    targets = [target for target in results["targets"] if any(row["target"] == target for row in rows)]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(13, 9), sharex=True)
    width = 0.8 / max(1, len(targets))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, target in enumerate(targets):
        positions, rps, ratios = [], [], []
        for slot, workload in enumerate(workloads):
            row = next((row for row in rows if row["target"] == target and row["workload"] == workload), None)
            if row and row["rps"]:
                positions.append(slot + (index - (len(targets) - 1) / 2) * width)
                rps.append(row["rps"])
                ratios.append(row["ratio_to_haproxy_1t"] or 0)
        top.bar(positions, rps, width, label=target, color=colors[index % len(colors)])
        if target != UPSTREAM:  # the ceiling, many times higher: it would flatten every other bar
            bars = bottom.bar(positions, ratios, width, label=target, color=colors[index % len(colors)])
            bottom.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
    top.set_yscale("log")
    top.set_ylabel("requests/s (median, log scale)")
    top.set_title(f"Median requests/s at {CHART_CONNECTIONS} connections")
    top.legend(ncol=3, fontsize=8)
    bottom.axhline(1.0, color="black", linewidth=0.8)
    bottom.set_ylabel(f"ratio to {REFERENCE} (median of rounds)")
    bottom.set_xticks(range(len(workloads)), workloads)
    bottom.set_title(f"Throughput relative to {REFERENCE} in the same round (upstream left out)")
    bottom.set_ylim(0, max([1.2] + [bar.get_height() * 1.25 for bar in bottom.patches]))
    figure.text(0.01, 0.005, f"{results['machine'].get('cpu', '')}, {results['machine'].get('cpus', '')} CPUs; "
                f"{results['settings']['rounds']} round(s) x {results['settings']['duration']:g} s", fontsize=8)
    figure.tight_layout(rect=(0, 0.02, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(results: dict, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (out / "results.md").write_text(text)
    chart(results, out / "chart.png")
    return text
