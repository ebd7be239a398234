"""Running the gateway under an ASGI server: uvicorn (uvloop + httptools) by default, granian as
an option, one process or one per worker. Every way shares the same settings, and reloads the
same way (`gateway.reload`): SIGHUP to the server's main process, as to any of its workers, asks
every process to reload in place, where both servers would otherwise restart their workers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal, TypedDict

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from gateway import health, logs, metrics
from gateway.app import Gateway
from gateway.decisions import DecisionGateway
from gateway.errors import CodingNotImplemented, FramingInvalidRequest, HeadTooLarge, Refusal, VersionNotSupported, render
from gateway.loading import ConfigError, load_config
from gateway.loading.lint import secret_files
from gateway.reload import RunDir, ServingReloads, reload_on_sighup
from gateway.settings import Config
from gateway.types import Receive, Scope, Send

SERVERS = ("uvicorn", "granian")
logger = logging.getLogger("gateway.server")
_CONFIG_VARIABLE = "GATEWAY_CONFIG"
_RUN_DIR_VARIABLE = "GATEWAY_RUN_DIR"
_ACCESS_LOG_VARIABLE = "GATEWAY_ACCESS_LOG"
_MODE_VARIABLE = "GATEWAY_MODE"
# the most a request line and headers may take, under either server (about Envoy's 60 KiB)
MAX_HEAD_BYTES = 64 * 1024
# seconds the processes of `gateway serve` have to finish the requests in flight once it is told to
# stop, before what is left is killed (`--shutdown-timeout`): well within the 10 s Docker waits
# before its SIGKILL
SHUTDOWN_TIMEOUT = 5
# seconds a connection may take to send a request head (granian's header_read_timeout; nginx's
# client_header_timeout is 60): past it, the connection is closed
HEAD_TIMEOUT = 30


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a bound on the request head and the gateway's answers
    to heads it cannot parse.

    llhttp sets no bound, and uvicorn gathers the URL and every header in memory until the head
    ends: one client sending a 200 MiB header grew the gateway by 337 MiB. A head found larger
    than `MAX_HEAD_BYTES` when it ends, or still open after that many bytes, is answered 431 and
    the connection closed, as granian does. A head llhttp refuses gets the JSON answer of
    docs/requests.md (505 for an unknown version, 501 for a transfer coding, else 400) instead of
    uvicorn's plain-text 400. A head, or a new connection's first one, not complete within
    `head_timeout` seconds closes the connection: uvicorn waits for one for ever, so idle or
    trickling clients could hold every file descriptor.
    """

    head_timeout: float = HEAD_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0  # of the reads made while the head was pending before and after
        self._reading = 0  # the size of the read being parsed
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's own: a stream protocol is given a Transport
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _start_head_timer(self) -> None:
        # a timer only for a head that did not arrive in the read that began it: the usual one does
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._stop_head_timer()
        # counted exactly only when the reads could hold that much: the usual head costs nothing
        if self._head_bytes + self._reading > MAX_HEAD_BYTES and _head_size(self.url, self.headers) > MAX_HEAD_BYTES:
            raise _HeadRefused(_head_too_large())
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with the parser's errors answered by the gateway
        self._unset_keepalive_if_required()
        pending = self._in_head
        self._reading = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            self._refuse(exc.__context__.refusal if isinstance(exc.__context__, _HeadRefused) else _parser_refusal(str(exc)))
            return
        if self._in_head and not self.transport.is_closing():
            self._start_head_timer()
            # a head pending before this read and still after it: one read may pass the bound
            # unseen (the one where the head began, of which only part is the head); the next may not
            if pending:
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._refuse(_head_too_large())

    def _refuse(self, refusal: Refusal) -> None:
        status, headers, body = render(refusal)
        head = b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode("ascii"))
        head += b"".join(name + b": " + value + b"\r\n" for name, value in headers if name != b"connection")
        self.transport.write(head + b"connection: close\r\n\r\n" + body)
        self.transport.close()


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a head the gateway refuses."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.description)
        self.refusal = refusal


