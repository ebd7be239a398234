"""A route's `graphql:` option read into a `GraphQLRoute`: its SDL built with graphql-core (its
`@requiresScopes` / `@authenticated` read), its `fields:` checked against the SDL, its limits and
persisted-query manifest; every problem reported as `file:line: message`, the SDL's and the
manifest's in their own files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from graphql import (
    DirectiveDefinitionNode,
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    OperationType,
    build_ast_schema,
    is_interface_type,
    is_object_type,
    parse,
    validate_schema,
    value_from_ast_untyped,
)
from graphql.validation.validate import validate_sdl

from gateway.errors import Refusal
from gateway.graphql import MODES, GraphQLLimits, GraphQLRoute
from gateway.loading.nodes import Invalid, Problem, Reader
from gateway.scopes import Access, Requirement, all_of

_KEYS = {"schema", "mode", "fields", "introspection", "limits", "persisted_queries"}
_LIMIT_KEYS = {"bytes", "depth", "aliases", "root_fields", "batch"}
_ROOTS = {OperationType.QUERY: "Query", OperationType.MUTATION: "Mutation", OperationType.SUBSCRIPTION: "Subscription"}
# declared for an SDL that uses the directives without declaring them (Apollo's definitions)
_DIRECTIVES = {
    "requiresScopes": "directive @requiresScopes(scopes: [[String!]!]!) on OBJECT | FIELD_DEFINITION | INTERFACE | SCALAR | ENUM",
    "authenticated": "directive @authenticated on OBJECT | FIELD_DEFINITION | INTERFACE | SCALAR | ENUM",
}

RequirementReader = Callable[[str, yaml.Node], Requirement]
ScopeCheck = Callable[[str], str | None]  # a scope's problem (not in the catalog...), or None


class GraphQLReader:
    """One route's `graphql:` mapping.

    :param requirement: reads a requirement node as the route table's routes are read.
    :param scope_problem: what is wrong with a scope an SDL directive names, or None.
    """

    def __init__(self, reader: Reader, table: Path, requirement: RequirementReader, scope_problem: ScopeCheck) -> None:
        self.reader = reader
        self.table = table
        self.requirement = requirement
        self.scope_problem = scope_problem

    def read(self, key: str, method: str, node: yaml.Node) -> GraphQLRoute:
        """:raises Invalid: the option cannot be read (other problems are reported and reading goes on)."""
        reader = self.reader
        if method not in ("GET", "POST"):
            raise Invalid(node, f"{key}: graphql: serves GET and POST only")
        options = reader.mapping(node, f"{key}: graphql", _KEYS)
        before = len(reader.problems)
        schema: GraphQLSchema | None = None
        sdl: dict[str, Requirement] = {}
        if "schema" in options:
            with reader.reporting():
                schema, sdl = self._schema(key, options["schema"][1])
        roots = dict(_ROOTS) if schema is None else {
            kind: found.name for kind, found in
            ((OperationType.QUERY, schema.query_type), (OperationType.MUTATION, schema.mutation_type), (OperationType.SUBSCRIPTION, schema.subscription_type))
            if found is not None
        }
        configured: dict[str, Requirement] = {}
        if "fields" in options:
            with reader.reporting():
                configured = self._fields(key, options["fields"][1], schema, roots)
        requirements = _merged(schema, sdl, configured)
        if "introspection" in options:
            with reader.reporting():
                introspection = self._introspection(key, options["introspection"][1])
                if introspection is not None:
                    for name in ("__schema", "__type"):
                        requirements[f"{roots[OperationType.QUERY]}.{name}"] = introspection
        settings: dict[str, Any] = {}
        if "mode" in options:
            with reader.reporting():
                settings["mode"] = reader.choice(options["mode"][1], f"{key}: graphql.mode", MODES)
        if "limits" in options:
            with reader.reporting():
                settings["limits"] = self._limits(key, options["limits"][1])
        manifest: dict[str, tuple[str, str | None]] = {}
        if "persisted_queries" in options:
            with reader.reporting():
                manifest = self._manifest(key, options["persisted_queries"][1])
        route = GraphQLRoute(
            schema=schema, requirements=requirements, root_types=roots, persisted={id_: body for id_, (body, _) in manifest.items()}, **settings,
        )
        if len(reader.problems) == before:
            for id_, (body, operation_name) in manifest.items():
                try:
                    route.analyse(body, operation_name)
                except Refusal as refusal:  # the route's own 400, worded for a request
                    reader.report(options["persisted_queries"][1], f"{key}: graphql.persisted_queries: operation {id_[:12]}...: {refusal}")
        return route

    def _schema(self, key: str, node: yaml.Node) -> tuple[GraphQLSchema, dict[str, Requirement]]:
        """The SDL built, and the requirements its directives state, per `Type.field` or `Type`."""
        file = self.table.parent / self.reader.string(node, f"{key}: graphql.schema")
        self.reader.read.append(file)  # an edit reloads the config
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise Invalid(node, f"{key}: graphql.schema: cannot read {file}: {exc}") from None
        try:
            document = parse(text)
        except GraphQLError as error:
            raise self._sdl_problem(file, error, node) from None
        declared = {definition.name.value for definition in document.definitions if isinstance(definition, DirectiveDefinitionNode)}
        missing = [parse(definition).definitions[0] for name, definition in _DIRECTIVES.items() if name not in declared]
        document = DocumentNode(definitions=(*document.definitions, *missing))
        errors = validate_sdl(document)
        if errors:
            raise self._sdl_problem(file, errors[0], node)
        schema = build_ast_schema(document, assume_valid_sdl=True)
        errors = validate_schema(schema)
        if errors:
            raise self._sdl_problem(file, errors[0], node)
        return schema, self._directives(file, schema)

    def _sdl_problem(self, file: Path, error: GraphQLError, node: yaml.Node) -> Invalid:
        """The problem at its line of the SDL; the Invalid raised stops reading the schema."""
        line = error.locations[0].line if error.locations else 1
        self.reader.problems.append(Problem(str(file), line, f"invalid GraphQL schema: {error.message}"))
        return Invalid(node, f"graphql.schema: {file.name} does not build (see above)")

    def _directives(self, file: Path, schema: GraphQLSchema) -> dict[str, Requirement]:
        found: dict[str, Requirement] = {}
        for name, named in schema.type_map.items():
            if name.startswith("__"):
                continue
            nodes = [node for node in (named.ast_node, *named.extension_ast_nodes) if node is not None]
            stated = [self._directive(file, directive) for node in nodes for directive in node.directives or ()]
            if any(requirement is not None for requirement in stated):
                found[name] = all_of(requirement for requirement in stated if requirement is not None)
            for field_name, field in getattr(named, "fields", {}).items():
                if field.ast_node is None or not hasattr(field, "args"):
                    continue  # an input type's field reads nothing
                stated = [self._directive(file, directive) for directive in field.ast_node.directives or ()]
                if any(requirement is not None for requirement in stated):
                    found[f"{name}.{field_name}"] = all_of(requirement for requirement in stated if requirement is not None)
        return found

    def _directive(self, file: Path, directive: Any) -> Requirement | None:
        name = directive.name.value
        if name == "authenticated":
            return Requirement(Access.AUTHENTICATED)
        if name != "requiresScopes":
            return None
        line = directive.loc.source.get_location(directive.loc.start).line if directive.loc else 1
        values = [value_from_ast_untyped(argument.value) for argument in directive.arguments if argument.name.value == "scopes"]
        shape = values[0] if values else None
        if not isinstance(shape, list) or not shape or not all(isinstance(item, list) and item and all(isinstance(scope, str) for scope in item) for item in shape):
            self.reader.problems.append(Problem(str(file), line, "@requiresScopes(scopes:) must be a non-empty list of non-empty lists of scopes"))
            return None
        for scope in (scope for item in shape for scope in item):
            problem = self.scope_problem(scope)
            if problem is not None:
                self.reader.problems.append(Problem(str(file), line, f"@requiresScopes: {problem}"))
        return Requirement(Access.SCOPES, tuple(dict.fromkeys(frozenset(item) for item in shape)))

    def _fields(self, key: str, node: yaml.Node, schema: GraphQLSchema | None, roots: dict[OperationType, str]) -> dict[str, Requirement]:
        reader = self.reader
        fields: dict[str, Requirement] = {}
        for name, (name_node, value_node) in reader.mapping(node, f"{key}: graphql.fields").items():
            with reader.reporting():
                type_name, dot, field_name = name.partition(".")
                if not dot or not type_name or not field_name or "." in field_name:
                    raise Invalid(name_node, f"{key}: graphql.fields: {name!r} must be Type.field")
                if schema is None:
                    if type_name not in roots.values():
                        raise Invalid(name_node, f"{key}: graphql.fields: {name}: without graphql.schema only root fields (Query, Mutation, Subscription) can be checked")
                else:
                    owner = schema.get_type(type_name)
                    if owner is None:
                        raise Invalid(name_node, f"{key}: graphql.fields: {name}: the schema has no type {type_name!r}")
                    if not (is_object_type(owner) or is_interface_type(owner)):
                        raise Invalid(name_node, f"{key}: graphql.fields: {name}: {type_name} is not an object or interface type")
                    if field_name not in owner.fields:
                        raise Invalid(name_node, f"{key}: graphql.fields: {name}: type {type_name} has no field {field_name!r}")
                fields[name] = self.requirement(f"{key}: graphql.fields.{name}", value_node)
        return fields

    def _introspection(self, key: str, node: yaml.Node) -> Requirement | None:
        value = self.reader.value(node) if isinstance(node, yaml.ScalarNode) else None
        if value is False:
            return None
        if value is True:
            return Requirement(Access.PUBLIC)  # whoever the route lets in
        return self.requirement(f"{key}: graphql.introspection", node)

    def _limits(self, key: str, node: yaml.Node) -> GraphQLLimits:
        entries = self.reader.mapping(node, f"{key}: graphql.limits", _LIMIT_KEYS)
        return GraphQLLimits(**{
            name: self.reader.integer(value, f"{key}: graphql.limits.{name}", minimum=1) for name, (_, value) in entries.items()
        })

    def _manifest(self, key: str, node: yaml.Node) -> dict[str, tuple[str, str | None]]:
        """An Apollo persisted-query manifest: id (the SHA-256 of the body) -> (body, name)."""
        what = f"{key}: graphql.persisted_queries"
        file = self.table.parent / self.reader.string(node, what)
        self.reader.read.append(file)  # an edit reloads the config
        try:
            manifest = json.loads(file.read_bytes())
        except (OSError, ValueError) as exc:
            raise Invalid(node, f"{what}: cannot read {file} as JSON: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != "apollo-persisted-query-manifest" or manifest.get("version") != 1:
            raise Invalid(node, f"{what}: {file.name} is not an apollo-persisted-query-manifest of version 1")
        operations = manifest.get("operations")
        if not isinstance(operations, list):
            raise Invalid(node, f"{what}: {file.name}: 'operations' must be a list")
        found: dict[str, tuple[str, str | None]] = {}
        for index, operation in enumerate(operations):
            body = operation.get("body") if isinstance(operation, dict) else None
            if not isinstance(body, str):
                raise Invalid(node, f"{what}: {file.name}: operations[{index}] has no string 'body'")
            if operation.get("id") != hashlib.sha256(body.encode("utf-8")).hexdigest():
                raise Invalid(node, f"{what}: {file.name}: operations[{index}]: 'id' must be the SHA-256 (lowercase hex) of its body")
            name = operation.get("name")
            found[operation["id"]] = (body, name if isinstance(name, str) and name else None)
        return found


def _merged(schema: GraphQLSchema | None, sdl: dict[str, Requirement], configured: dict[str, Requirement]) -> dict[str, Requirement]:
    """`Type.field` -> one requirement: the route's entry, the field's directives, its parent type's
    and its return type's. A requirement on an interface's field holds for that field of every
    type implementing the interface (an interface's too); and an interface's field also needs
    what each implementation's field needs, since any of them may answer it."""
    if schema is None:
        return dict(configured)
    own: dict[str, Requirement] = {}
    composite = [named for name, named in schema.type_map.items() if not name.startswith("__") and (is_object_type(named) or is_interface_type(named))]
    for named in composite:
        for field_name, field in named.fields.items():
            key = f"{named.name}.{field_name}"
            returned = field.type
            while hasattr(returned, "of_type"):
                returned = returned.of_type
            stated = [found for found in (configured.get(key), sdl.get(key), sdl.get(named.name), sdl.get(returned.name)) if found is not None]
            if stated:
                own[key] = all_of(stated)
    # a type lists every interface it implements, those its interfaces implement included (the
    # spec asks it, and the schema is validated): one step down is all of them
    inherited: dict[str, Requirement] = {}
    for named in composite:
        for field_name in named.fields:
            key = f"{named.name}.{field_name}"
            stated = [own[found] for found in (key, *(f"{each.name}.{field_name}" for each in named.interfaces)) if found in own]
            if stated:
                inherited[key] = all_of(stated)
    merged = dict(inherited)
    for named in composite:
        if not is_interface_type(named):
            continue
        implementations = schema.get_possible_types(named)
        for field_name in named.fields:
            key = f"{named.name}.{field_name}"
            stated = [inherited[found] for found in (key, *(f"{each.name}.{field_name}" for each in implementations)) if found in inherited]
            if stated:
                merged[key] = all_of(stated)
    return merged
