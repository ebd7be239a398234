"""OpenAPI 3.0 and 3.1 descriptions read into what a bearer-token gateway can enforce, and written
out as a route table (`gateway import openapi`; `gateway.coverage` compares a table with the same
reading).

    file -> YAML or JSON -> OpenAPI's own JSON Schema -> every `$ref` local -> servers[0]
         -> each operation: its template, its effective security as any-of / all-of scopes
         -> the catalog: every scope of every OAuth flow, with its description

An operation the gateway cannot enforce exactly (API-key or HTTP-auth only, TRACE, a path
parameter that is not a whole segment) is kept apart with the reason, never widened: left out of
a table, the gateway answers it 404.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from gateway.routing import parse_template
from gateway.scopes import SCOPE_TOKEN, Access, Requirement, all_of

# OpenAPI's fixed field names of a path item, in its own order
_SPEC_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_SCOPED_TYPES = ("oauth2", "openIdConnect")
_WITHIN = ("all", "any")
# members holding literal data, where a "$ref" is a value like any other
_LITERAL_KEYS = frozenset({"example", "default", "enum", "const", "value"})
_SEGMENT_PARAMETER = re.compile(r"\{([^{}/]+)\}")
_OPTIONS_LINE = "# import options:"


class SpecError(Exception):
    """The description cannot be read: the message names the file and the JSON pointer."""


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How security requirements are read; recorded in an imported table so `coverage` reads alike."""

    scheme: str | None = None  # only this OAuth2 / OpenID Connect scheme; None: every one
    within: str = "all"  # the scopes of one requirement object: all together, or any one
    allow_public: bool = False

    def comment(self) -> str:
        words = ["--within", self.within]
        if self.scheme is not None:
            words += ["--scheme", self.scheme]
        if self.allow_public:
            words.append("--allow-public")
        return f"{_OPTIONS_LINE} {shlex.join(words)}"

    @classmethod
    def from_table(cls, text: str) -> ReadOptions | None:
        """The options an imported table's header comment records, or None if it records none."""
        for line in text.splitlines():
            if not line.startswith("#"):
                break
            if line.startswith(_OPTIONS_LINE):
                words = shlex.split(line[len(_OPTIONS_LINE):])
                values = dict(zip(words[::2], words[1::2]))
                return cls(scheme=values.get("--scheme"), within=values.get("--within", "all") if values.get("--within") in _WITHIN else "all",
                           allow_public="--allow-public" in words)
        return None


@dataclass(frozen=True, slots=True)
class Operation:
    method: str  # upper case
    template: str  # servers[0]'s base path + the spec's path, as a gateway template
    pointer: str  # "#/paths/~1pets/get"
    operation_id: str | None
    requirement: Requirement | None  # None: not enforceable, see `reason`
    hide: bool = False
    reason: str = ""

    @property
    def key(self) -> str:
        return f"{self.method} {self.template}"


@dataclass(frozen=True, slots=True)
class Spec:
    """What a description says that a gateway can enforce."""

    source: str  # the file's name
    title: str
    version: str  # info.version
    openapi: str
    origin: str | None  # servers[0]'s scheme://host[:port]; None when it is relative
    catalog: Mapping[str, str | None]  # scope -> description, in document order
    undeclared: tuple[str, ...]  # scopes a requirement names that no OAuth flow declares
    operations: tuple[Operation, ...]  # in document order, enforceable or not

    @property
    def enforceable(self) -> tuple[Operation, ...]:
        return tuple(operation for operation in self.operations if operation.requirement is not None)

    @property
    def not_enforceable(self) -> tuple[Operation, ...]:
        return tuple(operation for operation in self.operations if operation.requirement is None)


def read_spec(path: str | Path, options: ReadOptions = ReadOptions()) -> Spec:
    """Read and check one description.

    :raises SpecError: it cannot be read, is not a valid OpenAPI 3.0 / 3.1 document, names a
        `$ref` outside the file or one that points nowhere, or `options` do not fit it.
    """
    path = Path(path)
    document = _parse(path)
    _validate(path, document)
    return _SpecReader(path, document, options).read()


