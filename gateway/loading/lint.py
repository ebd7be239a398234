"""`gateway check`'s warnings: what loads and serves, but is likely not what its author meant.

    two routes that cross                     neither is the more specific, and the requests both match
                                              go to the one whose literal segment comes first
    a catalog scope no route uses             neither required, nor implying or required by a scope that is,
                                              nor described (a described scope is the provider's word for
                                              what its tokens carry: it reaches the upstream and the
                                              authorization server's `scopes validate`)
    an empty table                            every request under its prefix is refused (404)
    a table in shadow mode                    it enforces nothing: what it would refuse is forwarded
    a secret file open to group or others     admin.token_file, tokens.hmac_secret_file (sshd and libpq
                                              refuse such files; `gateway serve` logs it at start); as
                                              libpq, a file root owns may be read by its group

A literal route beside a parameter one (`GET /users/me` beside `GET /users/{id}`) is no warning:
the literal one takes its own path, the parameter one every other, both as written. Nor are two
routes of one table that decide alike (the same requirement and options): whichever takes a
request, the same upstream gets the same path.

A scope a route uses that its table's catalog lacks is no warning: with a catalog, the loader
refuses it (an error); without one, there is nothing to compare it with.
"""

from __future__ import annotations

from collections.abc import Iterator

import yaml

from gateway.catalog import Catalog
from gateway.loading.nodes import Problem, line_of
from gateway.settings import Config
from gateway.tables import Route, Tables

# the keys of gateway.yaml naming a file whose reader can act as the gateway or its operator
_SECRET_FILES = (("admin", "token_file"), ("tokens", "hmac_secret_file"))


def warnings(tables: Tables) -> list[Problem]:
    """Every warning, file by file in the order the tables were read, in line order."""
    found = [*_shadowed(tables), *_unused_scopes(tables), *_empty(tables), *_in_shadow_mode(tables)]
    files = {api.source.file: index for index, api in enumerate(tables.apis)}
    return sorted(found, key=lambda problem: (files.get(problem.file, len(files)), problem.line))


def _shadowed(tables: Tables) -> Iterator[Problem]:
    for route in tables.routes:
        shape = route.shape
        if None not in shape:
            continue
        for winner in tables.trie.overtaking(route):
            theirs = winner.shape
            if all(mine is None or mine == their for mine, their in zip(shape, theirs)) or _alike(route, winner):
                continue  # `winner` refines `route` (each of its paths is one of route's), or decides as it does
            # the paths both match, as one (a value no literal has where both take a parameter):
            # the trie itself says whether `winner` takes them, or a third route does
            both = tuple(mine if mine is not None else their if their is not None else "\x00" for mine, their in zip(shape, theirs))
            if tables.trie.match(route.method, both) is winner:
                where = "" if winner.api is route.api else f" of table {winner.api.name}"
                example = "/" + "/".join(mine if mine is not None else their if their is not None else "x" for mine, their in zip(shape, theirs))
                yield Problem(*route.source, (
                    f"warning: {route.method} {route.template} crosses {winner.method} {winner.template}{where} ({winner.source}): "
                    f"neither is more specific, and the requests both match (such as {example}) go there, its literal segment coming first"
                ))


def _alike(route: Route, other: Route) -> bool:
    return (route.api is other.api and route.requirement == other.requirement and route.user == other.user
            and route.hide == other.hide and route.exchange is None and other.exchange is None)


def _unused_scopes(tables: Tables) -> Iterator[Problem]:
    for api in tables.apis:
        catalog = api.catalog
        if not catalog.entries:
            continue
        used = _used(catalog, (route for route in tables.routes if route.api is api))
        for name, entry in catalog.entries.items():
            if name not in used and not entry.description:
                yield Problem(*(entry.source or api.source), f"warning: scope {name} of the catalog is used by no route (none requires it, nor a scope it implies or that requires it)")


def _used(catalog: Catalog, routes: Iterator[Route]) -> set[str]:
    required: set[str] = set()
    for route in routes:
        requirements = [route.requirement]
        if route.exchange is not None:  # response members and GraphQL fields use scopes too
            requirements.extend(route.exchange.requirements.values())
        for requirement in requirements:
            for alternative in requirement.alternatives:
                required |= {catalog.pattern_for(scope) or scope for scope in alternative}
    used = set(required)
    while True:
        more = {name for name in catalog.entries if catalog.implied.get(name, frozenset()) & used}
        more |= {needed for name in used if name in catalog.entries for needed in catalog.entries[name].requires}
        if more <= used:
            return used
        used |= more


def _empty(tables: Tables) -> Iterator[Problem]:
    counted = {id(route.api) for route in tables.routes}
    for api in tables.apis:
        if id(api) not in counted:
            prefix = "/" + "/".join(api.prefix)
            yield Problem(*api.source, f"warning: table {api.name} has no routes: every request under {prefix} is refused (404)")


def _in_shadow_mode(tables: Tables) -> Iterator[Problem]:
    for api in tables.apis:
        if api.shadow is not None:
            yield Problem(*api.shadow, f"warning: table {api.name} is in shadow mode: it enforces nothing, every request it would "
                                       "refuse (401, 403, 404) is forwarded to its upstream")


def secret_files(config: Config) -> list[Problem]:
    """A warning for each secret file that others than its owner may read or write: whoever reads
    the admin token can change every grant, and whoever reads an HMAC secret can mint tokens."""
    found = []
    sections = _mapping(yaml.compose(config.source.read_text(encoding="utf-8"), Loader=yaml.SafeLoader))
    for section, key in _SECRET_FILES:
        entry = _mapping(sections.get(section, (1, None))[1]).get(key)
        if entry is None or not isinstance(entry[1], yaml.ScalarNode):
            continue
        file = config.source.parent / entry[1].value
        try:
            status = file.stat()
        except OSError:
            continue  # it loaded a moment ago; a file that went since is the next reload's problem
        mode = status.st_mode & 0o777
        # as libpq: a file root owns may be read by its group (how Kubernetes' fsGroup grants a
        # secret to the gateway's user); anything more is open
        group = 0o030 if status.st_uid == 0 else 0o070
        open_to = " and ".join(who for bits, who in ((group, "its group"), (0o007, "others")) if mode & bits)
        if open_to:
            found.append(Problem(str(config.source), entry[0], (
                f"warning: {section}.{key} {file} is open to {open_to} (mode {mode:04o}): only its owner may read it; chmod 600 it"
            )))
    return found


def _mapping(node: yaml.Node | None) -> dict[str, tuple[int, yaml.Node]]:
    """The line and value of each key of a mapping node (none for anything else)."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {key.value: (line_of(key), value) for key, value in node.value if isinstance(key, yaml.ScalarNode)}
