"""GraphQL operations checked field by field (docs/route-tables.md, "GraphQL routes"): the `Exchange` of
a route with `graphql:`.

    request -> envelope: GET ?query= / POST application/json (or a batch) / application/graphql
            -> document: parsed and validated with graphql-core, measured against the limits,
               its operation chosen as the GraphQL spec says        400 invalid_request
               (cached by its text and operation name: a repeated operation costs a lookup)
            -> each field that can run checked against its requirement
                                                                    403 forbidden / 401 (no token)
            -> reject: forwarded byte for byte; filter: refused fields removed from the
               document, and answered as null with one error each

Requirements are a function of (type, field): the route's `fields:`, the SDL's
`@requiresScopes` / `@authenticated` on the field, on its parent type and on the type it
returns; a field also needs what that field of each interface its type implements needs, and an
interface's field what each implementation's needs. The analysis of a
document is cached; the check against the caller's effective scopes runs on every request.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus, urlencode

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
    build_schema,
    parse,
    print_ast,
    specified_rules,
    validate,
)
from graphql.validation import (
    ExecutableDefinitionsRule,
    KnownFragmentNamesRule,
    LoneAnonymousOperationRule,
    NoFragmentCyclesRule,
    NoUndefinedVariablesRule,
    NoUnusedFragmentsRule,
    NoUnusedVariablesRule,
    UniqueArgumentNamesRule,
    UniqueFragmentNamesRule,
    UniqueOperationNamesRule,
    UniqueVariableNamesRule,
)

from gateway.credentials import read_names
from gateway.errors import InvalidRequest, Refusal, UnsupportedMediaType
from gateway.fields import decoded, is_json
from gateway.scopes import Access, Allowed, Requirement, Unmet
from gateway.tables import Forwarding
from gateway.types import Headers, Scope

MODES = ("reject", "filter")
INTROSPECTION = frozenset({"__schema", "__type"})
# field selections one document may expand to through its fragments: a few fragments that each
# spread the one before twice would otherwise cost the gateway (and the upstream) 2^n
MAX_EXPANDED_FIELDS = 10_000
# distinct (document, operation name) analyses a route keeps, and distinct small POST bodies read
CACHE_SIZE = 1024
MAX_REMEMBERED_BODY = 4096
_PARAMETERS = frozenset({"query", "operationName", "variables", "extensions"})
# names under which some servers (graphql-yoga, Relay) take a persisted document's id: never passed
_DOCUMENT_IDS = frozenset({"documentId", "doc_id"})
# a GET parameter's name, as sent: only these bytes name a parameter the gateway reads, so no
# server can read `query` where the gateway read something else (PHP drops a name's leading
# spaces and cuts it at a NUL, so `%20query` and `query%00` are `query` there)
_RAW_PARAMETERS = frozenset(name.encode("ascii") for name in _PARAMETERS)
# a POST's URL parameters must not read as these on any server (in any case: ASP.NET ignores it)
_READ_NAMES = frozenset(name.lower().encode("ascii") for name in _PARAMETERS | _DOCUMENT_IDS)
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# rules that need no schema: without an SDL the document is still well-formed, its fragments
# known and acyclic, and its operations named as the spec asks
_SCHEMALESS_RULES = (
    ExecutableDefinitionsRule, UniqueOperationNamesRule, LoneAnonymousOperationRule, UniqueFragmentNamesRule, KnownFragmentNamesRule,
    NoUnusedFragmentsRule, NoFragmentCyclesRule, UniqueVariableNamesRule, NoUndefinedVariablesRule, NoUnusedVariablesRule,
    UniqueArgumentNamesRule,
)
_PLACEHOLDER_SCHEMA = build_schema("type Query { _: Boolean }")


@dataclass(frozen=True, slots=True)
class GraphQLLimits:
    """What one request may ask, each over its bound a 400 (README.md documents the same defaults)."""

    bytes: int = 65536  # request body (or GET query) bytes
    depth: int = 12  # fields nested in one another, through fragments
    aliases: int = 30  # aliased fields of one operation, through fragments
    root_fields: int = 10  # fields selected at an operation's root, through fragments
    batch: int = 10  # operations in one batched (JSON array) request


@dataclass(frozen=True, slots=True)
class Operation:
    """What one document and operation name ask, worked out once: the cached analysis."""

    kind: OperationType
    operation: OperationDefinitionNode
    fragments: Mapping[str, FragmentDefinitionNode]
    # (Type.field, response path of its first occurrence) of each checked field, once each
    needs: tuple[tuple[str, tuple[str, ...]], ...]
    # every occurrence of a checked field, for filter mode: (node, Type.field, response path)
    occurrences: tuple[tuple[FieldNode, str, tuple[str, ...]], ...]


@dataclass(slots=True)
class _Part:
    """One GraphQL request of a body (a batch holds several)."""

    members: dict[str, Any]  # the JSON object, or the GET parameters read as one
    text: str  # the document analysed
    operation_name: str | None
    persisted: bool  # `text` came from the manifest: the client sent only its hash


@dataclass(slots=True)
class _Refused:
    key: str
    path: tuple[str, ...]
    requirement: Requirement | None  # None: covered by nothing (deny by default)


class GraphQLRoute:
    """The `Exchange` of a route with `graphql:`.

    :param schema: the route's SDL built, or None: then only root fields are checked.
    :param requirements: `Type.field` -> what it needs (the SDL's directives and the route's
        `fields:` merged); a root field without an entry is refused.
    :param root_types: the names of the query, mutation and subscription types.
    """

    def __init__(
        self, *, schema: GraphQLSchema | None, requirements: Mapping[str, Requirement], root_types: Mapping[OperationType, str],
        mode: str = "reject", limits: GraphQLLimits = GraphQLLimits(), persisted: Mapping[str, str] | None = None,
    ) -> None:
        self.schema = schema
        self.requirements = dict(requirements)
        self.root_types = dict(root_types)
        self.mode = mode
        self.limits = limits
        self.persisted = dict(persisted or {})
        self.body_limit = limits.bytes
        # bounded, per route; failures are not kept (lru_cache keeps no exception)
        self.analyse = functools.lru_cache(maxsize=CACHE_SIZE)(self._analyse)
        self.read = functools.lru_cache(maxsize=CACHE_SIZE)(self._read_post)

    option = "graphql"
    graphql = True

    async def prepare(self, scope: Scope, body: bytes | None, allowed: Allowed | None) -> Forwarding:
        """Refuse the request, or say how to forward it.

        :raises InvalidRequest: a request that is not one GraphQL can read unambiguously, a
            document that does not parse or validate, or one over a limit (400; 415 for a body
            of another media type).
        :raises Unmet: fields the caller may not use (in reject mode, or every field in filter
            mode), or that need a token on a public route called without one.
        """
        get = scope["method"] in ("GET", "HEAD")
        parts, batch, operations = self.operations(scope, body)
        scopes = allowed.scopes if allowed is not None else None
        refused = [self._refused(operation, scopes) for operation in operations]
        if not any(refused):
            return Forwarding() if get else Forwarding(body=body or b"")
        if self.mode == "reject":
            raise _unmet(refused, allowed is None, batch)
        return self._filtered(scope, parts, operations, refused, batch, allowed is None, get)

    async def describe(self, scope: Scope, body: bytes | None, allowed: Allowed | None) -> list[str]:
        """The operation chosen, each field that can run against its requirement, and what filter
        mode would make of the request.

        :raises Refusal: the request cannot be read, as `prepare` refuses it.
        """
        lines = []
        _, _, operations = self.operations(scope, body)
        scopes = allowed.scopes if allowed is not None else None
        refused = False
        for operation in operations:
            name = operation.operation.name.value if operation.operation.name is not None else "(anonymous)"
            lines.append(f"graphql:   {operation.kind.value} {name}")
            for key, path, requirement, met in self.field_checks(operation, scopes):
                needs = "no requirement covers it (deny by default)" if requirement is None else f"requires {requirement.describe()}"
                lines.append(f"           {key} at {'.'.join(path)}: {needs}: {'met' if met else 'refused'}")
                refused = refused or not met
        if refused and self.mode == "filter" and await self._filters(scope, body, allowed):
            lines.append("           filter mode: the refused fields are removed, and answered as null with an error each")
        return lines

    async def _filters(self, scope: Scope, body: bytes | None, allowed: Allowed | None) -> bool:
        """Whether filter mode forwards what is left (else it refuses: nothing is left to ask)."""
        try:
            await self.prepare(scope, body, allowed)
        except Unmet:
            return False
        return True

    def operations(self, scope: Scope, body: bytes | None) -> tuple[list[_Part], bool, tuple[Operation, ...]]:
        """The request's parts, whether it is a batch, and the analysis of each part's operation.

        :raises InvalidRequest: as `prepare` (the request cannot be read, or its document is not
            valid or over a limit).
        """
        if scope["method"] in ("GET", "HEAD"):
            parts, batch = self._read_get(scope, body)
            operations: tuple[Operation, ...] = (self.analyse(parts[0].text, parts[0].operation_name),)
            if operations[0].kind is not OperationType.QUERY:
                raise _bad_request(f"a {operations[0].kind.value} cannot be sent with GET: use POST", "BAD_REQUEST")
            return parts, batch, operations
        body = body or b""
        media_type = self._post_media_type(scope)
        # a small body is remembered whole: a repeated request skips JSON parsing too
        read = self.read if len(body) <= MAX_REMEMBERED_BODY else self._read_post
        return read(media_type, body)

    def field_checks(self, operation: Operation, scopes: frozenset[str] | None) -> list[tuple[str, tuple[str, ...], Requirement | None, bool]]:
        """Each field of `operation` that is checked: its `Type.field`, its response path, its
        requirement (None: none covers it) and whether `scopes` meet it (None: no token). For
        explanations: the request itself is checked by `prepare`."""
        refused = {item.key for item in self._refused(operation, scopes)}
        return [(key, path, self.requirements.get(key), key not in refused) for key, path in operation.needs]

    # --- reading the request ---------------------------------------------------------------------

    def _read_get(self, scope: Scope, body: bytes | None) -> tuple[list[_Part], bool]:
        if body:
            raise _bad_request("a GET request to a GraphQL route carries no body: its operation is in the query string", "BAD_REQUEST")
        query_string: bytes = scope.get("query_string", b"")
        if len(query_string) > self.limits.bytes:
            raise _bad_request(f"the query string is longer than {self.limits.bytes} bytes, the most this route reads", "BAD_REQUEST")
        if b";" in query_string:
            # some servers split parameters on ';' as well as '&': a second `query` could hide there
            raise _bad_request("the query string holds a raw ';', which servers split differently: percent-encode it", "BAD_REQUEST")
        members: dict[str, Any] = {}
        for piece in query_string.split(b"&") if query_string else ():
            raw_name, equals, raw_value = piece.partition(b"=")
            if raw_name not in _RAW_PARAMETERS:
                shown = repr(raw_name.decode("latin-1")[:40])
                raise _bad_request(
                    f"unknown query parameter {shown}: a GraphQL GET takes only {', '.join(sorted(_PARAMETERS))}, each named as written and once", "BAD_REQUEST",
                )
            name = raw_name.decode("ascii")
            if not equals:
                raise _bad_request(f"the query parameter {name!r} has no '=' and no value", "BAD_REQUEST")
            if name in members:
                raise _bad_request(f"the query string names {name!r} twice: the upstream might read the other one", "BAD_REQUEST")
            members[name] = _parameter_value(name, raw_value)
        for name in ("variables", "extensions"):
            if name in members:
                members[name] = _json(members[name].encode("utf-8"), f"the {name} parameter")
        return [self._part(members)], False

    @staticmethod
    def _post_media_type(scope: Scope) -> str:
        query_string: bytes = scope.get("query_string", b"")
        # express-graphql reads `query` from the URL before the body, Laravel takes members the
        # body lacks from it: only one place may hold them, under any name a server reads as one
        for parameter in re.split(rb"[&;]", query_string) if query_string else ():
            name = parameter.partition(b"=")[0]
            if any(read.lower() in _READ_NAMES for read in read_names(name)):
                shown = repr(name.decode("latin-1")[:40])
                raise _bad_request(f"a POST carries its operation in the body, not in the query string (a parameter {shown})", "BAD_REQUEST")
        return _media_type(scope)

    def _read_post(self, media_type: str, body: bytes) -> tuple[list[_Part], bool, tuple[Operation, ...]]:
        """The parts of a POST body, whether it is a batch, and each part's analysis."""
        if media_type == "application/graphql":
            try:
                parts = [self._part({"query": body.decode("utf-8")})]
            except UnicodeDecodeError:
                raise _bad_request("the document is not valid UTF-8", "BAD_REQUEST") from None
            batch = False
        else:
            document = _json(body, "the request body")
            batch = isinstance(document, list)
            if not batch:
                parts = [self._part(_request_object(document))]
            elif not document:
                raise _bad_request("an empty batch holds no operation", "BAD_REQUEST")
            elif len(document) > self.limits.batch:
                raise _bad_request(f"the batch holds {len(document)} operations; this route takes at most {self.limits.batch}", "BAD_REQUEST")
            else:
                parts = [self._part(_request_object(item)) for item in document]
        return parts, batch, tuple(self.analyse(part.text, part.operation_name) for part in parts)

    def _part(self, members: dict[str, Any]) -> _Part:
        """The document a request's members name, checked for shape and its persisted hash."""
        for name in members:
            if name not in _PARAMETERS:
                raise _bad_request(f"unknown request member {name!r} (expected: {', '.join(sorted(_PARAMETERS))})", "BAD_REQUEST")
        query, operation_name = members.get("query"), members.get("operationName")
        variables, extensions = members.get("variables"), members.get("extensions")
        if query is not None and (not isinstance(query, str) or not query):
            raise _bad_request("`query` must be a non-empty string", "BAD_REQUEST")
        if operation_name is not None and (not isinstance(operation_name, str) or not operation_name):
            raise _bad_request("`operationName` must be a non-empty string or null", "BAD_REQUEST")
        if variables is not None and not isinstance(variables, dict):
            raise _bad_request("`variables` must be a JSON object or null", "BAD_REQUEST")
        if extensions is not None and not isinstance(extensions, dict):
            raise _bad_request("`extensions` must be a JSON object or null", "BAD_REQUEST")
        wanted = _persisted_hash(extensions)
        if wanted is not None and query is not None:
            if hashlib.sha256(query.encode("utf-8")).hexdigest() != wanted:
                raise _bad_request("extensions.persistedQuery.sha256Hash is not the SHA-256 of `query`", "BAD_REQUEST")
        elif wanted is not None:
            if wanted not in self.persisted:
                raise _bad_request("a persisted query this route does not list: send the document with its hash", "PERSISTED_QUERY_NOT_FOUND")
            return _Part(members, self.persisted[wanted], operation_name, True)
        elif query is None:
            raise _bad_request("the request holds no `query`", "BAD_REQUEST")
        if len(query.encode("utf-8")) > self.limits.bytes:
            raise _bad_request(f"the document is longer than {self.limits.bytes} bytes, the most this route reads", "BAD_REQUEST")
        return _Part(members, query, operation_name, False)

    # --- the document: parsed, validated, measured, its fields listed (cached) -----------------

    def _analyse(self, text: str, operation_name: str | None) -> Operation:
        """:raises InvalidRequest: the document does not parse, validate, or keep to the limits."""
        try:
            document = parse(text, allow_empty_selection_sets=False, max_tokens=self.limits.bytes)
        except GraphQLError as error:
            raise _bad_request(f"the document does not parse: {error.message}", "GRAPHQL_PARSE_FAILED", error) from None
        fragments = {definition.name.value: definition for definition in document.definitions if isinstance(definition, FragmentDefinitionNode)}
        operations = [definition for definition in document.definitions if isinstance(definition, OperationDefinitionNode)]
        if self.schema is None:
            errors = validate(_PLACEHOLDER_SCHEMA, document, _SCHEMALESS_RULES, max_errors=10, allow_empty_selection_sets=False)
        else:
            errors = validate(self.schema, document, specified_rules, max_errors=10, allow_empty_selection_sets=False)
        if errors:
            raise _bad_request(f"the document is not valid: {errors[0].message}", "GRAPHQL_VALIDATION_FAILED", *errors)
        budget = _Budget()
        for definition in operations:  # every operation is measured: the upstream validates them all
            self._measure(definition, fragments, budget)
        operation = _chosen(operations, operation_name)
        walk = _Walk(self, fragments)
        root = self.root_types.get(operation.operation)
        if root is None:
            raise _bad_request(f"this route's schema has no {operation.operation.value} type", "GRAPHQL_VALIDATION_FAILED")
        walk.selections(operation.selection_set, root, (), True)
        return Operation(operation.operation, operation, fragments, tuple(walk.needs.items()), tuple(walk.occurrences))

    def _measure(self, operation: OperationDefinitionNode, fragments: Mapping[str, FragmentDefinitionNode], budget: _Budget) -> None:
        """:raises InvalidRequest: the operation is deeper, wider or more aliased than the limits allow."""
        limits = self.limits
        counts = {"root": 0, "aliases": 0}

        def visit(selection_set: SelectionSetNode, depth: int) -> None:
            for selection in selection_set.selections:
                if isinstance(selection, FieldNode):
                    budget.spend()
                    if depth > limits.depth:
                        raise _bad_request(f"the operation nests fields {depth} deep; this route allows {limits.depth}", "BAD_REQUEST")
                    if depth == 1:
                        counts["root"] += 1
                    if selection.alias is not None:
                        counts["aliases"] += 1
                    if selection.selection_set is not None:
                        visit(selection.selection_set, depth + 1)
                elif isinstance(selection, InlineFragmentNode):
                    visit(selection.selection_set, depth)
                else:  # validated: the fragment exists and no cycle runs through it
                    visit(fragments[selection.name.value].selection_set, depth)

        visit(operation.selection_set, 1)
        if counts["root"] > limits.root_fields:
            raise _bad_request(f"the operation selects {counts['root']} root fields; this route allows {limits.root_fields}", "BAD_REQUEST")
        if counts["aliases"] > limits.aliases:
            raise _bad_request(f"the operation uses {counts['aliases']} aliases; this route allows {limits.aliases}", "BAD_REQUEST")

    # --- the check, per request --------------------------------------------------------------------

    def _refused(self, operation: Operation, scopes: frozenset[str] | None) -> list[_Refused]:
        refused = []
        requirements = self.requirements
        for key, path in operation.needs:
            requirement = requirements.get(key)
            if requirement is None:
                refused.append(_Refused(key, path, None))
            elif scopes is None:
                if requirement.access is not Access.PUBLIC:
                    refused.append(_Refused(key, path, requirement))
            elif not requirement.met_by(scopes):
                refused.append(_Refused(key, path, requirement))
        return refused

    # --- filter mode ---------------------------------------------------------------------------------

    def _filtered(
        self, scope: Scope, parts: Sequence[_Part], operations: Sequence[Operation], refused: list[list[_Refused]], batch: bool, anonymous: bool, get: bool,
    ) -> Forwarding:
        """The request without its refused fields, and the answer's rewrite that puts them back as null."""
        members: list[dict[str, Any]] = []
        answers: list[tuple[list[tuple[str, ...]], list[dict[str, Any]]]] = []
        for part, operation, found in zip(parts, operations, refused):
            if not found:
                members.append(part.members)
                answers.append(([], []))
                continue
            keys = {item.key: item for item in found}
            removed = [(node, key, path) for node, key, path in operation.occurrences if key in keys]
            text, used = _pruned(operation, {id(node) for node, _, _ in removed})
            if text is None:  # nothing left to ask: refused as in reject mode
                raise _unmet(refused, anonymous, batch)
            members.append(_rewritten_members(part, text, used))
            at = {path: key for _, key, path in removed}
            answers.append((list(at), [_error(keys[key], path, anonymous) for path, key in at.items()]))
        query: bytes | None = None
        body: bytes | None = None
        if get:
            query = urlencode({name: value if isinstance(value, str) else json.dumps(value) for name, value in members[0].items()}).encode("ascii")
        elif self._post_media_type(scope) == "application/graphql":
            body = members[0]["query"].encode("utf-8")
        else:
            body = json.dumps(members if batch else members[0], ensure_ascii=False).encode("utf-8")
        return Forwarding(body=body, query=query, rewrite=lambda status, headers, answer, limit: _merged(answers, batch, status, headers, answer, limit))