def _head_too_large() -> HeadTooLarge:
    return HeadTooLarge(f"the request line and headers are larger than {MAX_HEAD_BYTES // 1024} KiB")


def _head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    return len(url) + sum(len(name) + len(value) + 4 for name, value in headers)  # ': ' and CRLF


def _parser_refusal(message: str) -> Refusal:
    """The answer to a head llhttp refuses, by llhttp's reason."""
    if message == "Invalid HTTP version":
        return VersionNotSupported("the request line's HTTP version is not HTTP/1.1 or HTTP/1.0")
    if "Transfer-Encoding" in message and "Content-Length" not in message:
        return CodingNotImplemented(f"{message}: only 'chunked' alone is accepted")
    return FramingInvalidRequest(f"malformed request: {message}")


class UvicornOptions(TypedDict):
    """The gateway's options of `uvicorn.Config`, typed so that `**` checks them against its parameters."""

    lifespan: Literal["on"]
    proxy_headers: bool
    server_header: bool
    date_header: bool
    http: type[asyncio.Protocol]
    timeout_graceful_shutdown: int


def uvicorn_options(shutdown_timeout: int = SHUTDOWN_TIMEOUT) -> UvicornOptions:
    return {
        "lifespan": "on",
        # X-Forwarded-* are handled by the gateway itself, trusting only proxy.trusted_proxies
        "proxy_headers": False,
        # upstream Server and Date headers pass through unchanged, not doubled
        "server_header": False,
        "date_header": False,
        "http": BoundedHttpToolsProtocol,
        "timeout_graceful_shutdown": shutdown_timeout,
    }


