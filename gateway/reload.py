"""Reloading the config while serving (docs/operating.md, "Reloading").

A change to gateway.yaml, a route table or a key file, a SIGHUP, or `POST /reload` on the admin
listener loads the whole config again and swaps it in at once. A config that does not load (or
whose new key source yields no key) changes nothing: the last good one keeps serving, each
problem is logged as `file:line: message`, and the failure stays in the process's status until
a later reload succeeds.

Every process reloads by itself: each serving process (one per worker) and the admin listener
watch the same files. `gateway serve` keeps a run folder (`RunDir`) that ties them together:

    <run>/reload              the number of the last reload asked for; SIGHUP and POST /reload
                              raise it, and every process watching it reloads
    <run>/serving/<pid>.json  each serving process's status: the config it serves, its last
                              reload's outcome, its keys and grant store; /readyz reads them

A process watches what its config read, by the names it was given and every symbolic link on
the way (never resolved once and for all: a Kubernetes ConfigMap updates by swapping a link):
gateway.yaml, each table, schema, manifest, key, CA and token file, and the folders whose *.yaml
are all loaded, for a table added or removed. Nothing else in those folders counts: a log file
written beside gateway.yaml changes nothing and logs nothing. A watch follows a folder, not its
name, so it is set again after every reload and whenever a watched name names another folder.

Requests in flight keep the runtime they started with (`Gateway.swap`); what only an old runtime
used (an upstream pool whose settings changed, say) is closed once the last request holding that
runtime has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import stat
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import watchfiles

from gateway import metrics
from gateway.app import Gateway
from gateway.loading import ConfigError, load_config
from gateway.runtime import Runtime
from gateway.settings import Config
from gateway.times import rfc3339

logger = logging.getLogger("gateway.reload")

SUCCESS, FAILURE = "success", "failure"
# how often a serving process rewrites its status when its keys or grant store changed
_STATUS_INTERVAL = 1.0
# the longest a watch sleeps without a change: its first wake after being set looks for what
# changed while it was not yet set (milliseconds)
_CATCH_UP_MS = 500
# as the kernel's bound on symbolic links in one path name
_LINK_HOPS = 40


class ReloadFailed(Exception):
    """The reloaded config cannot serve (it loaded, but its new parts did not start)."""


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """One reload's result in one process."""

    result: str  # SUCCESS or FAILURE
    at: float  # when it ended (time.time())
    problems: tuple[str, ...] = ()  # `file:line: message` each, for a failure

    def document(self) -> dict[str, Any]:
        return {"result": self.result, "at": rfc3339(self.at), "problems": list(self.problems)}