class _Budget:
    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_EXPANDED_FIELDS

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _bad_request(f"the document expands to more than {MAX_EXPANDED_FIELDS} fields through its fragments", "BAD_REQUEST")


class _Walk:
    """The fields of one operation that need a check, with the type each is selected on."""

    def __init__(self, route: GraphQLRoute, fragments: Mapping[str, FragmentDefinitionNode]) -> None:
        self.route = route
        self.fragments = fragments
        self.needs: dict[str, tuple[str, ...]] = {}
        self.occurrences: list[tuple[FieldNode, str, tuple[str, ...]]] = []

    def selections(self, selection_set: SelectionSetNode, parent: str | None, path: tuple[str, ...], root: bool) -> None:
        """Walk `selection_set`, selected on type `parent` (None: unknown, without a schema)."""
        schema = self.route.schema
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                name = selection.name.value
                if name == "__typename":
                    continue
                key_path = (*path, (selection.alias or selection.name).value)
                field_type: str | None = None
                if name in INTROSPECTION:
                    # valid on the query type only; without a schema, counted as such wherever it is
                    self._need(f"{self.route.root_types[OperationType.QUERY]}.{name}", selection, key_path)
                    continue
                if parent is not None:
                    key = f"{parent}.{name}"
                    if root or key in self.route.requirements:
                        self._need(key, selection, key_path)
                    if schema is not None:
                        field_type = _named_type(schema, parent, name)
                if selection.selection_set is not None:
                    self.selections(selection.selection_set, field_type, key_path, False)
            else:
                if isinstance(selection, InlineFragmentNode):
                    condition, selections = selection.type_condition, selection.selection_set
                else:
                    fragment = self.fragments[selection.name.value]
                    condition, selections = fragment.type_condition, fragment.selection_set
                on = parent if condition is None else condition.name.value
                if root and schema is None and on != parent:
                    raise _bad_request(f"a fragment on {on} cannot be spread at the root of a {parent} operation", "GRAPHQL_VALIDATION_FAILED")
                self.selections(selections, on if schema is not None or root else None, path, root)

    def _need(self, key: str, node: FieldNode, path: tuple[str, ...]) -> None:
        self.needs.setdefault(key, path)
        self.occurrences.append((node, key, path))


