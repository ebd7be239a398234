"""`gateway import openapi` and `gateway coverage`: OpenAPI security read with its any-of / all-of
meaning, written as a route table that the gateway's own loader takes, and compared back.

The real descriptions of tests/specs/ (the Petstore, Discord's API) are imported and the running
app (ASGI, tokens signed with the test keys) decides a sample of their operations as each spec's
own security says; small hand-made descriptions pin each rule of the reading."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import yaml

from gateway.app import Gateway
from gateway.cli import main
from gateway.loading import load_config
from tests.support import mint, write_config

SPECS = Path(__file__).parent / "specs"
PETSTORE = SPECS / "petstore.yaml"
DISCORD = SPECS / "discord.json"

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """`gateway ARGS...` in process: (exit code, stdout, stderr)."""
    def run(*args: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def spec_file(folder: Path, paths: dict[str, Any], *, schemes: dict[str, Any] | None = None, as_json: bool = False, **top: Any) -> Path:
    """A small OpenAPI 3.0 description: `paths` with their operations, an oauth2 scheme `oauth`
    (read, write, admin) and an apiKey scheme `key`, unless `schemes` says otherwise."""
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "Test API", "version": "1"},
        "servers": [{"url": "https://api.example.com/v1"}],
        "paths": {path: {method: {"responses": {"200": {"description": "ok"}}, **operation} for method, operation in item.items()}
                  for path, item in paths.items()},
        "components": {"securitySchemes": schemes if schemes is not None else {
            "oauth": {"type": "oauth2", "flows": {"clientCredentials": {"tokenUrl": "https://auth.example.com/token", "scopes": {
                "read": "Read things", "write": "Write things", "admin": "Everything"}}}},
            "key": {"type": "apiKey", "name": "X-Key", "in": "header"},
        }},
        **top,
    }
    file = folder / ("spec.json" if as_json else "spec.yaml")
    file.write_text(json.dumps(document) if as_json else yaml.safe_dump(document, sort_keys=False))
    return file


def routes_of(table: str) -> dict[str, Any]:
    return yaml.safe_load(table)["routes"]


# --- the reading of security, rule by rule -----------------------------------------------------

ONE = "/things/{id}"
# (operation's security, options, the route's requirement as written)
SECURITY = [
    ([{"oauth": ["read"]}], [], "read"),
    ([{"oauth": ["read"]}, {"oauth": ["admin"]}], [], ["read", "admin"]),                     # the list: any one
    ([{"oauth": ["read", "write"]}], [], [["read", "write"]]),                                # one object: all together
    ([{"oauth": ["read", "write"]}], ["--within", "any"], ["read", "write"]),                 # ... or any, when asked
    ([{"oauth": ["read", "write"]}, {"oauth": ["admin"]}], [], [["read", "write"], "admin"]),
    ([{"oauth": ["read"]}, {"oauth": ["read", "write"]}], [], "read"),                       # a wider alternative adds nothing
    ([{"oauth": []}], [], "authenticated"),
    ([{"oauth": ["admin"]}, {"oauth": []}], [], "authenticated"),                            # no scopes among them: any token
    ([{"oauth": ["read"]}, {"key": []}], [], "read"),                                        # the API-key way is not the gateway's
    ([{"oauth": ["read"], "key": []}], [], "read"),
    ([{}, {"oauth": ["read"]}], ["--allow-public"], "public"),                               # {} among them: no token needed
    ([], ["--allow-public"], "public"),
]


@pytest.mark.parametrize(("security", "options", "expected"), SECURITY)
def test_security_requirements_become_any_of_lists_of_all_of_groups(tmp_path: Path, run: Run, security: list[Any], options: list[str], expected: Any) -> None:
    code, out, err = run("import", "openapi", spec_file(tmp_path, {ONE: {"get": {"security": security}}}), *options)
    assert code == 0, err
    assert routes_of(out) == {"GET /v1/things/{id}": expected}


def test_the_top_level_security_applies_where_an_operation_has_none(tmp_path: Path, run: Run) -> None:
    spec = spec_file(tmp_path, {"/a": {"get": {}, "post": {"security": [{"oauth": ["write"]}]}, "put": {"security": []}}},
                     security=[{"oauth": ["read"]}])
    code, out, _ = run("import", "openapi", spec, "--allow-public")
    assert code == 0
    assert routes_of(out) == {"GET /v1/a": "read", "POST /v1/a": "write", "PUT /v1/a": "public"}


@pytest.mark.parametrize("security", [None, [], [{}], [{"key": []}, {}]])
def test_an_operation_without_security_exits_1_naming_it_and_writes_nothing(tmp_path: Path, run: Run, security: list[Any] | None) -> None:
    operation = {} if security is None else {"security": security}
    spec = spec_file(tmp_path, {"/open/{x}": {"post": operation}, "/closed": {"get": {"security": [{"oauth": ["read"]}]}}})
    code, out, err = run("import", "openapi", spec)
    assert (code, out) == (1, "")
    assert "#/paths/~1open~1{x}/post" in err and "--allow-public" in err
    assert "/closed" not in err


def test_api_key_only_operations_are_left_out_and_listed(tmp_path: Path, run: Run) -> None:
    spec = spec_file(tmp_path, {"/keyed": {"get": {"security": [{"key": []}]}}, "/scoped": {"get": {"security": [{"oauth": ["read"]}]}}})
    code, out, err = run("import", "openapi", spec)
    assert code == 0
    assert routes_of(out) == {"GET /v1/scoped": "read"}
    assert "GET /v1/keyed" in err and "#/paths/~1keyed/get" in err and "key" in err


def test_the_catalog_holds_every_flow_scope_first_description_wins_and_undeclared_scopes_are_reported(tmp_path: Path, run: Run) -> None:
    schemes = {
        "first": {"type": "oauth2", "flows": {
            "authorizationCode": {"authorizationUrl": "https://a/authorize", "tokenUrl": "https://a/token", "scopes": {"read": "Read, as the first flow says", "unused": ""}},
            "clientCredentials": {"tokenUrl": "https://a/token", "scopes": {"read": "Read, as the second says", "write": "Write"}}}},
        "second": {"type": "oauth2", "flows": {"implicit": {"authorizationUrl": "https://b/authorize", "scopes": {"write": "Write, the other scheme", "other": "Other"}}}},
        "oidc": {"type": "openIdConnect", "openIdConnectUrl": "https://a/.well-known/openid-configuration"},
    }
    spec = spec_file(tmp_path, {"/a": {"get": {"security": [{"first": ["read", "ghost"]}]}, "post": {"security": [{"oidc": ["profile"]}]}}}, schemes=schemes)
    code, out, err = run("import", "openapi", spec)
    assert code == 0
    catalog = yaml.safe_load(out)["scopes"]
    assert list(catalog) == ["read", "unused", "write", "other", "ghost", "profile"]
    assert catalog["read"] == {"description": "Read, as the first flow says"}
    assert catalog["write"] == {"description": "Write"}
    assert catalog["unused"] is None and catalog["ghost"] is None
    assert routes_of(out) == {"GET /v1/a": [["ghost", "read"]], "POST /v1/a": "profile"}  # openIdConnect carries scopes
    assert "scope ghost" in err and "profile" not in err


def test_scheme_picks_one_scheme_and_its_catalog(tmp_path: Path, run: Run) -> None:
    schemes = {
        "users": {"type": "oauth2", "flows": {"implicit": {"authorizationUrl": "https://a/authorize", "scopes": {"profile": "Profile"}}}},
        "machines": {"type": "oauth2", "flows": {"clientCredentials": {"tokenUrl": "https://a/token", "scopes": {"jobs": "Jobs"}}}},
    }
    spec = spec_file(tmp_path, {"/me": {"get": {"security": [{"users": ["profile"]}, {"machines": ["jobs"]}]}},
                                "/jobs": {"get": {"security": [{"machines": ["jobs"]}]}}}, schemes=schemes)
    code, out, err = run("import", "openapi", spec, "--scheme", "users")
    assert code == 0
    assert yaml.safe_load(out)["scopes"] == {"profile": {"description": "Profile"}}
    assert routes_of(out) == {"GET /v1/me": "profile"}
    assert "GET /v1/jobs" in err and "--scheme users" in out
    code, _, err = run("import", "openapi", spec, "--scheme", "nope")
    assert code == 2 and "nope" in err and "users, machines" in err


def test_x_gateway_hide_becomes_hide_and_each_route_carries_its_operation_id(tmp_path: Path, run: Run) -> None:
    spec = spec_file(tmp_path, {"/a": {"delete": {"security": [{"oauth": ["admin"]}], "x-gateway-hide": True, "operationId": "dropA"},
                                       "get": {"security": [{"oauth": ["read"]}], "operationId": "getA"}}})
    code, out, _ = run("import", "openapi", spec)
    assert code == 0
    assert routes_of(out) == {"DELETE /v1/a": {"scopes": "admin", "hide": True}, "GET /v1/a": "read"}
    assert "GET /v1/a: read   # getA\n" in out


def test_servers_base_path_with_variable_defaults_prefix_and_origin_as_upstream(tmp_path: Path, run: Run) -> None:
    servers = [{"url": "{scheme}://api.example.com:8443/{version}", "variables": {"scheme": {"default": "https"}, "version": {"default": "v2"}}}]
    spec = spec_file(tmp_path, {"/": {"get": {"security": [{"oauth": ["read"]}]}}, "/a/{b}": {"get": {"security": [{"oauth": ["read"]}]}}},
                     servers=servers)
    code, out, _ = run("import", "openapi", spec, "--prefix", "/ex", "--name", "ex")
    assert code == 0
    table = yaml.safe_load(out)
    assert (table["name"], table["upstream"], table["prefix"]) == ("ex", "https://api.example.com:8443", "/ex")
    assert routes_of(out) == {"GET /v2": "read", "GET /v2/a/{b}": "read"}
    code, out, _ = run("import", "openapi", spec, "--upstream", "http://internal:8080")
    assert code == 0 and yaml.safe_load(out)["upstream"] == "http://internal:8080"


def test_a_relative_server_url_is_the_base_path_and_needs_upstream(tmp_path: Path, run: Run) -> None:
    spec = spec_file(tmp_path, {"/a": {"get": {"security": [{"oauth": ["read"]}]}}}, servers=[{"url": "/api/v3"}])
    code, out, err = run("import", "openapi", spec)
    assert (code, out) == (2, "") and "#/servers/0/url" in err and "--upstream" in err
    code, out, _ = run("import", "openapi", spec, "--upstream", "http://internal")
    assert code == 0 and routes_of(out) == {"GET /api/v3/a": "read"}


def test_templates_the_gateway_cannot_express_are_left_out_never_widened(tmp_path: Path, run: Run) -> None:
    read = {"security": [{"oauth": ["read"]}]}
    spec = spec_file(tmp_path, {"/files/{path}.json": {"get": read}, "/jobs/{id}:cancel": {"post": read}, "/slash/": {"get": read},
                                "/pets/{pet-id}/{1st}": {"get": read}, "/t": {"trace": read, "head": read}})
    code, out, err = run("import", "openapi", spec)
    assert code == 0
    assert routes_of(out) == {"GET /v1/pets/{pet_id}/{_1st}": "read", "HEAD /v1/t": "read"}  # a parameter's name changes nothing
    for pointer in ("#/paths/~1files~1{path}.json/get", "#/paths/~1jobs~1{id}:cancel/post", "#/paths/~1slash~1/get", "#/paths/~1t/trace"):
        assert pointer in err


def test_two_operations_the_gateway_cannot_tell_apart_are_both_left_out(tmp_path: Path, run: Run) -> None:
    spec = spec_file(tmp_path, {"/a/{x}": {"get": {"security": [{"oauth": ["admin"]}]}}, "/a/{y}": {"get": {"security": [{"oauth": ["read"]}]}},
                                "/b": {"get": {"security": [{"oauth": ["read"]}]}}})
    code, out, err = run("import", "openapi", spec)
    assert code == 0 and routes_of(out) == {"GET /v1/b": "read"}
    assert "#/paths/~1a~1{x}/get" in err and "#/paths/~1a~1{y}/get" in err


def test_local_refs_are_resolved_for_path_items_and_security_schemes(tmp_path: Path, run: Run) -> None:
    document = {
        "openapi": "3.1.0", "info": {"title": "Refs", "version": "1"}, "servers": [{"url": "https://api.example.com"}],
        "paths": {"/a": {"$ref": "#/components/pathItems/A"}},
        "components": {
            "pathItems": {"A": {"get": {"security": [{"auth": ["read"]}], "responses": {"200": {"$ref": "#/components/responses/Ok"}}}}},
            "responses": {"Ok": {"description": "ok"}},
            "securitySchemes": {"auth": {"$ref": "#/components/securitySchemes/real"},
                                "real": {"type": "oauth2", "flows": {"implicit": {"authorizationUrl": "https://a", "scopes": {"read": "Read"}}}}},
        },
    }
    file = tmp_path / "refs.json"
    file.write_text(json.dumps(document))
    code, out, err = run("import", "openapi", file)
    assert code == 0, err
    assert routes_of(out) == {"GET /a": "read"} and yaml.safe_load(out)["scopes"] == {"read": {"description": "Read"}}


@pytest.mark.parametrize(("ref", "place", "why"), [
    ("other.yaml#/components/schemas/Pet", "#/paths/~1a/get/responses/200/content/application~1json/schema/$ref", "outside the file"),
    ("https://example.com/schemas.json#/Pet", "#/paths/~1a/get/responses/200/content/application~1json/schema/$ref", "outside the file"),
    ("#/components/schemas/Nothing", "#/paths/~1a/get/responses/200/content/application~1json/schema/$ref", "points to nothing"),
])
def test_a_ref_outside_the_file_or_to_nothing_exits_2_naming_the_place(tmp_path: Path, run: Run, ref: str, place: str, why: str) -> None:
    spec = spec_file(tmp_path, {"/a": {"get": {"security": [{"oauth": ["read"]}], "responses": {"200": {
        "description": "ok", "content": {"application/json": {"schema": {"$ref": ref}}}}}}}})
    code, out, err = run("import", "openapi", spec)
    assert (code, out) == (2, "")
    assert f"{spec}{place}" in err and why in err


@pytest.mark.parametrize(("text", "message"), [
    ("openapi: 3.0.3\ninfo: [", "not YAML or JSON"),
    ('{"openapi": "3.0.3", "info": ', "not YAML or JSON"),
    ("swagger: '2.0'\ninfo: {title: t, version: '1'}\npaths: {}\n", "only OpenAPI 3.0 and 3.1"),
    ("openapi: 3.0.3\ninfo: {title: t}\npaths: {}\n", "#/info: not valid OpenAPI 3.0.3"),
    ("openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths: {/a: {get: {security: [{nobody: []}], responses: {'200': {description: ok}}}}}\n",
     "#/paths/~1a/get/security/0: names security scheme 'nobody'"),
])
def test_an_unreadable_or_invalid_description_exits_2_naming_the_place(tmp_path: Path, run: Run, text: str, message: str) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    code, out, err = run("import", "openapi", spec)
    assert (code, out) == (2, "") and message in err
    code, out, err = run("import", "openapi", tmp_path / "absent.yaml")
    assert (code, out) == (2, "") and "absent.yaml" in err


def test_json_and_yaml_read_alike_and_the_output_is_the_same_bytes_each_time(tmp_path: Path, run: Run) -> None:
    paths = {"/b": {"post": {"security": [{"oauth": ["write", "read"]}, {"oauth": ["admin"]}], "operationId": "b: the \"second\" #2"}},
             "/a": {"get": {"security": [{"oauth": ["read"]}]}}}
    _, from_yaml, _ = run("import", "openapi", spec_file(tmp_path, paths))
    _, from_json, _ = run("import", "openapi", spec_file(tmp_path, paths, as_json=True))
    _, again, _ = run("import", "openapi", spec_file(tmp_path, paths, as_json=True))
    assert from_json == again
    assert from_yaml.replace("spec.yaml", "spec.json") == from_json
    assert list(routes_of(from_json)) == ["POST /v1/b", "GET /v1/a"]  # document order


# --- the real descriptions ----------------------------------------------------------------------

def import_table(run: Run, folder: Path, spec: Path, *options: str) -> tuple[Path, str, str]:
    """Import `spec` into a config in `folder` (the test keys, the httpx client): (config, table, stderr)."""
    code, table, err = run("import", "openapi", spec, *options)
    assert code == 0, err
    folder.mkdir(exist_ok=True)
    config = write_config(folder, table=table, proxy="proxy:\n  client: httpx\n")
    return config, table, err


@pytest.mark.parametrize(("spec", "options"), [
    (PETSTORE, ["--allow-public"]), (PETSTORE, ["--allow-public", "--prefix", "/petstore", "--scheme", "petstore_auth"]),
    (DISCORD, ["--allow-public"]), (DISCORD, ["--allow-public", "--within", "any", "--name", "discord"]),
])
def test_each_real_import_loads_passes_check_and_agrees_with_its_spec(tmp_path: Path, run: Run, spec: Path, options: list[str]) -> None:
    config, table, _ = import_table(run, tmp_path, spec, *options)
    code, out, _ = run("check", "--config", config)
    assert code == 0 and out.splitlines()[-1].startswith("OK: 1 route tables"), out  # warnings (a literal beside a {param}) load
    name = yaml.safe_load(table)["name"]
    code, out, _ = run("coverage", "--openapi", spec, "--api", name, "--config", config, "--json")
    report = json.loads(out)
    assert (code, report["missing_routes"], report["undocumented_routes"], report["differing"]) == (0, [], [], [])
    assert report["not_enforceable"]  # both have operations only an API key or bot token opens


def test_the_petstore_import_reads_as_its_spec_says(tmp_path: Path, run: Run) -> None:
    code, out, err = run("import", "openapi", PETSTORE)
    assert (code, out) == (1, "") and "#/paths/~1user~1login/get" in err  # no security at all: public only on purpose
    _, table, err = import_table(run, tmp_path, PETSTORE, "--allow-public")
    assert yaml.safe_load(table)["upstream"] == "https://petstore3.swagger.io"
    assert yaml.safe_load(table)["scopes"] == {"write:pets": {"description": "modify pets in your account"}, "read:pets": {"description": "read your pets"}}
    routes = routes_of(table)
    assert routes["PUT /api/v3/pet"] == [["read:pets", "write:pets"]]     # one requirement object: both scopes together
    assert routes["GET /api/v3/pet/{petId}"] == [["read:pets", "write:pets"]]  # the api_key alternative is not the gateway's
    assert routes["GET /api/v3/user/login"] == "public"
    assert "GET /api/v3/store/inventory" not in routes and "#/paths/~1store~1inventory/get" in err
    assert "  PUT /api/v3/pet: [[read:pets, write:pets]]   # updatePet\n" in table


# --- a running gateway decides as the spec says --------------------------------------------------

@pytest.fixture
async def gateway(tmp_path: Path, run: Run, request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    spec, *options = request.param
    config, _, _ = import_table(run, tmp_path, spec, *options, "--upstream", "http://upstream.test")
    with respx.mock(assert_all_called=False) as router:
        router.route(host="upstream.test").mock(return_value=httpx.Response(200, json={"upstream": True}))
        transport = httpx.ASGITransport(app=Gateway(load_config(config)))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            yield client


async def decide(client: httpx.AsyncClient, line: str, scopes: str | None) -> int:
    method, path = line.split(" ")
    headers = {} if scopes is None else {"Authorization": f"Bearer {mint(scopes)}"}
    answer = await client.request(method, path, headers=headers)
    assert answer.status_code != 200 or method == "HEAD" or answer.json() == {"upstream": True}
    return answer.status_code


ALL_DISCORD = ("activities.invites.write activities.read activities.write applications.builds.read applications.builds.upload "
               "applications.commands applications.commands.permissions.update applications.commands.update applications.entitlements "
               "applications.store.update bot connections dm_channels.read email gdm.join guilds guilds.join guilds.members.read identify "
               "messages.read openid relationships.read role_connections.write rpc rpc.activities.write rpc.notifications.read "
               "rpc.screenshare.read rpc.screenshare.write rpc.video.read rpc.video.write rpc.voice.read rpc.voice.write voice webhook.incoming")
# (request, its security in the spec, [(caller's scopes or None for no token, status)])
PETSTORE_CASES = [
    ("PUT /api/v3/pet", "[{petstore_auth: [write:pets, read:pets]}]",
     [("write:pets read:pets", 200), ("write:pets", 403), ("read:pets", 403), ("", 403), (None, 401)]),
    ("DELETE /api/v3/pet/7", "[{petstore_auth: [write:pets, read:pets]}]", [("read:pets write:pets", 200), ("read:pets", 403), (None, 401)]),
    ("GET /api/v3/pet/7", "[{api_key: []}, {petstore_auth: [write:pets, read:pets]}]", [("read:pets write:pets", 200), ("read:pets", 403), (None, 401)]),
    ("HEAD /api/v3/pet/findByStatus", "[{petstore_auth: [write:pets, read:pets]}] (GET)", [("read:pets write:pets", 200), (None, 401)]),
    ("GET /api/v3/user/login", "none", [(None, 200), ("read:pets", 200)]),
    ("DELETE /api/v3/store/order/5", "none", [(None, 200)]),
    ("GET /api/v3/store/inventory", "[{api_key: []}]", [(None, 404), ("read:pets write:pets", 404)]),
    ("GET /api/v3/pets", "(no such operation)", [("read:pets write:pets", 404)]),
]
DISCORD_CASES = [
    ("GET /api/v10/users/@me", "[{BotToken: []}, {OAuth2: [identify]}]", [("identify", 200), ("email guilds", 403), (None, 401)]),
    ("GET /api/v10/users/@me/guilds/42/member", "[{OAuth2: [guilds.members.read]}]", [("guilds.members.read", 200), ("guilds", 403), (None, 401)]),
    ("PUT /api/v10/users/@me/applications/1/role-connection", "[{OAuth2: [role_connections.write]}]", [("role_connections.write", 200), ("identify", 403)]),
    ("PATCH /api/v10/applications/1/guilds/2/commands/3", "[{BotToken: []}, {OAuth2: [applications.commands.update]}]",
     [("applications.commands.update", 200), ("applications.commands", 403)]),
    ("GET /api/v10/lobbies/9/messages", "[{BotToken: []}, {OAuth2: []}]", [("", 200), (None, 401)]),
    ("GET /api/v10/invites/abc", "[{}, {BotToken: []}]", [(None, 200)]),
    ("POST /api/v10/webhooks/1/tok/slack", "[{}, {BotToken: []}]", [(None, 200)]),
    ("GET /api/v10/guilds/5/widget.json", "[{}, {BotToken: []}]", [(None, 200)]),
    ("GET /api/v10/guilds/5/roles", "[{BotToken: []}]", [(None, 404), (ALL_DISCORD, 404)]),
    ("GET /api/v10/oauth2/@me", "[{BotToken: []}, {OAuth2: [<all 35 scopes>]}] (read as all together)", [(ALL_DISCORD, 200), ("identify", 403)]),
]
DISCORD_ANY_CASES = [  # --within any: Discord's one object listing every scope means any one of them
    ("GET /api/v10/oauth2/@me", "[{BotToken: []}, {OAuth2: [<all 35 scopes>]}] (read as any one)", [("identify", 200), ("", 403), (None, 401)]),
    ("GET /api/v10/users/@me", "[{BotToken: []}, {OAuth2: [identify]}]", [("identify", 200), ("email", 403)]),
]


def _flatten(cases: list[tuple[str, str, list[tuple[str | None, int]]]]) -> list[Any]:
    return [pytest.param(line, scopes, status, id=f"{line} {scopes} -> {status}") for line, _, outcomes in cases for scopes, status in outcomes]


@pytest.mark.anyio
@pytest.mark.parametrize("gateway", [(PETSTORE, "--allow-public")], indirect=True)
@pytest.mark.parametrize(("line", "scopes", "status"), _flatten(PETSTORE_CASES))
async def test_the_petstore_is_decided_as_its_spec_says(gateway: httpx.AsyncClient, line: str, scopes: str | None, status: int) -> None:
    assert await decide(gateway, line, scopes) == status


@pytest.mark.anyio
@pytest.mark.parametrize("gateway", [(DISCORD, "--allow-public")], indirect=True)
@pytest.mark.parametrize(("line", "scopes", "status"), _flatten(DISCORD_CASES))
async def test_discord_is_decided_as_its_spec_says(gateway: httpx.AsyncClient, line: str, scopes: str | None, status: int) -> None:
    assert await decide(gateway, line, scopes) == status


@pytest.mark.anyio
@pytest.mark.parametrize("gateway", [(DISCORD, "--allow-public", "--within", "any")], indirect=True)
@pytest.mark.parametrize(("line", "scopes", "status"), _flatten(DISCORD_ANY_CASES))
async def test_discord_within_any_reads_one_object_as_alternatives(gateway: httpx.AsyncClient, line: str, scopes: str | None, status: int) -> None:
    assert await decide(gateway, line, scopes) == status


# --- coverage ---------------------------------------------------------------------------------

def edit(config: Path, old: str, new: str) -> None:
    table = config.parent / "routes" / "payments.yaml"
    text = table.read_text()
    assert old in text
    table.write_text(text.replace(old, new))


def coverage(run: Run, config: Path, spec: Path, name: str, *options: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run("coverage", "--openapi", spec, "--api", name, "--config", config, "--json", *options)
    return code, json.loads(out) if out else {"error": out + err}


def test_coverage_names_each_difference_from_the_spec(tmp_path: Path, run: Run) -> None:
    config, _, _ = import_table(run, tmp_path, PETSTORE, "--allow-public", "--name", "pets")
    edit(config, "  DELETE /api/v3/pet/{petId}: [[read:pets, write:pets]]   # deletePet\n", "")
    edit(config, "GET /api/v3/user/login: public", "GET /api/v3/user/login: read:pets")
    edit(config, "PUT /api/v3/pet: [[read:pets, write:pets]]", "PUT /api/v3/pet: [write:pets, read:pets]")
    edit(config, "routes:\n", "routes:\n  GET /api/v3/admin: authenticated\n")
    code, report = coverage(run, config, PETSTORE, "pets")
    assert code == 1
    assert report["missing_routes"] == ["DELETE /api/v3/pet/{petId}"]
    assert report["undocumented_routes"] == ["GET /api/v3/admin"]
    assert report["differing"] == [
        {"method": "PUT", "template": "/api/v3/pet", "spec": [["read:pets", "write:pets"]], "table": [["read:pets"], ["write:pets"]]},
        {"method": "GET", "template": "/api/v3/user/login", "spec": "public", "table": [["read:pets"]]},
    ]
    assert report["not_enforceable"] == ["GET /api/v3/store/inventory"]
    code, out, _ = run("coverage", "--openapi", PETSTORE, "--api", "pets", "--config", config)
    assert code == 1
    assert "missing route: DELETE /api/v3/pet/{petId} (#/paths/~1pet~1{petId}/delete)" in out
    assert "undocumented route: GET /api/v3/admin" in out
    assert "differs: PUT /api/v3/pet" in out and "not enforceable: GET /api/v3/store/inventory" in out


def test_coverage_applies_the_catalogs_implications_before_comparing(tmp_path: Path, run: Run) -> None:
    config, _, _ = import_table(run, tmp_path, PETSTORE, "--allow-public", "--name", "pets")
    # holding write:pets is holding read:pets too: [write:pets] then lets the same tokens through as [[read:pets, write:pets]]
    edit(config, "  write:pets:\n", "  write:pets:\n    implies: [read:pets]\n")
    edit(config, "PUT /api/v3/pet: [[read:pets, write:pets]]", "PUT /api/v3/pet: write:pets")
    assert coverage(run, config, PETSTORE, "pets")[0] == 0
    edit(config, "PUT /api/v3/pet: write:pets", "PUT /api/v3/pet: read:pets")  # read alone lets more through
    code, report = coverage(run, config, PETSTORE, "pets")
    assert code == 1 and report["differing"][0]["table"] == [["read:pets"]]


def test_coverage_reads_the_spec_with_the_options_the_import_recorded(tmp_path: Path, run: Run) -> None:
    config, table, _ = import_table(run, tmp_path, DISCORD, "--allow-public", "--within", "any", "--name", "discord")
    assert "# import options: --within any --allow-public\n" in table
    assert coverage(run, config, DISCORD, "discord")[0] == 0
    code, report = coverage(run, config, DISCORD, "discord", "--within", "all")  # given again, they win
    assert code == 1 and {d["template"] for d in report["differing"]} >= {"/api/v10/oauth2/@me"}


def test_coverage_exits_2_on_an_unreadable_spec_config_or_table_name(tmp_path: Path, run: Run) -> None:
    config, _, _ = import_table(run, tmp_path, PETSTORE, "--allow-public", "--name", "pets")
    bad = tmp_path / "bad.yaml"
    bad.write_text("openapi: 3.0.3\npaths: {/a: {$ref: 'other.yaml#/A'}}\ninfo: {title: t, version: '1'}\n")
    assert run("coverage", "--openapi", bad, "--api", "pets", "--config", config)[0] == 2
    assert run("coverage", "--openapi", PETSTORE, "--api", "nobody", "--config", config)[0] == 2
    assert run("coverage", "--openapi", PETSTORE, "--api", "pets", "--config", tmp_path / "absent.yaml")[0] == 2


def test_a_ref_inside_example_data_is_data_not_a_reference(tmp_path: Path, run: Run) -> None:
    example = {"$ref": "other.yaml#/looks/like/a/reference"}
    spec = spec_file(tmp_path, {"/a": {"get": {"security": [{"oauth": ["read"]}], "responses": {"200": {
        "description": "ok", "content": {"application/json": {"schema": {"type": "object", "example": example}, "example": example}}}}}}})
    code, out, err = run("import", "openapi", spec)
    assert code == 0, err
    assert routes_of(out) == {"GET /v1/a": "read"}
