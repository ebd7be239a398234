"""The `gateway` command as a user runs it: the installed console script in a subprocess for the
entry point, serving, signals and exit codes; the commands that only print, in process (`cli`)."""

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.cli import main
from tests.processes import GATEWAY, run, serving
from tests.processes import wait_for as _wait_for
from tests.support import EndlessUpstream, cli, mint, write_config


def test_check_prints_a_summary_and_exits_0(tmp_path: Path) -> None:
    result = run("check", "--config", str(write_config(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    # the test table's special webhook beside GET .../webhooks/{webhookId} is no warning: each takes its own paths
    (summary,) = result.stdout.splitlines()
    assert re.fullmatch(r"OK: 1 route tables, 9 routes \(payments: 9\) from .*gateway.yaml", summary)


def test_check_defaults_to_gateway_yaml_in_the_current_folder(tmp_path: Path) -> None:
    write_config(tmp_path)
    assert cli("check", cwd=tmp_path).returncode == 0


def test_check_lists_every_problem_as_file_line_message_and_exits_1(tmp_path: Path) -> None:
    config = write_config(tmp_path, table="name: t\nupstream: http://x\nroutes:\n  FETCH /a: s\n  GET /b: [[]]\n")
    result = cli("check", "--config", str(config))
    assert result.returncode == 1
    table = tmp_path / "routes" / "payments.yaml"
    assert result.stdout.splitlines() == [
        f"{table}:4: FETCH /a: unknown method 'FETCH' (expected one of: DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT)",
        f"{table}:5: GET /b: an all-of list must hold at least one scope",
    ]


def test_explain_shows_route_requirement_and_a_forward(tmp_path: Path) -> None:
    result = cli("explain", "--config", str(write_config(tmp_path)), "GET", "/api/merchants/M1/webhooks?x=1", "--scopes", "psp.webhook:write")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "route:     GET /merchants/{merchantId}/webhooks  (table payments, " in result.stdout
    assert "params:    merchantId=M1" in result.stdout
    assert "requires:  psp.webhook:read" in result.stdout
    assert "step 5, implications: psp.webhook:read (implied by the catalog of payments)" in result.stdout
    assert "decision:  forward to http://upstream.test:8080/v3/merchants/M1/webhooks?x=1" in result.stdout


@pytest.mark.parametrize(("args", "decision"), [
    (["POST", "/api/merchants/M1/webhooks", "--scopes", "psp.webhook:read"], "decision:  403 forbidden: POST /merchants/{merchantId}/webhooks requires psp.webhook:write"),
    (["GET", "/api/merchants/M1/webhooks"], "decision:  401 unauthorized"),
    (["GET", "/api/nowhere", "--scopes", "a"], "decision:  404 not_found: no route for GET /api/nowhere"),
    (["GET", "/api/merchants/%2e%2e/webhooks"], "decision:  400 invalid_request"),
    (["GET", "/api/merchants/M1/webhooks", "--token", "x.y.z"], "decision:  401 invalid_token: malformed token"),
])
def test_explain_says_why_a_request_is_refused_and_exits_1(tmp_path: Path, args: list[str], decision: str) -> None:
    result = cli("explain", "--config", str(write_config(tmp_path)), *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert decision in result.stdout


def test_explain_verifies_a_real_token(tmp_path: Path) -> None:
    result = cli("explain", "--config", str(write_config(tmp_path)), "GET", "/api/merchants/M1/webhooks", "--token", mint("psp.webhook:read"))
    assert result.returncode == 0, result.stdout
    assert "token:     valid; sub=user-1 client=client-1" in result.stdout
    assert "scopes:    \"psp.webhook:read\", from claim 'scope' (tokens.scope_claims)" in result.stdout
    expired = cli("explain", "--config", str(write_config(tmp_path)), "GET", "/api/merchants/M1/webhooks", "--token", mint(lifetime=-3600))
    assert expired.returncode == 1 and "401 invalid_token: token expired at" in expired.stdout


def test_help_explains_each_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("serve", "check", "explain", "demo"):
        assert command in result.stdout
    assert "--scopes" in run("explain", "--help").stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_runs_the_gateway_from_its_config(tmp_path: Path) -> None:
    with serving(tmp_path) as (base, upstream):
        allowed = httpx.get(f"{base}/api/merchants/M1/webhooks", headers={"Authorization": f"Bearer {mint()}", "X-Forwarded-For": "6.6.6.6"})
        assert allowed.status_code == 200
        assert "server" not in allowed.headers
        assert upstream.received[0].header(b"x-forwarded-for") == [b"127.0.0.1"]
        assert httpx.get(f"{base}/api/merchants/M1/webhooks").status_code == 401


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_serve_writes_a_line_per_request_only_when_asked(tmp_path: Path, server: str) -> None:
    quiet: list[str] = []
    with serving(tmp_path, "--server", server, output=quiet) as (base, _):
        assert httpx.get(f"{base}/api/merchants/M1/webhooks", headers={"Authorization": f"Bearer {mint()}"}).status_code == 200
        assert httpx.get(f"{base}/api/merchants/M1/secrets").status_code == 404
    assert "/api/merchants/M1" not in quiet[0]
    logged: list[str] = []
    with serving(tmp_path, "--server", server, "--access-log", "--log-level", "debug", output=logged) as (base, _):
        assert httpx.get(f"{base}/api/merchants/M1/webhooks", headers={"Authorization": f"Bearer {mint()}"}).status_code == 200
        assert httpx.get(f"{base}/api/merchants/M1/secrets").status_code == 404
    # the gateway's line, not the server's: refused requests too, with the decision and its reason
    assert "INFO gateway.access: GET /api/merchants/M1/webhooks 200 request_id=" in logged[0]
    assert "decision=forward reason=forwarded status=200" in logged[0]
    assert "route=/merchants/{merchantId}/webhooks" in logged[0]
    assert "INFO gateway.access: GET /api/merchants/M1/secrets 404 " in logged[0] and "decision=refuse reason=not_found" in logged[0]
    assert "GET /api/merchants/M1/secrets refused: 404 not_found: " in logged[0]
    assert "HTTP/1.1" not in logged[0]  # no access line of the server's own


def test_serve_with_several_workers(tmp_path: Path) -> None:
    with serving(tmp_path, "--workers", "2") as (base, upstream):
        for _ in range(4):
            assert httpx.get(f"{base}/api/merchants/M1/webhooks", headers={"Authorization": f"Bearer {mint()}"}).status_code == 200
            assert httpx.get(f"{base}/api/merchants/M1/webhooks").status_code == 401
        assert len(upstream.received) == 4


def test_a_serving_process_keeps_what_it_loaded_out_of_full_collections(tmp_path: Path) -> None:
    # under granian a full collection walked every loaded object about once a second, 10-20 ms each
    probe = (
        "import gc; from gateway.server import create_app; create_app(); "
        "print(gc.get_freeze_count(), len(gc.get_objects()))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True,
                          env={**os.environ, "GATEWAY_CONFIG": str(write_config(tmp_path))})
    frozen, walked = map(int, done.stdout.split())
    assert frozen > 10_000 and walked < frozen / 10, (frozen, walked)


def test_serve_refuses_to_start_on_a_broken_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, table="name: t\nupstream: http://x\nroutes:\n  GET /a/{: s\n")
    result = run("serve", "--config", str(config), "--port", str(_free_port()))
    assert result.returncode == 1 and "payments.yaml:4:" in result.stdout


def test_the_demo_serves_an_allowed_a_forbidden_and_a_not_found_call() -> None:
    port = _free_port()
    process = subprocess.Popen([GATEWAY, "demo", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_for(port, process)
        output = ""
        assert process.stdout is not None
        while "Ctrl-C" not in output:
            output += process.stdout.readline()
        read = re.search(r"READ=(\S+)", output).group(1)
        commands = [line.strip() for line in output.splitlines() if line.strip().startswith("curl")]
        assert len(commands) >= 5
        webhooks = f"http://127.0.0.1:{port}/adyen/management/merchants/M123/webhooks"
        auth = {"Authorization": f"Bearer {read}"}
        echoed = httpx.get(webhooks, headers=auth)
        assert echoed.status_code == 200 and echoed.json()["headers"]["x-auth-scopes"] == "psp.webhook:read"
        assert httpx.post(webhooks, headers=auth, json={}).status_code == 403
        assert httpx.get(f"http://127.0.0.1:{port}/adyen/management/merchants/M123/apiCredentials", headers=auth).status_code == 404
        # the scope rules' answers, one printed curl each
        tokens = dict(re.findall(r"(BANK|BOTH)=(\S+)", output))
        bank, both = ({"Authorization": f"Bearer {tokens[name]}"} for name in ("BANK", "BOTH"))
        base = f"http://127.0.0.1:{port}/bank"
        alias = httpx.get(f"{base}/entities", headers=bank)
        assert alias.status_code == 200 and "entity_read" in alias.json()["headers"]["x-auth-scopes"].split()
        assert httpx.get(f"{base}/transactions", headers=both).json()["error"] == "invalid_scope"
        step_up = httpx.post(f"{base}/currency-conversions", headers=bank)
        assert step_up.status_code == 401 and 'acr_values="sms"' in step_up.headers["www-authenticate"]
        assert httpx.get(f"{base}/users/bob@demo/balance", headers=bank).status_code == 404
        assert httpx.get(f"{base}/users/ana@demo/balance", headers=bank).status_code == 200
        for path in ("/bank/entities", "/bank/transactions", "/bank/currency-conversions", "/bank/users/bob@demo/balance"):
            assert any(path in command for command in commands), path
        # the live grant: refused, the printed `gateway grants add`, then forwarded
        details = f"{base}/accounts/details"
        refused = httpx.get(details, headers=bank)
        assert refused.status_code == 403 and "client grant of accounts_details:read" in refused.json()["error_description"]
        add = next(line.strip() for line in output.splitlines() if line.strip().startswith("gateway grants add"))
        assert subprocess.run([GATEWAY, *add.split()[1:]], capture_output=True, timeout=60).returncode == 0
        deadline = time.monotonic() + 10  # seen within the store's refresh
        while (allowed := httpx.get(details, headers=bank)).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert allowed.status_code == 200
        # the printed mint command signs with the demo's key for its config: a write token creates a webhook
        mint = next(line.strip() for line in output.splitlines() if line.strip().startswith("gateway token mint"))
        minted = subprocess.run([GATEWAY, *shlex.split(mint)[1:]], capture_output=True, text=True, timeout=60, check=False)
        assert minted.returncode == 0, minted.stderr
        assert httpx.post(webhooks, headers={"Authorization": f"Bearer {minted.stdout.strip()}"}, json={}).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=10)
    # the demo's folder, named in what it printed, outlives it with its key
    folder = Path(re.search(r"Config, tables and keys: (\S+)", output).group(1))
    assert (folder / "keys" / "private.pem").is_file() and (folder / "gateway.yaml").is_file()
    shutil.rmtree(folder)


RULES_TABLE = """\
name: bank
upstream: http://bank.test
prefix: /bank
scopes:
  entity_read:
    aliases: [3f95524e-70aa-4663-8548-763583e08909]
  email:
    suffixes: [optional]
  convert_currency:
    step_up: {acr: [sms], max_age: 300}
  transactions:read:all:
  transactions:read:in:
  transactions:write:
    requires: [transactions:read:all, transactions:read:in]
  user:create:
    grant_types: [client_credentials]
  id:{bank_id}:
  id:all:
rules:
  exclusive:
    - ["id:{bank_id}", id:all]
    - [transactions:read:all, transactions:read:in]
routes:
  GET /entities: entity_read
  POST /convert: convert_currency
  GET /users/{userId}: {scopes: email, user: userId}
"""


def test_explain_shows_each_step_of_the_effective_scopes(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, table=RULES_TABLE))
    result = cli("explain", "--config", config, "GET", "/bank/entities", "--scopes", "3f95524e-70aa-4663-8548-763583e08909 email_optional openid")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "step 1, aliases and forms:\n           3f95524e-70aa-4663-8548-763583e08909 -> entity_read (alias)\n" in result.stdout
    assert "           email_optional -> email, its optional form\n" in result.stdout
    assert "           openid: not in the catalog (ignored)\n" in result.stdout
    assert "step 2, rules: none broken" in result.stdout
    assert "effective: email entity_read" in result.stdout

    refused = cli("explain", "--config", config, "GET", "/bank/entities", "--scopes", "id:B1 id:all")
    assert refused.returncode == 1
    assert "step 2, rules: broken: at most one of id:{bank_id}, id:all may be held at once; the token holds id:B1 and id:all" in refused.stdout
    assert 'decision:  403 invalid_scope' in refused.stdout and 'error="invalid_scope"' in refused.stdout

    step_up = cli("explain", "--config", config, "POST", "/bank/convert", "--scopes", "convert_currency", "--claims", '{"sub": "u1", "acr": "pwd"}')
    assert step_up.returncode == 1
    assert "step 4, step-up:\n           convert_currency is pending: it counts only after an authentication with acr sms within 300 s" in step_up.stdout
    assert 'acr_values="sms", max_age="300"' in step_up.stdout

    other_user = cli("explain", "--config", config, "GET", "/bank/users/u2", "--scopes", "email", "--claims", '{"sub": "u1", "client_id": "c1"}')
    assert other_user.returncode == 1
    assert "user:      the route acts on user 'u2' (parameter userId); the token's subject is 'u1'" in other_user.stdout
    assert "decision:  404 not_found" in other_user.stdout


@pytest.mark.parametrize(("args", "code", "lines"), [
    (["transactions:write transactions:read:in"], 0, ["valid: transactions:read:in transactions:write"]),
    (["3f95524e-70aa-4663-8548-763583e08909 email_optional"], 0, ["valid: email entity_read"]),
    (["transactions:write"], 1, ["invalid_scope: transactions:write is held only with one of transactions:read:all, transactions:read:in, and the token holds none"]),
    (["id:B1 id:all openid"], 1, ["invalid_scope: at most one of id:{bank_id}, id:all may be held at once; the token holds id:B1 and id:all",
                                   "ignored: openid (not in the catalog of bank, which ignores unknown scopes)"]),
    (["email_offline"], 1, ["invalid_scope: email_offline: email does not offer the offline suffix (offered: _optional)"]),
    (["user:create"], 1, ["invalid_scope: user:create is only for the client_credentials grant, not authorization_code"]),
    (["--grant-type", "client-credentials", "user:create"], 0, ["valid: user:create"]),
    (["convert_currency"], 1, ["invalid_scope: convert_currency is a step-up scope: it is granted only when a token is refreshed after the user confirms it, not at token"]),
    (["--stage", "refresh", "convert_currency"], 0, ["valid: convert_currency"]),
])
def test_scopes_validate_applies_the_catalog_for_an_authorization_server(tmp_path: Path, args: list[str], code: int, lines: list[str]) -> None:
    result = cli("scopes", "validate", "--config", str(write_config(tmp_path, table=RULES_TABLE)), "--api", "bank", *args)
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stdout.splitlines() == lines


def test_scopes_validate_names_an_unknown_api(tmp_path: Path) -> None:
    result = cli("scopes", "validate", "--config", str(write_config(tmp_path, table=RULES_TABLE)), "--api", "other", "a")
    assert result.returncode == 2 and "no route table is named 'other' (tables: bank)" in result.stdout


def test_the_package_exposes_the_same_check(tmp_path: Path) -> None:
    from gateway import load_config, validate_scopes

    config = load_config(write_config(tmp_path, table=RULES_TABLE))
    assert validate_scopes(config, "bank", ["transactions:read:in", "transactions:write"]).valid
    check = validate_scopes(config, "bank", "transactions:read:in transactions:read:all", grant_type="authorization_code")
    assert not check.valid and "at most one of" in check.problems[0]


COMMANDS_THAT_READ_A_CONFIG = [
    ["serve"], ["check"], ["check", "--strict"], ["health"], ["explain", "GET", "/x"], ["scopes", "validate", "--api", "a", "s"],
    ["grants", "add", "--api", "a", "--client", "c", "s"], ["grants", "revoke", "--api", "a", "--client", "c", "s"],
    ["grants", "fulfil", "--api", "a", "--subject", "u", "s"], ["grants", "unfulfil", "--api", "a", "--subject", "u", "s"],
    ["grants", "list"], ["test", "cases.yaml"],
]


@pytest.mark.parametrize("command", COMMANDS_THAT_READ_A_CONFIG, ids=" ".join)
@pytest.mark.parametrize("config", [None, "elsewhere/gateway.yaml"])
def test_every_command_says_the_same_when_there_is_no_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str], config: str | None,
) -> None:
    monkeypatch.chdir(tmp_path)
    status = main([*command, *([] if config is None else ["--config", config])])
    out, err = capsys.readouterr()
    assert (status, out) == (2, "")
    where = f"no gateway.yaml in {tmp_path}" if config is None else f"{config}: no such file"
    assert err.startswith(f"{where}: give the gateway's config with --config FILE, or run `gateway demo`")


def test_mint_with_no_config_here_and_none_given_is_no_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["keys", "init"]) == 0
    assert main(["token", "mint", "--key", "keys/private.pem"]) == 0