def _named_type(schema: GraphQLSchema, parent: str, name: str) -> str | None:
    owner = schema.get_type(parent)
    fields = getattr(owner, "fields", None)
    if not fields or name not in fields:
        return None
    field_type = fields[name].type
    while hasattr(field_type, "of_type"):
        field_type = field_type.of_type
    return field_type.name  # type: ignore[no-any-return]


def _chosen(operations: list[OperationDefinitionNode], name: str | None) -> OperationDefinitionNode:
    """The operation that runs (GraphQL spec, GetOperation).

    :raises InvalidRequest: no name and several operations, or a name that matches none.
    """
    if name is None:
        if len(operations) != 1:
            raise _bad_request(f"the document holds {len(operations)} operations and the request names none: set operationName", "BAD_REQUEST")
        return operations[0]
    for operation in operations:
        if operation.name is not None and operation.name.value == name:
            return operation
    raise _bad_request(f"operationName {name!r} matches no operation of the document", "BAD_REQUEST")


# --- filter mode: the document pruned, the answer merged ---------------------------------------------


def _pruned(operation: Operation, removed: set[int]) -> tuple[str | None, frozenset[str]]:
    """The operation (with the fragments it still uses) without the removed field nodes, printed,
    and the variables it still uses; (None, ...) when nothing is left of it. A selection left
    empty takes its field or fragment with it."""
    kept_fragments: dict[str, FragmentDefinitionNode | None] = {}

    def selections(selection_set: SelectionSetNode) -> SelectionSetNode | None:
        kept = []
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                if id(selection) in removed:
                    continue
                if selection.selection_set is not None:
                    inner = selections(selection.selection_set)
                    if inner is None:
                        continue
                    selection = dataclasses.replace(selection, selection_set=inner)
            elif isinstance(selection, InlineFragmentNode):
                inner = selections(selection.selection_set)
                if inner is None:
                    continue
                selection = dataclasses.replace(selection, selection_set=inner)
            elif fragment(selection) is None:
                continue
            kept.append(selection)
        return dataclasses.replace(selection_set, selections=tuple(kept)) if kept else None

    def fragment(spread: FragmentSpreadNode) -> FragmentDefinitionNode | None:
        name = spread.name.value
        if name not in kept_fragments:
            definition = operation.fragments[name]
            inner = selections(definition.selection_set)
            kept_fragments[name] = None if inner is None else dataclasses.replace(definition, selection_set=inner)
        return kept_fragments[name]

    root = selections(operation.operation.selection_set)
    if root is None:
        return None, frozenset()
    definitions: list[Any] = [dataclasses.replace(operation.operation, selection_set=root)]
    used_fragments = _spread_names(definitions[0], kept_fragments)
    definitions += [kept_fragments[name] for name in used_fragments]
    used = frozenset(node.name.value for definition in definitions for node in _variables(definition))
    definitions[0] = dataclasses.replace(
        definitions[0], variable_definitions=tuple(item for item in definitions[0].variable_definitions or () if item.variable.name.value in used),
    )
    return print_ast(DocumentNode(definitions=tuple(definitions))), used