def _parse(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        if text.lstrip().startswith("{"):
            document = json.loads(text)
        else:
            document = _key_strings(yaml.load(text, Loader=_SpecLoader))
    except (ValueError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: not YAML or JSON: {exc}") from None
    if not isinstance(document, dict):
        raise SpecError(f"{path}#: an OpenAPI document is a mapping")
    version = document.get("openapi")
    if not isinstance(version, str) or not re.match(r"3\.[01]\.", version):
        found = f"openapi: {version}" if version is not None else ("swagger: 2.0" if "swagger" in document else "no 'openapi' member")
        raise SpecError(f"{path}#/openapi: only OpenAPI 3.0 and 3.1 are read ({found})")
    return document


class _SpecLoader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]  # a base chosen at import (libyaml's when built)
    """YAML as JSON sees it: an unquoted date stays a string (OpenAPI's own schema types it so)."""


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _key_strings(value: Any) -> Any:
    """Mapping keys as JSON has them: YAML reads `200:` as an integer and `on:` as true."""
    if isinstance(value, dict):
        return {_key(key): _key_strings(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_key_strings(item) for item in value]
    return value


def _key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return "null" if key is None else str(key)


def _validate(path: Path, document: dict[str, Any]) -> None:
    """Check the document against OpenAPI's published JSON Schema of its version (only the
    structure: the data schemas inside are not run, as what they say does not touch security)."""
    from openapi_spec_validator.schemas import (
        openapi_v30_schema_validator,
        openapi_v31_schema_validator,
    )

    validator = openapi_v31_schema_validator if document["openapi"].startswith("3.1") else openapi_v30_schema_validator
    errors = sorted(validator.iter_errors(document), key=lambda error: [str(part) for part in error.path])
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SpecError(f"{path}{_pointer(*first.path)}: not valid OpenAPI {document['openapi']}: {first.message}{more}")
    for pointer, ref in _refs(document, "#"):
        if not ref.startswith("#"):
            raise SpecError(f"{path}{pointer}: $ref {ref!r} points outside the file (only local references, '#/...', are read)")
        _resolve(path, document, ref, pointer)


def _refs(value: Any, pointer: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str):
            yield f"{pointer}/$ref", ref
        for key, item in value.items():
            if key not in _LITERAL_KEYS and not (key == "examples" and isinstance(item, list)):
                yield from _refs(item, f"{pointer}/{_escape(key)}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _refs(item, f"{pointer}/{index}")


def _resolve(path: Path, document: dict[str, Any], ref: str, pointer: str) -> Any:
    target: Any = document
    for part in unquote(ref[1:]).split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            raise SpecError(f"{path}{pointer}: $ref {ref!r} points to nothing in the file")
    return target


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _pointer(*parts: Any) -> str:
    return "#" + "".join(f"/{_escape(str(part))}" for part in parts)


class _SpecReader:
    def __init__(self, path: Path, document: dict[str, Any], options: ReadOptions) -> None:
        self.path = path
        self.document = document
        self.options = options
        self.schemes: dict[str, dict[str, Any]] = {}
        self.catalog: dict[str, str | None] = {}
        self.undeclared: dict[str, None] = {}

    def fail(self, pointer: str, message: str) -> SpecError:
        return SpecError(f"{self.path}{pointer}: {message}")

    def deref(self, value: Any, pointer: str) -> Any:
        """`value`, or what its `$ref` (and theirs, in turn) points to; siblings of a `$ref` win."""
        seen: set[str] = set()
        while isinstance(value, dict) and isinstance(value.get("$ref"), str):
            ref = value["$ref"]
            if ref in seen:
                raise self.fail(pointer, f"$ref {ref!r} refers to itself")
            seen.add(ref)
            siblings = {key: item for key, item in value.items() if key != "$ref"}
            target = _resolve(self.path, self.document, ref, pointer)
            value = {**target, **siblings} if isinstance(target, dict) else target
        return value

    def read(self) -> Spec:
        document, options = self.document, self.options
        info = document.get("info", {})
        origin, base_path = self._server()
        raw_schemes = document.get("components", {}).get("securitySchemes", {})
        for name, scheme in raw_schemes.items():
            self.schemes[name] = self.deref(scheme, _pointer("components", "securitySchemes", name))
        if options.within not in _WITHIN:
            raise SpecError(f"--within must be one of {', '.join(_WITHIN)}, not {options.within!r}")
        if options.scheme is not None:
            scheme = self.schemes.get(options.scheme)
            if scheme is None or scheme.get("type") not in _SCOPED_TYPES:
                offered = [name for name, scheme in self.schemes.items() if scheme.get("type") in _SCOPED_TYPES]
                raise self.fail(_pointer("components", "securitySchemes"), f"--scheme {options.scheme}: no oauth2 or openIdConnect "
                                f"scheme of that name (the document has: {', '.join(offered) or 'none'})")
        for name, scheme in self.schemes.items():
            if scheme.get("type") == "oauth2" and options.scheme in (None, name):
                self._flows(name, scheme)
        operations = list(self._operations(base_path))
        return Spec(
            source=self.path.name, title=str(info.get("title", "")), version=str(info.get("version", "")), openapi=document["openapi"],
            origin=origin, catalog=dict(self.catalog), undeclared=tuple(self.undeclared), operations=_apart_if_same(operations),
        )

    def _server(self) -> tuple[str | None, str]:
        servers = self.document.get("servers") or [{"url": "/"}]
        server, pointer = servers[0], _pointer("servers", 0, "url")
        url = server["url"]
        variables = server.get("variables", {})

        def default(match: re.Match[str]) -> str:
            variable = variables.get(match.group(1))
            if variable is None or "default" not in variable:
                raise self.fail(pointer, f"server variable {{{match.group(1)}}} has no default")
            return str(variable["default"])

        url = re.sub(r"\{([^{}]*)\}", default, url)
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None
        base_path = unquote(parts.path).rstrip("/")
        if base_path and not base_path.startswith("/"):
            base_path = "/" + base_path  # relative to wherever the document is served: read from its root
        try:
            if None in parse_template(base_path or "/"):
                raise ValueError("holds a {parameter}")
        except ValueError as exc:
            raise self.fail(pointer, f"the base path {base_path!r} cannot prefix gateway templates: {exc}") from None
        return origin, base_path

    def _flows(self, name: str, scheme: dict[str, Any]) -> None:
        for flow_name, flow in scheme.get("flows", {}).items():
            for scope, description in flow.get("scopes", {}).items():
                pointer = _pointer("components", "securitySchemes", name, "flows", flow_name, "scopes", scope)
                if scope not in self.catalog:
                    self._check_scope(scope, pointer)
                    self.catalog[scope] = str(description).strip() or None if description is not None else None

    def _check_scope(self, scope: str, pointer: str) -> None:
        if not SCOPE_TOKEN.fullmatch(scope) or "{" in scope or "}" in scope or scope in ("public", "authenticated"):
            raise self.fail(pointer, f"scope {scope!r} cannot be written in a route table (spaces, quotes, backslashes, "
                            "braces and the words public and authenticated are not scopes there)")

    def _operations(self, base_path: str) -> Iterator[Operation]:
        top = self.document.get("security")
        for spec_path, raw_item in self.document.get("paths", {}).items():
            item = self.deref(raw_item, _pointer("paths", spec_path))
            template, problem = _template(base_path, spec_path)
            for method in _SPEC_METHODS:
                if method not in item:
                    continue
                operation = item[method]
                pointer = _pointer("paths", spec_path, method)
                operation_id = operation.get("operationId")
                shown = template or base_path + spec_path
                hide = operation.get("x-gateway-hide") is True
                if method == "trace":
                    yield Operation("TRACE", shown, pointer, operation_id, None, hide, "the gateway routes no TRACE requests")
                    continue
                if problem:
                    yield Operation(method.upper(), shown, pointer, operation_id, None, hide, problem)
                    continue
                security = operation.get("security", top)
                security_pointer = f"{pointer}/security" if "security" in operation else "#/security"
                requirement, reason = self._requirement(security, security_pointer)
                yield Operation(method.upper(), shown, pointer, operation_id, requirement, hide, reason)

    def _requirement(self, security: list[dict[str, list[str]]] | None, pointer: str) -> tuple[Requirement | None, str]:
        """Any one of the requirement objects; in each, every scheme together."""
        if not security:
            return Requirement(Access.PUBLIC), ""
        alternatives: list[Requirement] = []
        other: list[str] = []
        for index, requirement_object in enumerate(security):
            if not requirement_object:
                return Requirement(Access.PUBLIC), ""
            parts = []
            for name, scopes in requirement_object.items():
                scheme = self.schemes.get(name)
                if scheme is None:
                    raise self.fail(f"{pointer}/{index}", f"names security scheme {name!r}, which components.securitySchemes lacks")
                if scheme.get("type") not in _SCOPED_TYPES or self.options.scheme not in (None, name):
                    other.append(name)
                    continue
                parts.append(self._scheme_requirement(name, scheme, scopes, f"{pointer}/{index}/{_escape(name)}"))
            if parts:
                alternatives.append(all_of(parts))
        if not alternatives:
            wanted = f"the scheme {self.options.scheme}" if self.options.scheme else "an oauth2 or openIdConnect scheme"
            return None, f"no requirement names {wanted} (only {', '.join(dict.fromkeys(other))})"
        if any(alternative.access is Access.AUTHENTICATED for alternative in alternatives):
            return Requirement(Access.AUTHENTICATED), ""
        found = [alternative for requirement in alternatives for alternative in requirement.alternatives]
        kept = tuple(dict.fromkeys(alternative for alternative in found if not any(other < alternative for other in found)))
        return Requirement(Access.SCOPES, kept), ""

    def _scheme_requirement(self, name: str, scheme: dict[str, Any], scopes: list[str], pointer: str) -> Requirement:
        if not scopes:
            return Requirement(Access.AUTHENTICATED)
        for index, scope in enumerate(scopes):
            self._check_scope(scope, f"{pointer}/{index}")
            if scope not in self.catalog:
                if scheme.get("type") == "oauth2":
                    self.undeclared[scope] = None
                self.catalog[scope] = None
        if self.options.within == "any":
            return Requirement(Access.SCOPES, tuple(dict.fromkeys(frozenset({scope}) for scope in scopes)))
        return Requirement(Access.SCOPES, (frozenset(scopes),))


def _template(base_path: str, spec_path: str) -> tuple[str, str]:
    """The gateway template of a spec path, or ('', why it has none). A parameter name the
    gateway's template syntax lacks (`{pet-id}`) is renamed: the name never changes what matches."""
    segments = []
    names: set[str] = set()
    for segment in spec_path.strip("/").split("/") if spec_path.strip("/") else []:
        parameter = _SEGMENT_PARAMETER.fullmatch(segment)
        if parameter:
            name = re.sub(r"\W", "_", parameter.group(1), flags=re.ASCII)
            name = name if re.match(r"[A-Za-z_]", name) else f"_{name}"
            while name in names:
                name += "_"
            names.add(name)
            segments.append(f"{{{name}}}")
        elif "{" in segment or "}" in segment:
            return "", f"the path parameter in segment {segment!r} is not a whole segment, which a gateway template cannot express"
        else:
            segments.append(segment)
    template = base_path + "/" + "/".join(segments) if segments else base_path or "/"
    if spec_path != "/" and spec_path.endswith("/"):
        return "", "a path ending in '/' is refused by the gateway (400) before any route"
    try:
        parse_template(template)
    except ValueError as exc:
        return "", f"not a gateway template: {exc}"
    return template, ""


def _apart_if_same(operations: list[Operation]) -> tuple[Operation, ...]:
    """Two operations the gateway cannot tell apart (`/a/{x}` and `/a/{y}`) are both left out:
    routing one's requests by the other's requirement could let a weaker one decide."""
    seen: dict[tuple[str, tuple[str | None, ...]], Operation] = {}
    clashes: dict[str, str] = {}
    for operation in operations:
        if operation.requirement is None:
            continue
        key = (operation.method, parse_template(operation.template))
        first = seen.setdefault(key, operation)
        if first is not operation:
            clashes[operation.pointer] = first.pointer
            clashes.setdefault(first.pointer, operation.pointer)
    return tuple(
        Operation(operation.method, operation.template, operation.pointer, operation.operation_id, None, operation.hide,
                  f"the gateway cannot tell it from {clashes[operation.pointer]}")
        if operation.pointer in clashes else operation
        for operation in operations
    )


def default_name(spec: Spec) -> str:
    """A table name from the title: 'Swagger Petstore - OpenAPI 3.0' -> 'swagger-petstore-openapi-3.0'."""
    name = re.sub(r"[^a-z0-9._]+", "-", spec.title.lower()).strip("-._")
    return name or Path(spec.source).stem.lower() or "api"


def write_table(spec: Spec, *, name: str, upstream: str, prefix: str | None, options: ReadOptions) -> str:
    """The route table of `spec`'s enforceable operations, as YAML text: the same bytes for the
    same description and options. Public operations are written only with `options.allow_public`."""
    title = " ".join(f"{spec.title} {spec.version}".split())
    lines = [
        f"# Imported from {_one_line(spec.source)} ({_one_line(title)}, OpenAPI {spec.openapi}) by `gateway import openapi`.",
        options.comment(),
        f"name: {_scalar(name)}",
        f"upstream: {_scalar(upstream)}",
    ]
    if prefix:
        lines.append(f"prefix: {_scalar(prefix)}")
    if spec.catalog:
        lines.append("scopes:")
        for scope, description in spec.catalog.items():
            lines.append(f"  {_scalar(scope)}:" + (f"\n    description: {_scalar(description)}" if description else ""))
    lines.append("routes:" if spec.enforceable else "routes: {}")
    for operation in spec.enforceable:
        assert operation.requirement is not None
        value = _requirement(operation.requirement)
        if operation.hide:
            value = f"{{scopes: {value}, hide: true}}"
        comment = f"   # {_one_line(operation.operation_id)}" if operation.operation_id else ""
        lines.append(f"  {_scalar(operation.key)}: {value}{comment}")
    return "\n".join(lines) + "\n"


def _requirement(requirement: Requirement) -> str:
    if requirement.access is not Access.SCOPES:
        return str(requirement.access.value)  # str already; mypy reads a narrowed enum's value as Any
    items = [sorted(alternative) for alternative in requirement.alternatives]
    if len(items) == 1 and len(items[0]) == 1:
        return _scalar(items[0][0])
    written = [_flow(group[0]) if len(group) == 1 else "[" + ", ".join(map(_flow, group)) + "]" for group in items]
    return "[" + ", ".join(written) + "]"


_BLOCK_PLAIN = re.compile(r"[A-Za-z0-9_/$.][A-Za-z0-9_/$.:@+=~*&!{}()' -]*")
_FLOW_PLAIN = re.compile(r"[A-Za-z0-9_/$.][A-Za-z0-9_/$.:@+=~*&!()'-]*")
_RESOLVER = yaml.resolver.Resolver()
# what YAML may not hold raw, or reads as a line break inside quotes (JSON escapes the C0 controls)
_NOT_PRINTABLE = re.compile("[\x7f-\x84\x86-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")


def _scalar(text: str) -> str:
    return _plain_or_quoted(text, _BLOCK_PLAIN)


def _flow(text: str) -> str:
    return _plain_or_quoted(text, _FLOW_PLAIN)


def _plain_or_quoted(text: str, plain: re.Pattern[str]) -> str:
    """Plain where YAML reads it back as the same string, else JSON's double quotes (YAML reads those too)."""
    if (plain.fullmatch(text) and not text.endswith((":", " ")) and ": " not in text and " #" not in text
            and _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)) == "tag:yaml.org,2002:str"):
        return text
    return _NOT_PRINTABLE.sub(lambda match: f"\\u{ord(match.group()):04x}", json.dumps(text, ensure_ascii=False))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def table_problems(text: str) -> list[str]:
    """What the gateway's own loader finds wrong in a written table (a bad --name, --prefix or
    --upstream): an import writes nothing rather than a table that would not load."""
    import tempfile

    from gateway.loading.nodes import Reader
    from gateway.loading.tables import load_tables

    with tempfile.TemporaryDirectory() as folder:
        table = Path(folder) / "imported.yaml"
        table.write_text(text, encoding="utf-8")
        reader = Reader()
        load_tables(reader, table, yaml.ScalarNode("tag:yaml.org,2002:str", str(table)), live=False)
        return [f"line {problem.line} of the table: {problem.message}" for problem in reader.problems]
