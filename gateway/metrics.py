"""Metrics (docs/operating.md, "Metrics"): counted in each serving process, shown by the admin
listener's `/metrics` in Prometheus text, summed over every process.

A serving process counts in plain dicts and lists (`Recorder`), which costs about a tenth of a
prometheus-client metric in multiprocess mode (0.5 us a request against 5.8 us: that mode writes
an mmap'd file at every observation), and writes what it counted, as JSON, to its own file in a
folder private to the gateway (`GATEWAY_METRICS_DIR`, made by `gateway serve`) every second and
when it stops. The admin listener's process reads every file and builds the metric families
with prometheus-client (`Collector`), so `/metrics` is at most about a second behind.

    gateway_requests_total{api,method,route,decision,status}   every request, forwarded or refused
    gateway_request_duration_seconds                            histogram: request in to its answer's last byte sent
    gateway_upstream_duration_seconds                           histogram: request sent upstream to its answer's head
    gateway_token_cache_total{result}                           hit: verified before, recalled; miss: verified now (or found invalid)
    gateway_jwks_fetch_total{result}                            success, failure
    gateway_grant_store_errors_total                            a grant-store read that failed, or a request it could not serve (503)
    gateway_config_reload_total{result}                         success, failure (counted in each serving process)
    gateway_config_last_reload_success                          1, or 0 while a serving process's last reload failed

Counters of processes that stopped stay in the sums (a counter never goes down); the reload gauge
is read from processes still running.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger("gateway.metrics")

# seconds; a gateway adds well under a millisecond, an upstream may take up to proxy.read_timeout
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REQUEST_LABELS = ("api", "method", "route", "decision", "status")
FLUSH_INTERVAL = 1.0
DIRECTORY_VARIABLE = "GATEWAY_METRICS_DIR"


class Histogram:
    """Observations per bucket (the last one past every bound) and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