def _spread_names(operation: OperationDefinitionNode, fragments: Mapping[str, FragmentDefinitionNode | None]) -> list[str]:
    """The fragments the pruned operation still spreads, directly or through one another."""
    names: dict[str, None] = {}
    pending = [operation.selection_set]
    while pending:
        for node in _nodes(pending.pop()):
            if isinstance(node, FragmentSpreadNode) and node.name.value not in names:
                names[node.name.value] = None
                definition = fragments[node.name.value]
                assert definition is not None
                pending.append(definition.selection_set)
    return list(names)


def _nodes(node: Any) -> list[Any]:
    """Every AST node under `node`, `node` included."""
    found = [node]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        for key in current.keys:
            value = getattr(current, key)
            for child in value if isinstance(value, tuple) else (value,):
                if hasattr(child, "keys") and child.__class__.__name__ != "Location":
                    found.append(child)
    return found


def _variables(definition: Any) -> list[VariableNode]:
    if isinstance(definition, OperationDefinitionNode):  # its own definitions are not uses
        return [node for node in _nodes(definition.selection_set) if isinstance(node, VariableNode)]
    return [node for node in _nodes(definition) if isinstance(node, VariableNode)]


def _rewritten_members(part: _Part, text: str, used: frozenset[str]) -> dict[str, Any]:
    """The request's members with the pruned document; a persisted hash no longer names it."""
    members = dict(part.members)
    members["query"] = text
    variables = members.get("variables")
    if variables:
        members["variables"] = {name: value for name, value in variables.items() if name in used}
    extensions = members.get("extensions")
    if extensions and "persistedQuery" in extensions:
        members["extensions"] = {name: value for name, value in extensions.items() if name != "persistedQuery"} or None
        if members["extensions"] is None:
            del members["extensions"]
    return members