# --- stopping: every process `serve` started ends with it, and its folders go ----------------------


def descendants(pid: int) -> set[int]:
    """The processes `pid` started, and theirs, read from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    pending = [pid]
    while pending:
        children = parents.get(pending.pop(), [])
        found.update(children)
        pending.extend(children)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie has ended; only its parent has not asked yet
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    return False


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def serve_with_admin(
    tmp_path: Path, *options: str, upstream: str = "http://upstream.test", token_mode: int = 0o600,
) -> Iterator[tuple[subprocess.Popen[str], int, int, Path]]:
    """`gateway serve` with its admin listener, its temporary folders in a folder of the test's;
    yields the process, the proxy's and the admin listener's ports, and that folder."""
    from tests.support import with_admin

    port, admin_port = _free_port(), _free_port()
    config = with_admin(write_config(tmp_path, upstream=upstream), admin_port)
    (tmp_path / "admin.token").chmod(token_mode)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    process = subprocess.Popen([GATEWAY, "serve", "--config", str(config), "--port", str(port), *options],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TMPDIR": str(temporary)})
    try:
        _wait_for(port, process)
        assert cli("health", "--config", str(config)).returncode == 0
        yield process, port, admin_port, temporary
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=15)


# every pair of values of two axes once (server x workers, server x signal, workers x signal): the
# four cases of the eight that prove every way `serve` runs stops on either signal
@pytest.mark.parametrize(("server", "workers", "signum"), [
    ("uvicorn", 1, signal.SIGTERM), ("uvicorn", 2, signal.SIGINT), ("granian", 1, signal.SIGINT), ("granian", 2, signal.SIGTERM),
], ids=["uvicorn-1-SIGTERM", "uvicorn-2-SIGINT", "granian-1-SIGINT", "granian-2-SIGTERM"])
def test_a_stopped_serve_leaves_no_process_no_listener_and_no_folder(tmp_path: Path, server: str, workers: int, signum: int) -> None:
    from gateway.server import SHUTDOWN_TIMEOUT

    with serve_with_admin(tmp_path, "--server", server, "--workers", str(workers)) as (process, port, admin_port, temporary):
        children = descendants(process.pid)
        assert len(children) >= 1 + (workers if server == "granian" or workers > 1 else 0), children  # the admin listener, the workers
        assert {path.name.split("-")[1] for path in temporary.iterdir()} == {"run", "metrics"}
        process.send_signal(signum)
        started = time.monotonic()
        output = process.communicate(timeout=SHUTDOWN_TIMEOUT + 10)[0]
        assert process.returncode == 0, output
        assert "admin.token_file" not in output  # mode 0600: no warning at start
        deadline = started + SHUTDOWN_TIMEOUT + 2
        while any(alive(child) for child in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [child for child in children if alive(child)] == [], output
        assert not answers(admin_port) and not answers(port)
        assert list(temporary.iterdir()) == [], output


# the default timeout once, and `--shutdown-timeout` (1 s: 4 s less to wait) under the other server
@pytest.mark.parametrize(("server", "workers", "timeout"), [("uvicorn", 1, None), ("granian", 2, 1)])
def test_a_request_that_never_ends_holds_a_stop_no_longer_than_the_shutdown_timeout(
    tmp_path: Path, server: str, workers: int, timeout: int | None,
) -> None:
    from gateway.server import SHUTDOWN_TIMEOUT

    options = ("--shutdown-timeout", str(timeout)) if timeout else ()
    timeout = timeout or SHUTDOWN_TIMEOUT
    upstream = EndlessUpstream()
    events: list[str] = []

    def listen(port: int) -> None:
        with contextlib.suppress(httpx.HTTPError), httpx.stream("POST", f"http://127.0.0.1:{port}/api/echo", timeout=30) as answer:
            events.extend(answer.iter_lines())

    try:
        with serve_with_admin(tmp_path, "--server", server, "--workers", str(workers), *options, upstream=upstream.url) as (process, port, _, temporary):
            children = descendants(process.pid)
            listener = threading.Thread(target=listen, args=(port,))
            listener.start()
            deadline = time.monotonic() + 10
            while not events and time.monotonic() < deadline:
                time.sleep(0.02)
            assert events, "the stream did not start"
            process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            process.communicate(timeout=timeout + 10)
            while any(alive(child) for child in children) and time.monotonic() < started + timeout + 2:
                time.sleep(0.05)
            assert [child for child in children if alive(child)] == []
            assert time.monotonic() - started < timeout + 2
            listener.join(5)
            assert not listener.is_alive() and list(temporary.iterdir()) == []
    finally:
        upstream.close()


@pytest.mark.parametrize("seconds", ["0", "-1", "1.5", "x", ""])
def test_serve_refuses_a_shutdown_timeout_that_is_not_a_whole_number_of_seconds_above_0(tmp_path: Path, seconds: str) -> None:
    done = cli("serve", "--config", str(write_config(tmp_path)), "--shutdown-timeout", seconds)
    assert done.returncode == 2
    assert f"argument --shutdown-timeout: {seconds!r} is not a whole number of seconds above 0" in done.stderr


def test_an_admin_listener_outlives_no_gateway_even_one_killed(tmp_path: Path) -> None:
    with serve_with_admin(tmp_path) as (process, _, admin_port, _):
        children = descendants(process.pid)
        process.kill()  # no chance to stop anything
        process.wait(10)
        deadline = time.monotonic() + 5
        while answers(admin_port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not answers(admin_port)
        while any(alive(child) for child in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [child for child in children if alive(child)] == []


def test_serve_refuses_an_admin_port_another_process_holds(tmp_path: Path) -> None:
    from tests.support import with_admin

    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        admin_port = stranger.getsockname()[1]
        config = with_admin(write_config(tmp_path), admin_port)
        port = _free_port()
        done = subprocess.run([GATEWAY, "serve", "--config", str(config), "--port", str(port)], capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode != 0
        assert f"the admin listener cannot listen on 127.0.0.1:{admin_port} (admin.listen): Address already in use" in done.stderr
        assert not answers(port)


# --- secret files only their owner may read -------------------------------------------------------

QUIET_TABLE = "name: items\nupstream: http://upstream.test\nroutes:\n  GET /items: public\n"
NOBODY = 65534
# (mode, owner, what the warning says it is open to: None for no warning); as libpq, a file root
# owns may be read by its group, as Kubernetes' fsGroup makes a secret readable by the gateway
OPEN_MODES = [
    (0o644, NOBODY, "its group and others"), (0o640, NOBODY, "its group"), (0o604, NOBODY, "others"), (0o620, NOBODY, "its group"),
    (0o606, NOBODY, "others"), (0o440, NOBODY, "its group"), (0o600, NOBODY, None), (0o400, NOBODY, None),
    (0o644, 0, "others"), (0o660, 0, "its group"), (0o640, 0, None), (0o440, 0, None), (0o600, 0, None),
]


def _line(config: Path, key: str) -> int:
    return next(number for number, line in enumerate(config.read_text().splitlines(), 1) if line.strip().startswith(f"{key}:"))


@pytest.mark.parametrize(("mode", "owner", "open_to"), OPEN_MODES, ids=[f"{mode:04o}-{owner}" for mode, owner, _ in OPEN_MODES])
def test_check_warns_of_an_admin_token_file_others_may_read_and_strict_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int, owner: int, open_to: str | None,
) -> None:
    from gateway.cli import main
    from tests.support import with_admin

    if os.geteuid() != 0:
        pytest.skip("giving a file to another owner needs root")
    config = with_admin(write_config(tmp_path, table=QUIET_TABLE))
    token = tmp_path / "admin.token"
    os.chown(token, owner, -1)
    token.chmod(mode)
    if open_to is None:
        assert main(["check", "--strict", "--config", str(config)]) == 0
        assert "warning" not in capsys.readouterr().out
        return
    warning = (f"{config}:{_line(config, 'token_file')}: warning: admin.token_file {token} is open to {open_to} (mode {mode:04o}): "
               "only its owner may read it; chmod 600 it")
    assert main(["check", "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == warning
    assert main(["check", "--strict", "--config", str(config)]) == 1
    assert warning in capsys.readouterr().out.splitlines()


def test_check_warns_of_an_hmac_secret_file_others_may_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    secret = tmp_path / "hs.secret"
    secret.write_text("s" * 40)
    config = write_config(tmp_path, table=QUIET_TABLE.replace("public", "authenticated"),
                          tokens="tokens:\n  algorithms: [HS256]\n  hmac_secret_file: hs.secret\n")
    secret.chmod(0o604)
    assert main(["check", "--strict", "--config", str(config)]) == 1
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{config}:{_line(config, 'hmac_secret_file')}: warning: tokens.hmac_secret_file {secret} is open to others (mode 0604): only its owner may read it; chmod 600 it")
    secret.chmod(0o600)
    assert main(["check", "--strict", "--config", str(config)]) == 0


def test_serve_warns_at_start_of_an_admin_token_file_others_may_read(tmp_path: Path) -> None:
    with serve_with_admin(tmp_path, token_mode=0o604) as (process, *_):
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=20)[0]
    config, token = tmp_path / "gateway.yaml", tmp_path / "admin.token"
    assert (f"WARNING gateway.server: {config}:{_line(config, 'token_file')}: warning: admin.token_file {token} is open to others "
            "(mode 0604): only its owner may read it; chmod 600 it") in output.splitlines()
    # a token file only its owner may read gets no warning: test_a_stopped_serve_leaves_no_process_no_listener_and_no_folder


def test_a_second_serve_of_the_same_config_is_refused_and_the_first_serves_on(tmp_path: Path) -> None:
    with serve_with_admin(tmp_path) as (process, port, admin_port, temporary):
        second = subprocess.run([GATEWAY, "serve", "--config", str(tmp_path / "gateway.yaml"), "--port", str(_free_port())],
                                capture_output=True, text=True, timeout=30, check=False, env={**os.environ, "TMPDIR": str(temporary)})
        assert second.returncode != 0 and f"cannot listen on 127.0.0.1:{admin_port} (admin.listen)" in second.stderr
        assert len(list(temporary.iterdir())) == 2  # the first one's run and metrics folders, no more
        assert run("health", "--config", str(tmp_path / "gateway.yaml")).returncode == 0
        assert answers(port) and process.poll() is None
