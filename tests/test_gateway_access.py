"""`gateway access`: the routes one caller reaches (decided as the gateway decides, live grants
and conditions read from a real store) and the matrix of a table's routes against its scopes in
Markdown, CSV and HTML, the HTML page rendered by a real headless Chromium."""

from __future__ import annotations

import csv
import html.parser
import io
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.processes import run
from tests.support import write_config

TABLE = """\
name: shop
upstream: http://shop.test
prefix: /shop
scopes:
  orders:read:
    description: Read orders <script>document.title='pwned'</script>
  orders:write:
    implies: [orders:read]
  refunds:write:
  refunds:approve:
    step_up: {acr: [mfa], max_age: 300}
  bank:{bank_id}:
  reports:read:
    grants: [client]
  phone:
    suffixes: [optional]
    condition: the user validated a phone number
  <b>odd</b>:
    description: A & B
routes:
  GET /orders: orders:read
  POST /orders: orders:write
  POST /refunds: [[refunds:write, orders:write]]
  POST /refunds/{refundId}/approve: refunds:approve
  GET /banks/{bankId}/balance: bank:{bankId}
  GET /reports: reports:read
  GET /users/{userId}/phone: {scopes: phone, user: userId}
  GET /secret: {scopes: orders:write, hide: true}
  GET /status: public
  GET /me: authenticated
  GET /odd: <b>odd</b>
"""
CALLER = '{"sub": "ana", "client_id": "app"}'


@pytest.fixture
def config(tmp_path: Path) -> str:
    return str(write_config(tmp_path, table=TABLE, proxy="grants:\n  store: sqlite:///grants.db\n"))


def access(config: str, *args: str) -> tuple[int, str]:
    result = run("access", "--config", config, "--api", "shop", *args)
    assert not result.stderr, result.stderr
    return result.returncode, result.stdout


