"""Live grants (docs/route-tables.md, "Live grants", step 3 of the decision) on a
real SQLite file: the store itself, the views kept fresh, the decision through the ASGI app, the
`gateway grants` command, and a store that fails."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.admin import AdminApp
from gateway.cli import main
from gateway.grants.live import LiveGrants, open_store
from gateway.grants.sqlite import SQLiteStore
from gateway.grants.store import GrantState, StoreUnavailable
from gateway.loading import ConfigError, load_config
from gateway.times import parse_rfc3339
from tests.support import Clock, Wallet, cli
from tests.support import write_wallet as write

pytestmark = pytest.mark.anyio

CLIENT = {"sub": "app", "client_id": "app"}


@pytest.fixture
async def wallet(tmp_path: Path) -> AsyncIterator[Wallet]:
    gateway = Wallet(write(tmp_path))
    await gateway.app.runtime.start()
    yield gateway
    await gateway.app.runtime.aclose()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock().install(monkeypatch)


def grants(config: Path, *args: str) -> str:
    done = cli("grants", *args, "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# --- the store ---------------------------------------------------------------------------------

async def test_the_sqlite_store_round_trip(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "grants.db")
    try:
        await store.put_grant("wallet", "app", None, "accounts_details:read", None)
        await store.put_grant("wallet", "app", "ana", "balance_offline", 2_000_000_000.0)
        await store.put_grant("wallet", "other", "ana", "balance_offline", None)
        await store.set_condition("wallet", "ana", "phone", True)
        view = await store.view("wallet", "app", "ana")
        assert view.client_grants == {"accounts_details:read": GrantState(None, None)}
        assert view.user_grants == {"balance_offline": GrantState(2_000_000_000.0, None)}
        assert view.conditions == {"phone"}
        assert await store.revoke_grant("wallet", "app", "ana", "balance_offline")
        assert not await store.revoke_grant("wallet", "app", "ana", "balance_offline")  # already revoked
        assert not await store.revoke_grant("wallet", "app", "bob", "balance_offline")  # never granted
        revoked = (await store.view("wallet", "app", "ana")).user_grants["balance_offline"]
        assert revoked.revoked_at is not None and not revoked.active(time.time())
        await store.put_grant("wallet", "app", "ana", "balance_offline", None)  # granted again: the revocation is gone
        assert (await store.view("wallet", "app", "ana")).user_grants["balance_offline"].active(time.time())
        listed, conditions = await store.list("wallet", subject="ana")
        assert [(g.client, g.scope) for g in listed] == [("app", "balance_offline"), ("other", "balance_offline")]
        assert [(c.subject, c.scope) for c in conditions] == [("ana", "phone")]
        assert not await store.set_condition("wallet", "bob", "phone", False)
        assert await store.set_condition("wallet", "ana", "phone", False)
    finally:
        await store.aclose()


async def test_two_processes_see_each_others_writes_and_lose_none(tmp_path: Path) -> None:
    first, second = SQLiteStore(tmp_path / "grants.db"), SQLiteStore(tmp_path / "grants.db")
    try:
        before = await second.version()
        await first.put_grant("wallet", "app", None, "s", None)
        assert await second.version() != before  # PRAGMA data_version moves for the other connection
        assert "s" in (await second.view("wallet", "app", None)).client_grants
        await asyncio.gather(*(store.put_grant("wallet", f"c{n}", None, "s", None) for n in range(100) for store in (first, second)))
        listed, _ = await first.list("wallet")
        assert len(listed) == 101
    finally:
        await first.aclose()
        await second.aclose()


async def test_views_are_refreshed_within_the_refresh_interval(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "grants.db")
    writer = SQLiteStore(tmp_path / "grants.db")
    live = LiveGrants(store, refresh=0.1)
    await live.start()
    try:
        assert (await live.view("wallet", "app", None)).client_grants == {}
        assert live.cached("wallet", "app", None) is not None  # kept in memory
        await writer.put_grant("wallet", "app", None, "s", None)
        await asyncio.sleep(0.3)
        assert live.cached("wallet", "app", None) is None  # dropped when the version moved
        assert "s" in (await live.view("wallet", "app", None)).client_grants
    finally:
        await live.aclose()
        await writer.aclose()


async def test_an_unreadable_store_refuses_and_recovers_by_itself(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    live = LiveGrants(SQLiteStore(folder / "grants.db"), refresh=0.1)
    await live.start()
    try:
        with pytest.raises(StoreUnavailable, match="unable to open database file"):
            await live.view("wallet", "app", None)
        folder.mkdir()
        await asyncio.sleep(0.3)
        assert (await live.view("wallet", "app", None)).client_grants == {}
    finally:
        await live.aclose()


def test_scopes_validate_refuses_a_scope_not_enabled_for_the_client(tmp_path: Path) -> None:
    config = write(tmp_path)

    def validate(*args: str) -> tuple[int, str]:
        done = cli("scopes", "validate", "--config", str(config), "--api", "wallet", *args)
        return done.returncode, done.stdout

    assert validate("--client", "app", "accounts_details:read balance") == (
        1, "invalid_scope: accounts_details:read is not enabled for client app: its client grant is missing\n")
    assert validate("accounts_details:read") == (0, "valid: accounts_details:read\n")  # no client named: not checked
    grants(config, "add", "--api", "wallet", "--client", "app", "accounts_details:read", "--expires", "2020-01-01T00:00:00Z")
    assert validate("--client", "app", "accounts_details:read")[1] == (
        "invalid_scope: accounts_details:read is not enabled for client app: its client grant is expired at 2020-01-01T00:00:00+00:00\n")
    grants(config, "add", "--api", "wallet", "--client", "app", "accounts_details:read")
    assert validate("--client", "app", "accounts_details:read") == (0, "valid: accounts_details:read\n")
    assert validate("--client", "other", "accounts_details:read")[0] == 1


def test_store_urls(tmp_path: Path) -> None:
    assert open_store("sqlite:///grants.db", tmp_path).path == tmp_path / "grants.db"  # type: ignore[attr-defined]
    assert open_store(f"sqlite:///{tmp_path}/x.db", Path("/elsewhere")).path == tmp_path / "x.db"  # type: ignore[attr-defined]
    for bad in ("sqlite://grants.db", "postgres://db/grants", "grants.db"):
        with pytest.raises(ValueError):
            open_store(bad, tmp_path)


def test_the_store_url_is_parsed_once_when_the_config_loads(tmp_path: Path) -> None:
    # what serves, `explain` and the admin listener open is the address gateway.yaml's loader read
    store = load_config(write(tmp_path)).grants.store
    assert store is not None and store.backend == "sqlite" and store.path == tmp_path / "grants.db"
    store = load_config(write(tmp_path, store="redis://:s3cret@127.0.0.1:6390/2")).grants.store
    assert store is not None and store.backend == "redis" and store.path is None
    assert "s3cret" not in f"{store} {store!r}" and str(store) == "redis://:***@127.0.0.1:6390/2"


def test_a_table_that_needs_live_state_needs_a_store(tmp_path: Path) -> None:
    config = write(tmp_path)
    config.write_text(config.read_text().split("grants:")[0])
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert all("needs live grants: configure grants.store" in problem.message for problem in error.value.problems)
    assert len(error.value.problems) == 5  # the offline forms of balance and phone, phone's condition, two grants
    write(tmp_path, store="mysql://db")
    with pytest.raises(ConfigError, match="grants.store must be a sqlite:/// or redis:// URL"):
        load_config(config)


# --- the decision through the app ------------------------------------------------------------

async def test_the_first_requests_of_a_new_caller_make_one_store_read(wallet: Wallet, monkeypatch: pytest.MonkeyPatch) -> None:
    """However many of a new (client, subject)'s requests arrive together, the store is read once;
    later ones are answered from memory; another subject is one read more."""
    grants(wallet.config, "add", "--api", "wallet", "--client", "app", "accounts_details:read")
    await wallet.fresh()
    store = wallet.app.runtime.grants.store  # type: ignore[union-attr]
    reads: list[tuple[str, str | None, str | None]] = []
    read = store.view

    async def counted(api: str, client: str | None, subject: str | None) -> Any:
        reads.append((api, client, subject))
        return await read(api, client, subject)

    monkeypatch.setattr(store, "view", counted)
    answers = await asyncio.gather(*(wallet.ask("GET /w/accounts/details", "accounts_details:read") for _ in range(20)))
    assert [forwarded for _, _, forwarded in answers] == [True] * 20
    assert reads == [("wallet", "app", "ana")]
    assert (await wallet.ask("GET /w/accounts/details", "accounts_details:read"))[2]
    assert len(reads) == 1
    bob = {"sub": "bob", "client_id": "app"}
    await asyncio.gather(*(wallet.ask("GET /w/accounts/details", "accounts_details:read", bob) for _ in range(5)))
    assert reads == [("wallet", "app", "ana"), ("wallet", "app", "bob")]


async def test_callers_waiting_on_a_failed_read_are_refused_too(wallet: Wallet, monkeypatch: pytest.MonkeyPatch) -> None:
    store = wallet.app.runtime.grants.store  # type: ignore[union-attr]

    async def failing(api: str, client: str | None, subject: str | None) -> Any:
        await asyncio.sleep(0.05)  # long enough for every request to wait on this read
        raise StoreUnavailable("database is locked")

    monkeypatch.setattr(store, "view", failing)
    answers = await asyncio.gather(*(wallet.ask("GET /w/accounts/details", "accounts_details:read") for _ in range(5)))
    assert [(status, body["error"], forwarded) for status, body, forwarded in answers] == [(503, "temporarily_unavailable", False)] * 5


async def test_client_grants_count_while_active(wallet: Wallet) -> None:
    status, body, forwarded = await wallet.ask("GET /w/accounts/details", "accounts_details:read")
    assert (status, body["error"], forwarded) == (403, "forbidden", False)
    assert "the client grant of accounts_details:read to client app does not exist" in body["error_description"]
    grants(wallet.config, "add", "--api", "wallet", "--client", "app", "accounts_details:read")
    await wallet.fresh()
    assert (await wallet.ask("GET /w/accounts/details", "accounts_details:read"))[2]
    grants(wallet.config, "revoke", "--api", "wallet", "--client", "app", "accounts_details:read")
    await wallet.fresh()
    status, body, _ = await wallet.ask("GET /w/accounts/details", "accounts_details:read")
    assert status == 403 and "was revoked at" in body["error_description"]


async def test_an_expiry_takes_effect_at_its_second(wallet: Wallet, clock: Clock) -> None:
    grants(wallet.config, "add", "--api", "wallet", "--client", "app", "accounts_details:read", "--ttl", "4")
    await wallet.fresh()
    assert (await wallet.ask("GET /w/accounts/details", "accounts_details:read"))[2]
    clock.advance(4.1)  # no write, no refresh: the view's expiry is checked at decision time
    status, body, forwarded = await wallet.ask("GET /w/accounts/details", "accounts_details:read")
    assert (status, forwarded) == (403, False) and "expired at" in body["error_description"]


async def test_client_and_user_grants_both_needed(wallet: Wallet) -> None:
    grants(wallet.config, "add", "--api", "wallet", "--client", "app", "make_deposit")
    await wallet.fresh()
    status, body, _ = await wallet.ask("POST /w/deposits", "make_deposit")
    assert status == 403 and "the user grant of make_deposit by ana to client app does not exist" in body["error_description"]
    grants(wallet.config, "add", "--api", "wallet", "--client", "app", "--subject", "ana", "make_deposit", "--expires", "2099-01-01T00:00:00Z")
    await wallet.fresh()
    assert (await wallet.ask("POST /w/deposits", "make_deposit"))[2]
    assert (await wallet.ask("POST /w/deposits", "make_deposit", {"sub": "bob", "client_id": "app"}))[0] == 403


async def test_offline_forms_count_through_the_users_offline_grant(wallet: Wallet) -> None:
    status, body, _ = await wallet.ask("GET /w/balance", "balance_offline")
    assert status == 403 and "the offline grant balance_offline by ana to client app does not exist" in body["error_description"]
    grants(wallet.config, "add", "--api", "wallet", "--client", "app", "--subject", "ana", "balance_offline")
    await wallet.fresh()
    assert (await wallet.ask("GET /w/balance", "balance_offline"))[2]
    # the plain scope needs no grant
    assert (await wallet.ask("GET /w/balance", "balance"))[2]
    # revoking the offline grant is how the user revokes offline access: forbidden
    grants(wallet.config, "revoke", "--api", "wallet", "--client", "app", "--subject", "ana", "balance_offline")
    await wallet.fresh()
    assert (await wallet.ask("GET /w/balance", "balance_offline"))[0] == 403


async def test_a_client_credentials_token_acts_on_a_user_through_their_offline_grants(wallet: Wallet, clock: Clock) -> None:
    assert (await wallet.ask("GET /w/users/ana/balance", "", CLIENT))[0] == 403
    grants(wallet.config, "add", "--api", "wallet", "--client", "app", "--subject", "ana", "balance_offline")
    await wallet.fresh()
    assert (await wallet.ask("GET /w/users/ana/balance", "", CLIENT))[2]
    assert (await wallet.ask("GET /w/users/bob/balance", "", CLIENT))[0] == 403  # bob granted nothing
    # another client holds no grant of ana's
    assert (await wallet.ask("GET /w/users/ana/balance", "", {"sub": "other", "client_id": "other"}))[0] == 403
    # an offline grant past its expiry, or revoked, no longer counts
    grants(wallet.config, "add", "--api", "wallet", "--client", "app", "--subject", "ana", "balance_offline", "--ttl", "0.5")
    await wallet.fresh()
    clock.advance(0.5)
    assert (await wallet.ask("GET /w/users/ana/balance", "", CLIENT))[0] == 403
    grants(wallet.config, "add", "--api", "wallet", "--client", "app", "--subject", "ana", "balance_offline")
    grants(wallet.config, "revoke", "--api", "wallet", "--client", "app", "--subject", "ana", "balance_offline")
    await wallet.fresh()
    assert (await wallet.ask("GET /w/users/ana/balance", "", CLIENT))[0] == 403


async def test_optional_forms_are_not_found_until_their_condition_is_met(wallet: Wallet) -> None:
    status, body, forwarded = await wallet.ask("GET /w/phone", "phone_optional")
    assert (status, body["error"], forwarded) == (404, "not_found", False)
    assert "phone: the user has not met the scope's condition yet" == body["error_description"]
    grants(wallet.config, "fulfil", "--api", "wallet", "--subject", "ana", "phone")
    await wallet.fresh()
    assert (await wallet.ask("GET /w/phone", "phone_optional"))[2]
    # without a condition, an optional form counts at once
    assert (await wallet.ask("GET /w/email", "email_optional"))[2]
    # offline and optional together: the offline grant and the condition
    assert (await wallet.ask("GET /w/phone", "phone_offline_optional"))[0] == 403
    grants(wallet.config, "add", "--api", "wallet", "--client", "app", "--subject", "ana", "phone_offline")
    await wallet.fresh()
    assert (await wallet.ask("GET /w/phone", "phone_offline_optional"))[2]
    grants(wallet.config, "unfulfil", "--api", "wallet", "--subject", "ana", "phone")
    await wallet.fresh()
    assert (await wallet.ask("GET /w/phone", "phone_offline_optional"))[0] == 404


async def test_a_store_that_cannot_be_read_answers_503_and_other_routes_still_serve(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gateway = Wallet(write(tmp_path, store=f"sqlite:///{gone}/grants.db"))
    await gateway.app.runtime.start()
    try:
        status, body, forwarded = await gateway.ask("GET /w/accounts/details", "accounts_details:read")
        assert (status, body["error"], body["retry-after"], forwarded) == (503, "temporarily_unavailable", "1", False)
        assert (await gateway.ask("GET /w/balance", "balance"))[2]  # no live state needed
        assert (await gateway.ask("GET /w/status", None))[2]
        gone.mkdir()
        await gateway.fresh()
        assert (await gateway.ask("GET /w/accounts/details", "accounts_details:read"))[0] == 403  # read again: no grant
    finally:
        await gateway.app.runtime.aclose()


# --- the command --------------------------------------------------------------------------------

def test_grants_list_and_its_json(tmp_path: Path) -> None:
    config = write(tmp_path)
    grants(config, "add", "--api", "wallet", "--client", "app", "accounts_details:read", "--expires", "2099-01-01T00:00:00Z")
    grants(config, "add", "--api", "wallet", "--client", "app", "--subject", "ana", "balance_offline")
    grants(config, "fulfil", "--api", "wallet", "--subject", "ana", "phone")
    listed = json.loads(grants(config, "list", "--json"))
    assert listed == {
        "grants": [
            {"api": "wallet", "client": "app", "subject": None, "scope": "accounts_details:read", "expires_at": "2099-01-01T00:00:00Z"},
            {"api": "wallet", "client": "app", "subject": "ana", "scope": "balance_offline", "expires_at": None},
        ],
        "conditions": [{"api": "wallet", "subject": "ana", "scope": "phone"}],
    }
    text = grants(config, "list", "--subject", "ana")
    assert "user ana via client app  balance_offline  (no expiry)" in text and "condition  wallet  user ana  phone  (met)" in text


@pytest.mark.parametrize(("args", "code", "words"), [
    (["add", "--api", "nope", "--client", "app", "balance"], 2, "no route table is named 'nope'"),
    (["add", "--api", "wallet", "--client", "app", "balance_optional"], 2, "neither a scope of this API's catalog nor the _offline form"),
    (["add", "--api", "wallet", "--client", "app", "email_offline"], 2, "neither a scope"),
    (["add", "--api", "wallet", "--client", "app", "balance", "--expires", "tomorrow"], 2, "is not an RFC 3339 time"),
    (["add", "--api", "wallet", "--client", "app", "balance", "--expires", "2099-01-01T00:00:00"], 2, "has no time zone"),
    (["revoke", "--api", "wallet", "--client", "app", "balance"], 1, "no such grant: balance to client app on wallet"),
    (["unfulfil", "--api", "wallet", "--subject", "ana", "phone"], 1, "no such condition met"),
])
def test_grants_refusals(tmp_path: Path, args: list[str], code: int, words: str) -> None:
    done = cli("grants", *args, "--config", str(write(tmp_path)))
    assert done.returncode == code, done.stdout + done.stderr
    assert words in done.stdout + done.stderr


def grants_here(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str]:
    """`gateway grants ARGS` in this process: the exit code and what it printed."""
    try:
        code = main(["grants", *args, "--config", str(config)])
    except SystemExit as exit:  # argparse's refusals
        code = int(exit.code or 0)
    printed = capsys.readouterr()
    return code, printed.out + printed.err


@pytest.mark.parametrize(("expiry", "words"), [
    (["--ttl", "nan"], "--ttl must be a finite number of seconds, not nan"),
    (["--ttl", "inf"], "--ttl must be a finite number of seconds, not inf"),
    (["--ttl=-inf"], "--ttl must be a finite number of seconds, not -inf"),
    (["--ttl", "1e300"], "outside years 1 to 9999 UTC"),
    (["--ttl=-1e300"], "outside years 1 to 9999 UTC"),
    (["--ttl", "1e400"], "not inf"),  # parsed as inf
    (["--ttl", "300000000000"], "outside years 1 to 9999 UTC"),
    (["--expires", "9999-12-31T23:00:00-05:00"], "outside years 1 to 9999"),
    (["--expires", "0001-01-01T00:30:00+01:00"], "outside years 1 to 9999"),
    (["--expires", "+10000-01-01T00:00:00Z"], "is not an RFC 3339 time"),
])
def test_grants_add_refuses_an_expiry_it_could_not_keep(tmp_path: Path, capsys: pytest.CaptureFixture[str], expiry: list[str], words: str) -> None:
    config = write(tmp_path)
    code, printed = grants_here(capsys, config, "add", "--api", "wallet", "--client", "app", "accounts_details:read", *expiry)
    assert code == 2 and words in printed, printed
    assert grants_here(capsys, config, "list", "--json") == (0, json.dumps({"grants": [], "conditions": []}, indent=2) + "\n")


@pytest.mark.parametrize("who", [["--client", ""], ["--client", "app", "--subject", ""]])
def test_grants_add_refuses_an_empty_client_or_subject(tmp_path: Path, capsys: pytest.CaptureFixture[str], who: list[str]) -> None:
    config = write(tmp_path)
    code, printed = grants_here(capsys, config, "add", "--api", "wallet", *who, "accounts_details:read")
    assert code == 2 and "must be a non-empty string" in printed, printed
    assert grants_here(capsys, config, "list", "--json")[1] == json.dumps({"grants": [], "conditions": []}, indent=2) + "\n"


def test_grants_list_all_shows_revoked_and_expired_grants_with_their_times(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path)
    for args in (["--client", "app", "accounts_details:read"], ["--client", "app", "--subject", "ana", "balance_offline", "--expires", "2001-01-01T00:00:00Z"],
                 ["--client", "web", "accounts_details:read", "--expires", "2099-01-01T00:00:00Z"]):
        assert grants_here(capsys, config, "add", "--api", "wallet", *args)[0] == 0
    before = time.time()
    assert grants_here(capsys, config, "revoke", "--api", "wallet", "--client", "app", "accounts_details:read")[0] == 0
    assert grants_here(capsys, config, "revoke", "--api", "wallet", "--client", "web", "accounts_details:read")[0] == 0
    # without --all, as before: the revoked grants are gone, the expired one is listed
    code, printed = grants_here(capsys, config, "list")
    assert code == 0 and printed == "grant      wallet  user ana via client app  balance_offline  (expired 2001-01-01T00:00:00Z)\n"
    code, printed = grants_here(capsys, config, "list", "--all")
    lines = printed.splitlines()
    assert code == 0 and len(lines) == 3
    assert re.fullmatch(r"grant      wallet  client app  accounts_details:read  \(revoked at \S+Z; no expiry\)", lines[0])
    assert lines[1] == "grant      wallet  user ana via client app  balance_offline  (expired 2001-01-01T00:00:00Z)"
    assert re.fullmatch(r"grant      wallet  client web  accounts_details:read  \(revoked at \S+Z; expires 2099-01-01T00:00:00Z\)", lines[2])
    listed = json.loads(grants_here(capsys, config, "list", "--all", "--json", "--client", "app")[1])["grants"]
    assert [(g["scope"], g["state"], g["expires_at"]) for g in listed] == [
        ("accounts_details:read", "revoked", None), ("balance_offline", "expired", "2001-01-01T00:00:00Z")]
    revoked_at = parse_rfc3339(listed[0]["revoked_at"])
    assert before - 1 <= revoked_at <= time.time() and listed[1]["revoked_at"] is None
    assert "state" not in json.loads(grants_here(capsys, config, "list", "--json")[1])["grants"][0]  # the JSON of GET /grants without --all


def test_grants_list_reads_a_row_whose_expiry_cannot_be_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    config = write(tmp_path)
    assert grants_here(capsys, config, "add", "--api", "wallet", "--client", "app", "accounts_details:read")[0] == 0
    with sqlite3.connect(tmp_path / "grants.db") as connection:  # a row no version of the gateway writes
        connection.execute("UPDATE grants SET expires_at = 1e300")
    code, printed = grants_here(capsys, config, "list", "--all")
    assert code == 0 and "revoked at 0001-01-01T00:00:00Z" in printed, printed


FLUZ = """\
name: fluz
upstream: http://fluz.test
prefix: /f
scopes:
  LIST_PAYMENT:
  MAKE_DEPOSIT:
rules:
  grants: [client, user]      # an administrator's grant to the application and the user's, both active
routes:
  GET /payments: LIST_PAYMENT
  POST /deposits: MAKE_DEPOSIT
"""


async def test_rules_grants_needs_the_application_grant_and_the_users_for_every_scope(tmp_path: Path, clock: Clock) -> None:
    config = write(tmp_path)
    (tmp_path / "routes" / "fluz.yaml").write_text(FLUZ)
    gateway = Wallet(config)
    await gateway.app.runtime.start()
    try:
        refused = await gateway.ask("GET /f/payments", "LIST_PAYMENT")
        assert refused[0] == 403
        assert "the client grant of LIST_PAYMENT to client app does not exist" in refused[1]["error_description"]
        assert "the user grant of LIST_PAYMENT by ana to client app does not exist" in refused[1]["error_description"]
        grants(config, "add", "--api", "fluz", "--client", "app", "LIST_PAYMENT", "--ttl", "4")
        grants(config, "add", "--api", "fluz", "--client", "app", "--subject", "ana", "LIST_PAYMENT")
        await gateway.fresh()
        assert (await gateway.ask("GET /f/payments", "LIST_PAYMENT"))[2]
        assert (await gateway.ask("POST /f/deposits", "MAKE_DEPOSIT"))[0] == 403  # granted per scope
        clock.advance(4)  # the administrator's grant expires: the user's alone does not count
        expired = await gateway.ask("GET /f/payments", "LIST_PAYMENT")
        assert expired[0] == 403 and "the client grant of LIST_PAYMENT to client app expired at" in expired[1]["error_description"]
    finally:
        await gateway.app.runtime.aclose()


def test_explain_reads_the_store_and_shows_the_live_step(tmp_path: Path) -> None:
    config = write(tmp_path)
    claims = ["--claims", '{"sub": "ana", "client_id": "app"}']
    refused = cli("explain", "--config", str(config), "GET", "/w/phone", "--scopes", "phone_optional balance_offline", *claims)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "step 3, live grants: read from sqlite:///grants.db for client app, user ana" in refused.stdout
    assert "           the offline grant balance_offline by ana to client app: missing" in refused.stdout
    assert "           the condition of phone (" in refused.stdout and "): not met: phone_optional waits for it" in refused.stdout
    assert "decision:  404 not_found" in refused.stdout
    grants(config, "fulfil", "--api", "wallet", "--subject", "ana", "phone")
    allowed = cli("explain", "--config", str(config), "GET", "/w/phone", "--scopes", "phone_optional", *claims)
    assert allowed.returncode == 0 and "           counts: phone" in allowed.stdout


async def test_a_locked_store_refuses_writes_after_its_busy_timeout_and_still_serves_reads(wallet: Wallet) -> None:
    import sqlite3

    grants(wallet.config, "add", "--api", "wallet", "--client", "app", "accounts_details:read")
    await wallet.fresh()
    holder = sqlite3.connect(wallet.config.parent / "grants.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, for longer than the 2 s busy timeout
    try:
        started = time.monotonic()
        done = cli("grants", "revoke", "--config", str(wallet.config), "--api", "wallet", "--client", "app", "accounts_details:read")
        assert done.returncode == 3 and "database is locked" in done.stdout
        assert 1.5 < time.monotonic() - started < 10
        # a writer that has not begun to commit blocks no reader: the gateway still decides, on the grant as it is
        assert (await wallet.ask("GET /w/accounts/details", "accounts_details:read"))[2]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "revoked" in grants(wallet.config, "revoke", "--api", "wallet", "--client", "app", "accounts_details:read")


# --- the file replaced, or gone ---------------------------------------------------------------

async def _copy_with(tmp_path: Path, *changes: tuple[str, str | None, str]) -> Path:
    """A backup of grants.db made the SQLite way, then changed: ("revoke"|"add", subject, scope) on client app."""
    copy = tmp_path / "copy.db"
    with sqlite3.connect(tmp_path / "grants.db") as source, sqlite3.connect(copy) as target:
        source.backup(target)
    store = SQLiteStore(copy)
    try:
        for change, subject, scope in changes:
            if change == "revoke":
                assert await store.revoke_grant("wallet", "app", subject, scope)
            else:
                await store.put_grant("wallet", "app", subject, scope, None)
    finally:
        await store.aclose()
    return copy


@pytest.mark.parametrize("how", ["moved over", "deleted and made again"])
async def test_a_replaced_store_file_is_followed_within_refresh(wallet: Wallet, tmp_path: Path, how: str) -> None:
    store = SQLiteStore(tmp_path / "grants.db")  # the admin listener's or a command's, beside the serving process
    admin = AdminApp(wallet.app.runtime.config, store, "admin-token-0123456789abcdef")
    auth = {"authorization": "Bearer admin-token-0123456789abcdef"}
    try:
        await store.put_grant("wallet", "app", None, "accounts_details:read", None)
        await store.put_grant("wallet", "app", None, "make_deposit", None)
        await wallet.fresh()
        assert (await wallet.ask("GET /w/accounts/details", "accounts_details:read", CLIENT))[2]
        old = store.opened
        copy = await _copy_with(tmp_path, ("revoke", None, "accounts_details:read"))
        if how == "moved over":
            copy.replace(tmp_path / "grants.db")  # a restore: mv copy.db grants.db
        else:
            (tmp_path / "grants.db").unlink()
            copy.replace(tmp_path / "grants.db")
        await wallet.fresh()  # within refresh: the revocation in the new file is enforced
        status, body, forwarded = await wallet.ask("GET /w/accounts/details", "accounts_details:read", CLIENT)
        assert (status, forwarded) == (403, False) and "was revoked at" in body["error_description"]
        # the admin listener's writes land in the new file, and /readyz names it
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=admin), base_url="http://admin.test") as client:
            assert (await client.delete("/grants/wallet/app/make_deposit", headers=auth)).status_code == 204
            assert (await client.put("/grants/wallet/web/accounts_details:read", headers=auth)).status_code == 200
            ready = (await client.get("/readyz")).json()
        new = (tmp_path / "grants.db").stat()
        assert store.opened == (new.st_dev, new.st_ino) != old
        assert ready["grant_store_details"] == {"file": str(tmp_path / "grants.db"), "device": new.st_dev, "inode": new.st_ino}
        with sqlite3.connect(tmp_path / "grants.db") as connection:
            rows = connection.execute("SELECT client, scope, revoked_at IS NOT NULL FROM grants ORDER BY client, scope").fetchall()
        assert rows == [("app", "accounts_details:read", 1), ("app", "make_deposit", 1), ("web", "accounts_details:read", 0)]
        await wallet.fresh()
        assert not (await wallet.ask("POST /w/deposits", "make_deposit", CLIENT))[2]  # revoked through the admin API, in the new file
    finally:
        await store.aclose()


async def test_a_store_file_that_vanishes_is_unavailable_until_one_is_back_and_never_made_again_empty(wallet: Wallet, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "grants.db")
    try:
        await store.put_grant("wallet", "app", None, "accounts_details:read", None)
        await wallet.fresh()
        assert (await wallet.ask("GET /w/accounts/details", "accounts_details:read", CLIENT))[2]
        saved = tmp_path / "saved.db"
        (tmp_path / "grants.db").rename(saved)  # moved away: a restore in progress, a wrong volume
        await wallet.fresh()
        status, body, forwarded = await wallet.ask("GET /w/accounts/details", "accounts_details:read", CLIENT)
        assert (status, body["error"], forwarded) == (503, "temporarily_unavailable", False)
        assert (await wallet.ask("GET /w/status", None))[0] == 200  # routes without live state still serve
        # a write is refused, never made into a file of its own that the next restore would hide, never lost
        with pytest.raises(StoreUnavailable, match="is gone"):
            await store.put_grant("wallet", "app", None, "make_deposit", None)
        with pytest.raises(StoreUnavailable, match="is gone"):
            await store.version()
        assert not (tmp_path / "grants.db").exists()
        saved.rename(tmp_path / "grants.db")  # back
        await wallet.fresh()
        assert (await wallet.ask("GET /w/accounts/details", "accounts_details:read", CLIENT))[2]
        await store.put_grant("wallet", "app", None, "make_deposit", None)
        with sqlite3.connect(tmp_path / "grants.db") as connection:
            assert {scope for (scope,) in connection.execute("SELECT scope FROM grants")} == {"accounts_details:read", "make_deposit"}
    finally:
        await store.aclose()


async def test_a_store_file_left_in_wal_mode_is_turned_to_a_rollback_journal(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "grants.db") as connection:  # as an earlier version left it
        connection.execute("PRAGMA journal_mode = WAL")
    connection.close()
    store = SQLiteStore(tmp_path / "grants.db")
    try:
        await store.put_grant("wallet", "app", None, "accounts_details:read", None)
    finally:
        await store.aclose()
    with sqlite3.connect(tmp_path / "grants.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    connection.close()
    assert not (tmp_path / "grants.db-wal").exists()


async def test_a_restart_keeps_every_grant(tmp_path: Path) -> None:
    config = write(tmp_path)
    grants(config, "add", "--api", "wallet", "--client", "app", "accounts_details:read")
    grants(config, "add", "--api", "wallet", "--client", "app", "--subject", "ana", "balance_offline", "--expires", "2099-01-01T00:00:00Z")
    grants(config, "fulfil", "--api", "wallet", "--subject", "ana", "phone")
    for _ in range(2):  # a gateway, then the same config started again
        gateway = Wallet(config)
        await gateway.app.runtime.start()
        try:
            assert (await gateway.ask("GET /w/accounts/details", "accounts_details:read"))[2]
            assert (await gateway.ask("GET /w/balance", "balance_offline"))[2]
            assert (await gateway.ask("GET /w/phone", "phone_optional"))[2]
        finally:
            await gateway.app.runtime.aclose()