class Recorder:
    """One serving process's metrics: counted on the request's path, written to
    `directory/<pid>.json` by `flush`, every `FLUSH_INTERVAL` seconds once `start`ed."""

    __slots__ = ("directory", "requests", "request_duration", "upstream_duration", "token_cache", "jwks_fetch",
                 "grant_store_errors", "reloads", "last_reload", "_flusher")

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requests: dict[tuple[str, str, str, str, int], int] = {}
        self.request_duration = Histogram()
        self.upstream_duration = Histogram()
        self.token_cache = {"hit": 0, "miss": 0}
        self.jwks_fetch = {"success": 0, "failure": 0}
        self.grant_store_errors = 0
        self.reloads = {"success": 0, "failure": 0}
        # (1 or 0, when): the config this process started with loaded, or it would not serve
        self.last_reload = (1, time.time())
        self._flusher: asyncio.Task[None] | None = None

    def request(self, labels: tuple[str, str, str, str, int], seconds: float, upstream_seconds: float | None, cache: str | None) -> None:
        """One request, answered: its labels (api, method, route, decision, status), how long it
        took, how long its upstream took to answer (None: not forwarded) and its token's
        cache result (None: no token was looked up)."""
        requests = self.requests
        requests[labels] = requests.get(labels, 0) + 1
        self.request_duration.observe(seconds)
        if upstream_seconds is not None:
            self.upstream_duration.observe(upstream_seconds)
        if cache is not None:
            self.token_cache[cache] += 1

    def jwks_fetched(self, success: bool) -> None:
        self.jwks_fetch["success" if success else "failure"] += 1

    def grant_store_error(self) -> None:
        self.grant_store_errors += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "requests": [[*labels, count] for labels, count in self.requests.items()],
            "request_duration": [self.request_duration.counts, self.request_duration.sum],
            "upstream_duration": [self.upstream_duration.counts, self.upstream_duration.sum],
            "token_cache": self.token_cache,
            "jwks_fetch": self.jwks_fetch,
            "grant_store_errors": self.grant_store_errors,
            "reloads": self.reloads,
            "last_reload": self.last_reload,
        }

    def flush(self) -> None:
        """Write what was counted to this process's file, whole (a reader never sees half of it)."""
        path = self.directory / f"{os.getpid()}.json"
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(self.snapshot()))
        os.replace(partial, path)

    def start(self) -> None:
        """Flush every `FLUSH_INTERVAL` seconds from now on, in the running event loop."""
        self.flush()
        self._flusher = asyncio.ensure_future(self._flush_often())

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        self.flush()

    async def _flush_often(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                self.flush()
            except OSError as exc:  # a full disk loses a second of metrics, never a request
                logger.warning("metrics could not be written to %s: %s", self.directory, exc)


# this process's recorder, for what counts outside the app's parts (reloads: the key stores and
# the grant views are handed the app's recorder); None: metrics are off, and the functions below
# do nothing
_recorder: Recorder | None = None


def enable(directory: Path) -> Recorder:
    """Count this process's metrics into `directory` (the serving process calls it once)."""
    global _recorder
    _recorder = Recorder(directory)
    return _recorder


def disable() -> None:
    global _recorder
    _recorder = None


def reload_succeeded() -> None:
    """A reload loaded and swapped in: counted, and the last-reload gauge set to 1."""
    _reloaded("success", 1)


def reload_failed() -> None:
    """A reload did not load (the last good config serves on): counted, and the gauge set to 0."""
    _reloaded("failure", 0)


def _reloaded(result: str, value: int) -> None:
    if _recorder is not None:
        _recorder.reloads[result] += 1
        _recorder.last_reload = (value, time.time())


# --- the admin listener's side ----------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _snapshots(directory: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(directory.glob("*.json")):
        try:
            yield json.loads(path.read_text())
        except (OSError, ValueError) as exc:  # a file removed while read; never a half-written one
            logger.warning("metrics file %s could not be read: %s", path, exc)


class Collector:
    """A prometheus-client collector of every serving process's metrics in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        requests: dict[tuple[str, ...], int] = {}
        # per histogram: the count of each bucket, and the sum of seconds
        bucket_counts: dict[str, list[int]] = {"request_duration": [0] * (len(BUCKETS) + 1), "upstream_duration": [0] * (len(BUCKETS) + 1)}
        sums: dict[str, float] = {"request_duration": 0.0, "upstream_duration": 0.0}
        counters: dict[str, dict[str, int]] = {"token_cache": {}, "jwks_fetch": {}, "reloads": {}}
        grant_store_errors = 0
        last_reload: list[int] = []
        for snapshot in _snapshots(self.directory):
            for *labels, count in snapshot["requests"]:
                key = tuple(str(label) for label in labels)
                requests[key] = requests.get(key, 0) + count
            for name in sums:
                counts, seconds = snapshot[name]
                bucket_counts[name] = [a + b for a, b in zip(bucket_counts[name], counts)]
                sums[name] += seconds
            for name, by_result in counters.items():
                for result, count in snapshot[name].items():
                    by_result[result] = by_result.get(result, 0) + count
            grant_store_errors += snapshot["grant_store_errors"]
            if _alive(snapshot["pid"]):
                last_reload.append(snapshot["last_reload"][0])

        family = CounterMetricFamily("gateway_requests", "Requests answered, forwarded or refused.", labels=REQUEST_LABELS)
        for labels, count in sorted(requests.items()):
            family.add_metric(labels, count)
        yield family
        for name, help_text in (("request_duration", "Seconds from a request's arrival to the last byte of its answer."),
                                ("upstream_duration", "Seconds from a request sent upstream to the head of the upstream's answer.")):
            cumulative, buckets = 0, []
            for bound, count in zip((*(f"{bound:g}" for bound in BUCKETS), "+Inf"), bucket_counts[name]):
                cumulative += count
                buckets.append((bound, cumulative))
            yield HistogramMetricFamily(f"gateway_{name}_seconds", help_text, buckets=buckets, sum_value=sums[name])
        for name, metric, help_text in (
            ("token_cache", "gateway_token_cache", "Bearer tokens looked up in the verified-token cache, by result (hit, miss)."),
            ("jwks_fetch", "gateway_jwks_fetch", "JWKS fetches, by result (success, failure)."),
            ("reloads", "gateway_config_reload", "Config reloads in the serving processes, by result (success, failure)."),
        ):
            family = CounterMetricFamily(metric, help_text, labels=["result"])
            for result, count in sorted(counters[name].items()):
                family.add_metric([result], count)
            yield family
        yield CounterMetricFamily("gateway_grant_store_errors", "Grant-store reads that failed, and requests refused 503 for it.", value=grant_store_errors)
        if last_reload:
            yield GaugeMetricFamily("gateway_config_last_reload_success", "1 when every serving process's last config load succeeded, else 0.", value=min(last_reload))


def exposition(directory: Path) -> tuple[bytes, bytes]:
    """The `/metrics` body of `directory`'s processes and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(directory))
    return generate_latest(registry), CONTENT_TYPE_LATEST.encode("ascii")