def _merged(
    answers: list[tuple[list[tuple[str, ...]], list[dict[str, Any]]]], batch: bool, status: int, headers: Headers, answer: bytes, limit: int,
) -> tuple[int, Headers, bytes]:
    """The upstream's JSON answer with each removed field as null and one error each (as Apollo
    Router answers); an answer that is not a JSON response passes unchanged (it holds nothing refused)."""
    if not is_json(headers) or not answer:
        return status, headers, answer
    try:
        document = json.loads(decoded(headers, answer, limit))
    except (ValueError, RecursionError):
        return status, headers, answer
    results = document if batch else [document]
    if not isinstance(results, list) or len(results) != len(answers) or not all(isinstance(result, dict) for result in results):
        return status, headers, answer
    for result, (paths, errors) in zip(results, answers):
        if not errors:
            continue
        for path in paths:
            _set_null(result.get("data"), path)
        existing = result.get("errors")
        result["errors"] = (existing if isinstance(existing, list) else []) + errors
    headers = [(name, value) for name, value in headers if name != b"content-encoding"]
    return status, headers, json.dumps(document, ensure_ascii=False).encode("utf-8")


def _set_null(data: Any, path: tuple[str, ...]) -> None:
    if isinstance(data, list):
        for item in data:
            _set_null(item, path)
    elif isinstance(data, dict):
        if len(path) == 1 or path[0] not in data:  # absent: a parent the removal left empty, removed too
            data[path[0]] = None
        else:
            _set_null(data[path[0]], path[1:])