class _FailedStart:
    """The app of a process whose config no longer loads (changed since `serve` checked it): it
    fails the server's start with the problems, and the server exits non-zero."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": self.reason})


def create_app() -> Gateway | _FailedStart:
    """The app factory each serving process calls."""
    mode = os.environ.get(_MODE_VARIABLE, "proxy")
    try:
        config = load_config(os.environ[_CONFIG_VARIABLE], mode)
    except ConfigError as error:
        return _FailedStart(f"the config does not load:\n{error}")
    # `run` names the metrics folder when the config asks for metrics
    directory = os.environ.get(metrics.DIRECTORY_VARIABLE)
    recorder = metrics.enable(Path(directory)) if directory else None
    kind = DecisionGateway if mode == "decision" else Gateway
    app = kind(config, metrics=recorder, access_log=os.environ.get(_ACCESS_LOG_VARIABLE) == "1")
    run_dir = RunDir(Path(os.environ[_RUN_DIR_VARIABLE])) if _RUN_DIR_VARIABLE in os.environ else None
    app.services.append(ServingReloads(app, run_dir))
    if run_dir is not None:
        reload_on_sighup(run_dir)
    # what is loaded by now lives as long as the process: frozen out of the collector's sight, it
    # is not walked by every full collection (under granian one ran about every second and took
    # 10-20 ms: most of the p99)
    gc.collect()
    gc.freeze()
    return app


def _serve_admin(
    config_path: str, log_level: str, log_format: str, run_dir: str, metrics_directory: str | None, listener: socket.socket, parent: int,
    shutdown_timeout: int,
) -> None:
    """The admin listener's own process: one for the gateway, whatever its server and workers
    (the grant store is shared, so any process may write it; the serving processes' metrics are
    files in `metrics_directory`). It serves on `listener`, bound by `gateway serve`, and stops
    when `parent` (that process) is gone, however it went."""
    import uvicorn

    from gateway.admin import AdminApp
    from gateway.grants.live import open_store

    config = load_config(config_path)
    assert config.admin.token_file is not None
    store = open_store(config.grants.store) if config.grants.store else None
    token = config.admin.token_file.read_text().strip()
    # SIGHUP is for the serving processes' main one; this process follows the run folder
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    app = AdminApp(config, store, token, RunDir(Path(run_dir)), Path(metrics_directory) if metrics_directory else None)
    server = uvicorn.Server(uvicorn.Config(
        app, log_level=log_level, lifespan="on", proxy_headers=False, server_header=False, access_log=False,
        log_config=logs.logging_config(log_level, log_format), timeout_graceful_shutdown=shutdown_timeout,
    ))
    threading.Thread(target=_exit_with, args=(parent, server), name="gateway-parent-watch", daemon=True).start()
    server.run(sockets=[listener])


def _exit_with(parent: int, server: Any) -> None:
    # an admin listener whose gateway is gone (even by SIGKILL) would answer for a stranger
    while os.getppid() == parent:
        time.sleep(0.5)
    server.should_exit = True


def _admin_listener(config: Config) -> socket.socket | None:
    """The admin listener's socket, bound here so that a port another process holds stops the
    gateway at once, never to be mistaken for its own listener; None when the config asks for none.

    :raises SystemExit: the port cannot be had.
    """
    if config.admin.listen is None:
        return None
    host, port = config.admin.listen
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
    try:
        listener.bind((host, port))
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise SystemExit(f"the admin listener cannot listen on {host}:{port} (admin.listen): {exc.strerror or exc}") from None
    return listener


def _start_admin(
    config_path: Path, config: Config, listener: socket.socket, log_level: str, log_format: str, run_dir: RunDir, metrics_directory: Path | None,
    children: list[multiprocessing.process.BaseProcess], shutdown_timeout: int,
) -> None:
    """The admin listener, started and answering, in `children`.

    :raises SystemExit: it could not start.
    """
    assert config.admin.listen is not None and config.admin.token_file is not None
    process = multiprocessing.get_context("spawn").Process(
        target=_serve_admin, name="gateway-admin", daemon=True,
        args=(str(config_path), log_level, log_format, str(run_dir.path), str(metrics_directory) if metrics_directory else None, listener, os.getpid(),
              shutdown_timeout),
    )
    children.append(process)
    process.start()
    listener.close()  # the child has its own copy
    token = config.admin.token_file.read_text().strip()
    deadline = time.monotonic() + 20
    while True:
        answering, reason = health.ask(config.admin.listen, token, 0.5)
        if answering:
            return
        if not process.is_alive() or time.monotonic() > deadline:
            raise SystemExit(f"the admin listener did not start: {reason}")
        time.sleep(0.05)


def _stop(children: list[multiprocessing.process.BaseProcess], timeout: int) -> None:
    """Stop `children` gracefully, and kill those still alive after `timeout` seconds."""
    for child in children:
        if child.is_alive():
            child.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        child.join(max(deadline - time.monotonic(), 0))
        if child.is_alive():
            child.kill()
            child.join()


class Stopped(Exception):
    """SIGTERM or SIGINT reached `gateway serve`: it stops, and stops every process it started."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_on_signals() -> None:
    # the handlers a server puts back when it has stopped: uvicorn then raises the signal again,
    # which by default would end this process before it stopped its children
    def stop(signum: int, _: Any) -> None:
        raise Stopped(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def run(
    config_path: Path, *, host: str, port: int, server: str = "uvicorn", workers: int = 1, log_level: str = "info", access_log: bool = False,
    log_format: str = "text", mode: str = "proxy", shutdown_timeout: int = SHUTDOWN_TIMEOUT,
) -> None:
    """Serve until stopped (SIGTERM or SIGINT), with the admin listener beside the proxy when the
    config has one (`mode` decision: the decision listener in place of the proxy, on the same host
    and port). The access log (the gateway's line per request, forwarded or refused) is off
    unless asked for, as in Envoy. Metrics are counted when the admin listener is on and
    `admin.metrics` is not false, in a folder private to this run. Once stopped, every process it
    started has ended (within `shutdown_timeout` seconds, else killed) and its folders are removed.

    The config is read from `config_path` as given, never with its links resolved: a Kubernetes
    ConfigMap updates by swapping a link, and the files behind the old one are deleted.
    """
    config_path = config_path.absolute()
    config = load_config(config_path, mode)
    os.environ[_MODE_VARIABLE] = mode
    for warning in secret_files(config):
        logger.warning("%s", warning)
    children: list[multiprocessing.process.BaseProcess] = []
    folders: list[Path] = []
    _stop_on_signals()
    try:
        run_dir = RunDir(Path(tempfile.mkdtemp(prefix="gateway-run-"))).create()
        folders.append(run_dir.path)
        os.environ[_RUN_DIR_VARIABLE] = str(run_dir.path)
        reload_on_sighup(run_dir)
        metrics_directory = None
        if config.admin.listen is not None and config.admin.metrics:
            metrics_directory = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
            folders.append(metrics_directory)
            os.environ[metrics.DIRECTORY_VARIABLE] = str(metrics_directory)
        else:
            os.environ.pop(metrics.DIRECTORY_VARIABLE, None)
        listener = _admin_listener(config)
        if listener is not None:
            _start_admin(config_path, config, listener, log_level, log_format, run_dir, metrics_directory, children, shutdown_timeout)
        _serve(config_path, host=host, port=port, server=server, workers=workers, log_level=log_level, access_log=access_log,
               log_format=log_format, shutdown_timeout=shutdown_timeout)
    except Stopped as stopped:
        logger.info("stopped by %s", stopped)
    finally:
        # stopping is bounded (`_stop`): a second Ctrl-C must not leave half of it undone
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
        _stop(children, shutdown_timeout)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def _serve(
    config_path: Path, *, host: str, port: int, server: str, workers: int, log_level: str, access_log: bool, log_format: str, shutdown_timeout: int,
) -> None:
    os.environ[_CONFIG_VARIABLE] = str(config_path)
    os.environ[_ACCESS_LOG_VARIABLE] = "1" if access_log else "0"
    # the server's own access log stays off: the gateway's line replaces it
    log_config = logs.logging_config(log_level, log_format, access_log)
    if server == "granian":
        from granian.constants import Interfaces
        from granian.http import HTTP1Settings

        _granian()(
            "gateway.server:create_app", factory=True, interface=Interfaces.ASGI, address=host, port=port,
            workers=workers, workers_kill_timeout=shutdown_timeout, log_level=log_level, log_access=False, log_dictconfig=log_config,
            # what granian reads ahead of the app per connection (default 408 KiB): 32 uploads
            # of 100 MiB grew RSS by 52 MiB with the default and by 9 MiB with this; it is also
            # granian's bound on a request head (431 above it)
            http1_settings=HTTP1Settings(max_buffer_size=MAX_HEAD_BYTES, header_read_timeout=HEAD_TIMEOUT * 1000),
        ).serve()
        return
    import uvicorn

    if workers == 1:
        uvicorn.run(create_app(), host=host, port=port, log_level=log_level, access_log=False, log_config=log_config, **uvicorn_options(shutdown_timeout))
        return
    # uvicorn.run's own path for several workers, with the supervisor below
    config = uvicorn.Config(
        "gateway.server:create_app", factory=True, host=host, port=port, workers=workers, log_level=log_level,
        access_log=False, log_config=log_config, **uvicorn_options(shutdown_timeout),
    )
    with contextlib.suppress(KeyboardInterrupt):
        _Workers(config, sockets=[config.bind_socket()]).run()


def _request_reload() -> None:
    RunDir(Path(os.environ[_RUN_DIR_VARIABLE])).request_reload()


class _Workers(Multiprocess):
    """uvicorn's supervisor of several workers, with SIGHUP asking them to reload instead of
    restarting them, and a worker that does not stop within the shutdown timeout killed (uvicorn
    waits for ever)."""

    def handle_hup(self) -> None:
        _request_reload()

    def join_all(self) -> None:
        deadline = time.monotonic() + (self.config.timeout_graceful_shutdown or SHUTDOWN_TIMEOUT)
        for worker in self.processes:
            worker.process.join(max(deadline - time.monotonic(), 0))
            if worker.process.is_alive():
                worker.kill()
                worker.join()


def _granian() -> type:
    """granian's server, with SIGHUP asking every worker to reload instead of restarting them."""
    from granian import Granian

    class Server(Granian):  # type: ignore[misc, valid-type]  # granian picks its server class at import: a variable to mypy
        def signal_handler_reload(self, *args: Any, **kwargs: Any) -> None:
            _request_reload()

    return Server