def routes_of(output: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The routes reached (with their line's note) and the others (with their indented lines)."""
    reached: dict[str, list[str]] = {}
    others: dict[str, list[str]] = {}
    section = None
    for line in output.splitlines():
        if line.startswith("reaches "):
            section = reached
        elif line.startswith("does not reach "):
            section = others
        elif section is not None and line.startswith("    "):
            others[list(others)[-1]].append(line.strip())
        elif section is not None:
            route, _, note = line.partition("  ")
            section[route] = [note] if note else []
    return reached, others


def test_a_caller_reaches_what_the_decision_allows_and_is_told_what_is_missing(config: str) -> None:
    run("grants", "add", "--config", config, "--api", "shop", "--client", "app", "reports:read")
    code, output = access(config, "--scopes", "orders:read bank:B1 bank:B7 reports:read phone_optional refunds:write", "--claims", CALLER)
    assert code == 0
    reached, others = routes_of(output)
    assert reached == {
        "GET /orders": [], "GET /banks/{bankId}/balance": ["(with bankId=B1; with bankId=B7)"], "GET /reports": [],
        "GET /status": ["(public: no token needed)"], "GET /me": [],
    }
    assert others == {
        "POST /orders": ["missing orders:write"],
        "POST /refunds": ["missing orders:write"],  # all of a group: refunds:write is held
        "POST /refunds/{refundId}/approve": ["missing refunds:approve"],
        "GET /users/{userId}/phone": ["404 not_found: phone: the user has not met the scope's condition yet"],
        "GET /secret": ["missing orders:write", "the route is hidden: the gateway answers 404 not_found"],
        "GET /odd": ["missing <b>odd</b>"],
    }
    assert "reaches 5 of 11 routes of shop:" in output.splitlines()


def test_live_grants_and_conditions_come_from_the_store(config: str) -> None:
    scopes = ("--scopes", "reports:read phone_optional", "--claims", CALLER)
    _, output = access(config, *scopes)
    assert routes_of(output)[1]["GET /reports"] == ["missing reports:read", "the client grant of reports:read to client app does not exist"]
    run("grants", "add", "--config", config, "--api", "shop", "--client", "app", "reports:read")
    run("grants", "fulfil", "--config", config, "--api", "shop", "--subject", "ana", "phone")
    reached, _ = routes_of(access(config, *scopes)[1])
    assert reached["GET /reports"] == [] and reached["GET /users/{userId}/phone"] == ["(with userId=ana)"]
    run("grants", "revoke", "--config", config, "--api", "shop", "--client", "app", "reports:read")
    missing = routes_of(access(config, *scopes)[1])[1]["GET /reports"]
    assert missing[0] == "missing reports:read" and re.fullmatch(r"the client grant of reports:read to client app was revoked at \S+", missing[1])


def test_implications_and_step_up_count_as_the_gateway_counts_them(config: str) -> None:
    reached, others = routes_of(access(config, "--scopes", "orders:write refunds:approve", "--claims", CALLER)[1])
    assert {"GET /orders", "POST /orders", "GET /secret"} <= set(reached)  # orders:write implies orders:read
    assert others["POST /refunds/{refundId}/approve"] == [
        ("401 insufficient_user_authentication: POST /refunds/{refundId}/approve needs refunds:approve, which counts only after a recent "
         "authentication with acr mfa within 300 seconds: authenticate again and retry with the new token")]
    fresh = f'{{"sub": "ana", "client_id": "app", "acr": "mfa", "auth_time": {int(time.time()) - 10}}}'
    assert "POST /refunds/{refundId}/approve" in routes_of(access(config, "--scopes", "refunds:approve", "--claims", fresh)[1])[0]


def test_a_bad_token_reaches_only_the_public_routes(config: str) -> None:
    code, output = access(config, "--token", "not-a-token")
    reached, others = routes_of(output)
    assert code == 0 and list(reached) == ["GET /status"] and len(others) == 10
    assert all(lines == ["401 invalid_token"] for lines in others.values())
    assert output.splitlines()[0].startswith("token:     refused: 401 invalid_token: ")


def test_wrong_options_exit_2(config: str) -> None:
    assert access(config)[0] == 2
    assert access(config, "--matrix", "--scopes", "a")[0] == 2
    assert access(config, "--scopes", "a", "--format", "csv")[0] == 2
    result = run("access", "--config", config, "--api", "nope", "--scopes", "a")
    assert result.returncode == 2 and result.stdout == "no route table is named 'nope' (tables: shop)\n"


def test_the_matrix_as_csv(config: str) -> None:
    code, output = access(config, "--matrix", "--format", "csv")
    assert code == 0
    rows = list(csv.reader(io.StringIO(output)))
    scopes = ["orders:read", "orders:write", "refunds:write", "refunds:approve", "bank:{bank_id}", "reports:read", "phone", "<b>odd</b>"]
    assert rows[0] == ["route", "requires", *scopes]
    table = {row[0]: dict(zip(rows[0][1:], row[1:], strict=True)) for row in rows[1:]}
    assert len(table) == 11

    def opened(route: str) -> dict[str, str]:
        return {scope: value for scope, value in table[route].items() if value and scope != "requires"}

    assert opened("GET /orders") == {"orders:read": "yes", "orders:write": "yes"}
    assert opened("POST /orders") == {"orders:write": "yes"}
    assert opened("POST /refunds") == {"orders:write": "with refunds:write", "refunds:write": "with orders:write"}
    assert table["POST /refunds"]["requires"] == "orders:write and refunds:write"
    assert opened("GET /banks/{bankId}/balance") == {"bank:{bank_id}": "yes"}
    assert opened("GET /users/{userId}/phone") == {"phone": "yes"}
    assert table["GET /users/{userId}/phone"]["requires"] == "phone; a user token only for its own {userId}"
    assert table["GET /secret"]["requires"] == "orders:write; hidden (refusals are 404)"
    assert (opened("GET /status"), table["GET /status"]["requires"]) == ({}, "public (no token)")
    assert (opened("GET /me"), table["GET /me"]["requires"]) == ({}, "any valid token")
    assert opened("GET /odd") == {"<b>odd</b>": "yes"}


def test_the_matrix_as_markdown_escapes_what_the_table_says(config: str) -> None:
    code, output = access(config, "--matrix")
    assert code == 0
    lines = output.splitlines()
    header = next(line for line in lines if line.startswith("| route |"))
    assert header.split(" | ")[-1] == "&lt;b&gt;odd&lt;/b&gt; |"
    row = next(line for line in lines if line.startswith("| POST /refunds |"))
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "POST /refunds", "orders:write and refunds:write", "", "with refunds:write", "with orders:write", "", "", "", "", ""]
    assert "- orders:read: Read orders &lt;script&gt;document.title='pwned'&lt;/script&gt;" in lines
    assert "- &lt;b&gt;odd&lt;/b&gt;: A &amp; B" in lines
    assert "<" not in output.replace("&lt;", "")


class _Page(html.parser.HTMLParser):
    """What a rendered page shows: its title, each row's cells by scope, every element's name."""

    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self.rows: dict[str, dict[str, tuple[str, str]]] = {}
        self.elements: list[str] = []
        self.text: list[str] = []
        self._in: list[str] = []
        self._row: str | None = None
        self._cell: tuple[str, str] | None = None
        self._cell_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.elements.append(tag)
        self._in.append(tag)
        if tag == "tr" and found.get("data-route"):
            self._row = found["data-route"]
            self.rows[self._row] = {}
        if tag == "td" and self._row is not None and found.get("data-scope") is not None:
            self._cell = (found["data-scope"] or "", found.get("class") or "")
            self._cell_text = []

    def handle_endtag(self, tag: str) -> None:
        if self._in:
            self._in.pop()
        if tag == "td" and self._cell is not None and self._row is not None:
            scope, kind = self._cell
            self.rows[self._row][scope] = (kind, "".join(self._cell_text).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._in and self._in[-1] == "title":
            self.title += data
        if self._cell is not None:
            self._cell_text.append(data)
        self.text.append(data)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "chromium is not installed (apt-get install chromium): the HTML matrix cannot be rendered in a real browser"
        print(reason)
        pytest.skip(reason)
    return found


def test_the_html_matrix_renders_in_chromium_as_one_self_contained_page(config: str, tmp_path: Path) -> None:
    chromium = _chromium()
    code, page = access(config, "--matrix", "--format", "html")
    assert code == 0
    # self-contained: nothing fetched from anywhere, nothing run
    assert not re.search(r"(?i)\b(src|href)\s*=|url\(|@import|<script|<link|<iframe|<img", page.replace("&lt;", ""))
    assert not re.search(r"(?i)(https?:)?//[a-z0-9]", page)
    file = tmp_path / "matrix.html"
    file.write_text(page, encoding="utf-8")
    rendered = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", file.as_uri()],
                              capture_output=True, text=True, timeout=120, check=False)
    assert rendered.returncode == 0, rendered.stderr
    shown = _Page()
    shown.feed(rendered.stdout)
    assert shown.title == "Access matrix: shop"  # no script ran: the description's would have renamed it
    assert "script" not in shown.elements
    assert "Read orders <script>document.title='pwned'</script>" in shown.text  # shown as text
    assert "<b>odd</b>" in shown.text and "b" not in shown.elements
    assert len(shown.rows) == 11
    ticked = {route: sorted(scope for scope, (kind, text) in cells.items() if kind == "yes" and text == "✓") for route, cells in shown.rows.items()}
    assert ticked == {
        "GET /orders": ["orders:read", "orders:write"], "POST /orders": ["orders:write"], "POST /refunds": [],
        "POST /refunds/{refundId}/approve": ["refunds:approve"], "GET /banks/{bankId}/balance": ["bank:{bank_id}"],
        "GET /reports": ["reports:read"], "GET /users/{userId}/phone": ["phone"], "GET /secret": ["orders:write"],
        "GET /status": [], "GET /me": [], "GET /odd": ["<b>odd</b>"],
    }
    assert shown.rows["POST /refunds"]["refunds:write"] == ("part", "+1")
    assert shown.rows["POST /refunds"]["orders:write"] == ("part", "+1")
    assert 'data-needs="orders:write" title="only together with orders:write">+1<' in rendered.stdout
    assert shown.rows["POST /refunds"]["orders:read"] == ("none", "")
    screenshot = tmp_path / "matrix.png"
    taken = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,600",
                            f"--screenshot={screenshot}", file.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert taken.returncode == 0 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", taken.stderr