# --- requests and refusals ----------------------------------------------------------------------------


def _media_type(scope: Scope) -> str:
    """The request body's media type: JSON or a GraphQL document.

    :raises UnsupportedMediaType: any other type, none, or a coded body.
    :raises InvalidRequest: several Content-Type headers.
    """
    values = [value for name, value in scope["headers"] if name.lower() == b"content-type"]
    if any(name.lower() == b"content-encoding" and value.strip().lower() != b"identity" for name, value in scope["headers"]):
        raise _graphql(UnsupportedMediaType, "a GraphQL request body is read as sent: send it without Content-Encoding", "BAD_REQUEST")
    if len(values) > 1:
        raise _bad_request("the request has several Content-Type headers", "BAD_REQUEST")
    media_type, _, params = (values[0] if values else b"").decode("latin-1").partition(";")
    media_type = media_type.strip().lower()
    charset = params.strip().lower().removeprefix("charset=").strip('"') if params.strip() else "utf-8"
    if media_type not in ("application/json", "application/graphql") or charset not in ("utf-8", "utf8"):
        shown = values[0].decode("latin-1")[:100] if values else "none"
        raise _graphql(UnsupportedMediaType, f"a GraphQL POST is application/json or application/graphql in UTF-8, not {shown}", "BAD_REQUEST")
    return media_type


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        duplicated = sorted({name for name, _ in pairs if sum(1 for other, _ in pairs if other == name) > 1})
        raise _bad_request(f"a JSON object names {', '.join(map(repr, duplicated))} twice: the upstream might read the other one", "BAD_REQUEST")
    return members


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise _bad_request(f"{what} is not valid UTF-8", "BAD_REQUEST") from None
    except RecursionError:
        raise _bad_request(f"{what} nests too deep", "BAD_REQUEST") from None
    except ValueError as exc:
        raise _bad_request(f"{what} is not valid JSON: {exc}", "BAD_REQUEST") from None


