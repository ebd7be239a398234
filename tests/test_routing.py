from pathlib import Path

import pytest

from gateway.loading import load_config
from gateway.tables import Tables
from gateway.routing import route
from gateway.errors import NotFound


def load_tables(folder: Path, tables: dict[str, str]) -> Tables:
    (folder / "routes").mkdir()
    for name, text in tables.items():
        (folder / "routes" / name).write_text(text)
    (folder / "gateway.yaml").write_text(f"routes: routes/\ntokens:\n  jwks_file: {Path(__file__).parent / 'keys' / 'jwks.json'}\n")
    return load_config(folder / "gateway.yaml").tables


def table(name: str, prefix: str, *routes: str) -> str:
    lines = [f"name: {name}", "upstream: http://up.test", f"prefix: {prefix}" if prefix else "", "routes:"]
    return "\n".join(lines + [f"  {line}" for line in routes]) + "\n"


def matched(tables: Tables, method: str, path: str) -> str:
    found = route(tables, method, path.encode()).route
    return f"{found.api.name}: {found.method} {found.template}"


def test_literal_segments_beat_parameters_whatever_the_order(tmp_path: Path) -> None:
    tables = load_tables(tmp_path, {"a.yaml": table("a", "", "GET /m/{id}/webhooks/{hook}: s1", "GET /m/{id}/webhooks/special: s2", "GET /m/mine/webhooks/{hook}: s3")})
    assert matched(tables, "GET", "/m/M1/webhooks/W1") == "a: GET /m/{id}/webhooks/{hook}"
    assert matched(tables, "GET", "/m/M1/webhooks/special") == "a: GET /m/{id}/webhooks/special"
    assert matched(tables, "GET", "/m/mine/webhooks/W1") == "a: GET /m/mine/webhooks/{hook}"
    # the leftmost literal wins: /m/mine/... beats /m/{id}/webhooks/special
    assert matched(tables, "GET", "/m/mine/webhooks/special") == "a: GET /m/mine/webhooks/{hook}"


@pytest.mark.parametrize("order", [("x.yaml", "y.yaml"), ("y.yaml", "x.yaml")])
def test_most_specific_wins_across_files_in_any_order(tmp_path: Path, order: tuple[str, str]) -> None:
    specific = table("specific", "", "GET /m/special: s1")
    general = table("general", "", "GET /m/{id}: s2")
    tables = load_tables(tmp_path, {order[0]: specific, order[1]: general})
    assert matched(tables, "GET", "/m/special") == "specific: GET /m/special"
    assert matched(tables, "GET", "/m/other") == "general: GET /m/{id}"


def test_backtracks_when_the_literal_branch_dead_ends(tmp_path: Path) -> None:
    tables = load_tables(tmp_path, {"a.yaml": table("a", "", "GET /a/{x}/d: s1", "GET /{y}/b/c: s2")})
    assert matched(tables, "GET", "/a/b/c") == "a: GET /{y}/b/c"
    assert matched(tables, "GET", "/a/b/d") == "a: GET /a/{x}/d"


def test_method_is_part_of_the_match(tmp_path: Path) -> None:
    tables = load_tables(tmp_path, {"a.yaml": table("a", "", "POST /a/b: s1", "GET /a/{x}: s2")})
    assert matched(tables, "GET", "/a/b") == "a: GET /a/{x}"
    assert matched(tables, "POST", "/a/b") == "a: POST /a/b"
    with pytest.raises(NotFound):
        route(tables, "DELETE", b"/a/b")
    with pytest.raises(NotFound):
        route(tables, "TRACE", b"/a/b")


def test_head_is_allowed_wherever_get_is_unless_head_is_declared(tmp_path: Path) -> None:
    tables = load_tables(tmp_path, {"a.yaml": table("a", "", "GET /a/{x}: s1", "HEAD /h: s2", "GET /h: s3", "POST /p: s4")})
    assert matched(tables, "HEAD", "/a/1") == "a: GET /a/{x}"
    assert matched(tables, "HEAD", "/h") == "a: HEAD /h"
    with pytest.raises(NotFound):
        route(tables, "HEAD", b"/p")


def test_prefix_selects_the_api_and_is_stripped_from_the_forwarded_path(tmp_path: Path) -> None:
    tables = load_tables(tmp_path, {
        "a.yaml": table("a", "/alpha", "GET /items/{id}: s1"),
        "b.yaml": table("b", "/beta/v2", "GET /items/{id}: s1"),
    })
    alpha = route(tables, "GET", b"/alpha/items/7", b"q=1")
    assert alpha.route.api.name == "a" and alpha.params == {"id": "7"}
    assert alpha.upstream_target == b"/items/7?q=1"
    beta = route(tables, "GET", b"/beta/v2/items/%41")
    assert beta.route.api.name == "b" and beta.params == {"id": "A"}
    assert beta.upstream_target == b"/items/%41"
    for path in (b"/items/7", b"/beta/items/7", b"/gamma/items/7"):
        with pytest.raises(NotFound):
            route(tables, "GET", path)


def test_parameters_match_exactly_one_non_empty_segment(tmp_path: Path) -> None:
    tables = load_tables(tmp_path, {"a.yaml": table("a", "", "GET /m/{id}: s1")})
    for path in (b"/m", b"/m/a/b"):
        with pytest.raises(NotFound):
            route(tables, "GET", path)


def test_matching_is_case_sensitive_and_exact(tmp_path: Path) -> None:
    tables = load_tables(tmp_path, {"a.yaml": table("a", "", "GET /status: public")})
    for path in (b"/Status", b"/STATUS", b"/status.json", b"/statu"):
        with pytest.raises(NotFound):
            route(tables, "GET", path)


def test_ten_thousand_routes_compile_and_match_the_right_one(tmp_path: Path) -> None:
    lines = [f"GET /r{i}/items/{{id}}: s{i % 7}" for i in range(10_000)]
    tables = load_tables(tmp_path, {"big.yaml": table("big", "/big", *lines)})
    assert tables.trie.count == 10_000
    found = route(tables, "GET", b"/big/r9876/items/x").route
    assert found.template == "/r9876/items/{id}" and found.requirement.alternatives == (frozenset({"s6"}),)