class RunDir:
    """The folder the processes of one `gateway serve` share (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.trigger = path / "reload"
        self.serving = path / "serving"

    def create(self) -> RunDir:
        self.serving.mkdir(parents=True, exist_ok=True)
        return self

    def request_reload(self) -> int:
        """Ask every process to reload; returns the request's number."""
        number = self.requested() + 1
        _write_atomically(self.trigger, str(number).encode())
        return number

    def requested(self) -> int:
        try:
            return int(self.trigger.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def write_status(self, document: dict[str, Any]) -> None:
        _write_atomically(self.serving / f"{document['pid']}.json", json.dumps(document).encode())

    def remove_status(self, pid: int) -> None:
        (self.serving / f"{pid}.json").unlink(missing_ok=True)

    def statuses(self) -> list[dict[str, Any]]:
        """The status of every serving process still alive, by pid."""
        found = []
        for file in sorted(self.serving.glob("*.json")):
            try:
                document = json.loads(file.read_bytes())
                os.kill(document["pid"], 0)
            except ProcessLookupError:
                file.unlink(missing_ok=True)  # a worker that died: its server starts another
                continue
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being replaced right now, or not ours
            found.append(document)
        return found


def _write_atomically(path: Path, data: bytes) -> None:
    # readers see the old content or the new, never half of it
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def reload_on_sighup(run_dir: RunDir) -> None:
    """SIGHUP to this process asks every process of the gateway to reload (the main thread only:
    elsewhere the server's own process has the signal)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda *_: run_dir.request_reload())


def fingerprint(files: Iterable[Path]) -> str:
    """A digest of what `files` hold now (a folder: its *.yaml files), to tell a change from an
    event that changed nothing (an editor's swap file, a touch). A table found in a folder and
    then named by the config it loaded counts once: the reload it caused is not seen as a change."""
    entries = {entry for path in files for entry in (path.glob("*.yaml") if path.is_dir() else (path,))}
    digest = hashlib.sha256()
    for entry in sorted(entries):
        digest.update(str(entry).encode() + b"\0")
        try:
            digest.update(entry.read_bytes())
        except OSError:
            digest.update(b"\0(unreadable)")
    return digest.hexdigest()


def links(path: Path) -> list[Path]:
    """`path` (absolute), each symbolic link met on the way to what it names, and that file: the names whose
    change changes what reading `path` reads. A Kubernetes ConfigMap mounts `gateway.yaml ->
    ..data/gateway.yaml` and `..data -> ..2026_12_07_...`, and updates every file at once by
    renaming a new `..data` link over the old one."""
    found = [path]
    current, pending, hops = Path(path.anchor), list(path.parts[1:]), 0
    while pending:
        name = pending.pop(0)
        if name in (".", ""):
            continue
        if name == "..":
            current = current.parent
            continue
        candidate = current / name
        if not candidate.is_symlink() or hops == _LINK_HOPS:
            current = candidate
            continue
        hops += 1
        found.append(candidate)
        target = Path(os.readlink(candidate))
        if target.is_absolute():
            current = Path(target.anchor)
        pending[:0] = target.parts[1:] if target.is_absolute() else target.parts
    found.append(current)
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class WatchPlan:
    """What one watch of a config is set on: the folders holding what the config read, each by
    identity (a folder replaced under the same name needs a new watch), and the names in them
    that matter. Only those count: a log file written beside gateway.yaml is no change."""

    folders: tuple[Path, ...]
    identities: tuple[tuple[int, int], ...]
    names: frozenset[Path]  # the files (and links to them) the config read
    tables: frozenset[Path]  # folders whose *.yaml are all loaded: a table added or removed counts
    trigger: Path | None  # the run folder's reload requests

    @classmethod
    def of(cls, files: Iterable[Path], run_dir: RunDir | None) -> WatchPlan:
        names: set[Path] = set()
        tables: set[Path] = set()
        for file in files:
            chain = links(file)
            names.update(chain)
            if chain[-1].is_dir():
                tables.update((file, chain[-1]))
        folders = {name.parent for name in names} | tables
        # a folder replaced whole (`mv conf.new conf`) shows only in its own parent
        names |= folders
        folders |= {folder.parent for folder in folders}
        trigger = None
        if run_dir is not None:
            trigger = run_dir.trigger.absolute()
            folders.add(trigger.parent)
        watched, identities = [], []
        for folder in sorted(folders):
            try:
                found = folder.stat()
            except OSError:
                continue  # gone, or not yet there: its parent's watch sees it come
            if stat.S_ISDIR(found.st_mode):
                watched.append(folder)
                identities.append((found.st_dev, found.st_ino))
        return cls(tuple(watched), tuple(identities), frozenset(names), frozenset(tables), trigger)

    def relevant(self, _: watchfiles.Change, name: str) -> bool:
        path = Path(name)
        return path in self.names or path == self.trigger or (path.parent in self.tables and path.suffix == ".yaml")


class Reloader:
    """Keeps one process's config current. `apply` puts a loaded config to use, or raises
    `ReloadFailed`; `reload()` does one reload, and `start()` watches for the next ones.

    :param config: the config the process started with.
    :param apply: puts a loaded config to use in this process.
    :param run_dir: the run folder whose reload requests it follows; None: file changes only.
    :param reported: called after each reload (a serving process writes its status).
    :param mode: how the config is served (`load_config`'s `mode`).
    """

    def __init__(
        self, config: Config, apply: Callable[[Config], Awaitable[None]], *, run_dir: RunDir | None = None,
        reported: Callable[[], None] | None = None, mode: str = "proxy",
    ) -> None:
        self.source = config.source.absolute()
        self.mode = mode
        self.config = config
        self.apply = apply
        self.run_dir = run_dir
        self.reported = reported or (lambda: None)
        self.last: ReloadOutcome | None = None  # None: no reload yet
        self.counts = {SUCCESS: 0, FAILURE: 0}
        self.handled = run_dir.requested() if run_dir else 0  # the last reload request answered
        self._broken: tuple[Path, ...] = ()  # the files a failed reload's problems name
        self.fingerprint = fingerprint(self._files())
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._rewatch = asyncio.Event()

    def _files(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(path.absolute() for path in (self.source, *self.config.files, *self._broken)))

    async def start(self) -> None:
        # watchfiles logs a debug line for every event of a watched folder, wanted or not: a log
        # file written beside gateway.yaml would log a line per line it writes. The reloader
        # logs what it does itself.
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        self._watcher = asyncio.ensure_future(self._watch())

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    async def reload(self, request: int = 0) -> ReloadOutcome:
        """Load the whole config and put it to use; on any problem keep the current one.

        :param request: the run folder's request this answers (0: a file change).
        """
        async with self._lock:
            self.handled = max(self.handled, request)
            self.fingerprint = await asyncio.to_thread(fingerprint, self._files())
            try:
                # in a thread: a large table takes a while to compile, and requests go on meanwhile
                config = await asyncio.to_thread(load_config, self.source, self.mode)
                await self.apply(config)
            except ConfigError as error:
                problems = tuple(map(str, error.problems))
                self._broken = tuple(Path(problem.file) for problem in error.problems)
            except ReloadFailed as failed:
                problems = (str(failed),)
            except Exception as exc:  # whatever it is, the last good config serves on
                logger.exception("config reload from %s failed unexpectedly", self.source)
                problems = (f"{self.source}: the reload failed: {exc!r}",)
            else:
                self.config, self._broken, problems = config, (), ()
            if problems:
                logger.error("config reload failed; still serving the last good config:")
                for problem in problems:
                    logger.error("%s", problem)
                outcome = ReloadOutcome(FAILURE, time.time(), problems)
            else:
                logger.info("config reloaded from %s: %d route tables, %d routes", self.source, len(self.config.tables.apis), len(self.config.tables.routes))
                outcome = ReloadOutcome(SUCCESS, time.time())
            self.last = outcome
            self.counts[outcome.result] += 1
            self._rewatch.set()  # what the new config read may be other folders than those watched
        if outcome.result == SUCCESS:
            metrics.reload_succeeded()
        else:
            metrics.reload_failed()
        self.reported()
        return outcome

    async def _watch(self) -> None:
        while True:
            try:
                await self._watch_files()
            except FileNotFoundError:
                await asyncio.sleep(0.1)  # a folder went away while the watch was being set: plan again
            except Exception:
                logger.exception("watching the config's files failed; trying again in 5 s (SIGHUP and POST /reload still reload)")
                await asyncio.sleep(5)

    async def _watch_files(self) -> None:
        """Reload on each change of what the config read, or request. A watch follows the folder
        it was set on, not its name, so it is set again after every reload and whenever a watched
        name names another folder (`mv routes.new routes`, a ConfigMap's `..data` swapped)."""
        while True:
            self._rewatch.clear()
            plan = await asyncio.to_thread(WatchPlan.of, self._files(), self.run_dir)
            caught_up = False
            async for changes in watchfiles.awatch(
                *plan.folders, watch_filter=plan.relevant, recursive=False, stop_event=self._rewatch, step=50,
                rust_timeout=_CATCH_UP_MS, yield_on_timeout=True, ignore_permission_denied=True,
            ):
                if changes:
                    logger.debug("changed: %s", ", ".join(sorted({name for _, name in changes})))
                elif caught_up:
                    continue
                # the first wake after the watch was set also sees what changed before it was
                caught_up = True
                requested = self.run_dir.requested() if self.run_dir is not None else 0
                if requested > self.handled:
                    await self.reload(requested)
                elif await asyncio.to_thread(fingerprint, self._files()) != self.fingerprint:
                    await self.reload()
                elif await asyncio.to_thread(WatchPlan.of, self._files(), self.run_dir) != plan:
                    self._rewatch.set()


class ServingReloads:
    """The reloads of one serving process: the `Reloader` of its `Gateway`, the status file /readyz
    reads, and the closing of what an old runtime alone used once no request holds it."""

    def __init__(self, app: Gateway, run_dir: RunDir | None = None) -> None:
        self.app = app
        self.run_dir = run_dir
        self.reloader = Reloader(app.runtime.config, self._apply, run_dir=run_dir, reported=self.report, mode=app.mode)
        self._retiring: dict[int, tuple[Any, ...]] = {}  # the parts of old runtimes still in use
        self._closing: set[asyncio.Task[None]] = set()
        self._written: dict[str, Any] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the one it serves in, once started

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.reloader.start()
        if self.run_dir is not None:
            self.report()
            self._status_task = asyncio.ensure_future(self._keep_status())

    async def aclose(self) -> None:
        await self.reloader.aclose()
        if self._status_task is not None:
            self._status_task.cancel()
        if self.run_dir is not None:
            self.run_dir.remove_status(os.getpid())

    async def _apply(self, config: Config) -> None:
        current = self.app.runtime
        runtime = current.successor(config)
        try:
            await runtime.start(previous=current)
        except Exception as exc:
            await runtime.aclose(keep=current.parts)
            raise ReloadFailed(f"{config.source}: the gateway cannot start with it: {exc}") from None
        if runtime.keys is not current.keys and config.tables.needs_tokens() and not runtime.keys.keys.keys:
            await runtime.aclose(keep=current.parts)
            raise ReloadFailed(f"{config.source}: tokens: no usable key ({runtime.keys.last_error or 'none configured'})")
        self._retire(self.app.swap(runtime))

    def _retire(self, previous: Runtime) -> None:
        self._retiring[id(previous)] = previous.parts
        # called as soon as the last request holding `previous` lets go of it (at once if none)
        weakref.finalize(previous, self._released, id(previous)).atexit = False

    def _released(self, key: int) -> None:
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):  # the loop has stopped: the process is ending
            self.loop.call_soon_threadsafe(self._close_unused, key)

    def _close_unused(self, key: int) -> None:
        parts = self._retiring.pop(key)
        in_use = (*self.app.runtime.parts, *(part for kept in self._retiring.values() for part in kept))
        unused = [part for part in parts if not any(part is other for other in in_use)]
        for part in unused:
            task = asyncio.ensure_future(part.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def status(self) -> dict[str, Any]:
        """What /readyz reports of this process."""
        runtime = self.app.runtime
        grants = runtime.grants
        reloader = self.reloader
        return {
            "pid": os.getpid(),
            "config": str(reloader.source),
            "fingerprint": reloader.fingerprint[:12],
            "request": reloader.handled,
            "reload": None if reloader.last is None else reloader.last.document(),
            "reloads": dict(reloader.counts),
            "tables": sorted(api.name for api in runtime.tables.apis),
            "needs_keys": runtime.tables.needs_tokens(),
            "keys": len(runtime.keys.keys.keys),
            "keys_error": runtime.keys.last_error,
            "grant_store": "none configured" if grants is None else ("reachable" if grants.error is None else f"unreadable: {grants.error}"),
        }

    def report(self) -> None:
        if self.run_dir is None:
            return
        document = self.status()
        if document != self._written:
            self.run_dir.write_status(document)
            self._written = document

    async def _keep_status(self) -> None:
        # keys and the grant store change without a reload (a JWKS refresh, a store that stops
        # answering): /readyz sees them within a second
        while True:
            await asyncio.sleep(_STATUS_INTERVAL)
            self.report()