def _parameter_value(name: str, raw: bytes) -> str:
    """A GET parameter's value decoded, refused where servers could decode it differently."""
    if _BAD_ESCAPE.search(raw):
        raise _bad_request(f"the {name} parameter holds a '%' that starts no escape: percent-encode it as %25", "BAD_REQUEST")
    if any(byte <= 0x20 or byte >= 0x7f for byte in raw):
        raise _bad_request(f"the {name} parameter holds a raw byte that must be percent-encoded", "BAD_REQUEST")
    try:
        return unquote_plus(raw.decode("ascii"), errors="strict")
    except UnicodeDecodeError:
        raise _bad_request(f"the {name} parameter is not valid percent-encoded UTF-8", "BAD_REQUEST") from None


def _request_object(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _bad_request("a GraphQL request is a JSON object (or a batch: an array of them)", "BAD_REQUEST")
    return item


def _persisted_hash(extensions: dict[str, Any] | None) -> str | None:
    if not extensions or "persistedQuery" not in extensions:
        return None
    persisted = extensions["persistedQuery"]
    found = persisted.get("sha256Hash") if isinstance(persisted, dict) else None
    if not isinstance(found, str) or len(found) != 64 or any(char not in "0123456789abcdef" for char in found):
        raise _bad_request("extensions.persistedQuery.sha256Hash must be 64 lowercase hex digits", "BAD_REQUEST")
    return found


def _graphql(kind: type[Refusal], description: str, code: str, *errors: GraphQLError) -> Refusal:
    """A 400-class refusal that is also a GraphQL response."""
    listed = [_located(error.message, error, code) for error in errors] or [{"message": description, "extensions": {"code": code}}]
    return kind(description, errors=listed)


def _bad_request(description: str, code: str, *errors: GraphQLError) -> Refusal:
    return _graphql(InvalidRequest, description, code, *errors)


def _located(message: str, error: GraphQLError, code: str) -> dict[str, Any]:
    found: dict[str, Any] = {"message": message}
    if error.locations:
        found["locations"] = [{"line": location.line, "column": location.column} for location in error.locations]
    found["extensions"] = {"code": code}
    return found


def _error(refused: _Refused, path: tuple[str, ...], anonymous: bool) -> dict[str, Any]:
    requirement = refused.requirement
    if requirement is None:
        message = f"{refused.key} is not allowed on this route"
        required: list[list[str]] = []
    else:
        message = f"{refused.key} requires {'a token' if anonymous and requirement.access is Access.AUTHENTICATED else requirement.describe()}"
        required = [sorted(alternative) for alternative in requirement.alternatives]
    return {"message": message, "path": list(path), "extensions": {"code": "UNAUTHENTICATED" if anonymous else "FORBIDDEN", "required": required}}


def _unmet(refused: list[list[_Refused]], anonymous: bool, batch: bool) -> Unmet:
    """The refused fields, for the decision to judge as if their requirements were the route's
    own (`decision.judge_unmet`), with the words of each answer: every refused field of every
    operation and what it needs, as a message and as a GraphQL error each."""
    errors = []
    for index, found in enumerate(refused):
        for item in found:
            error = _error(item, item.path, anonymous)
            if batch:
                error["extensions"]["batch_index"] = index
            errors.append(error)
    described = "; ".join(error["message"] for error in errors)
    return Unmet(
        [item.requirement for found in refused for item in found], f"the operation ({described})",
        f"the operation needs a token: {described}", f"the operation selects fields the token may not use: {described}", {"errors": errors},
    )
