"""The one-way import rule of docs/architecture.md, read from the source with `ast`:
values <- loaders; values <- steps <- edges. Every module of the package has its layer here, so
a new module must be placed before it can land; where the layout still bends, the bend is named."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway

PACKAGE = Path(gateway.__file__).parent

VALUES = {"types", "scopes", "claims", "catalog", "tables", "settings", "errors", "times", "grants.store", "grants.urls", "cases"}
LOADERS = {"loading", "loading.cases", "loading.catalog", "loading.config", "loading.graphql", "loading.lint", "loading.nodes",
           "loading.resource", "loading.tables"}
STEPS = {"asgi", "head", "paths", "routing", "credentials", "keys", "tokens", "introspection", "authentication", "decision", "identity", "fields", "graphql"}
# beside the steps, as the upstream client is: the steps never read them, the edges hand them over
LIVE = {"grants", "grants.live", "grants.sqlite", "grants.redis", "runtime"}
UPSTREAM = {"upstream", "pool", "proxy"}
EDGES = {"", "pipeline", "app", "decisions", "reload", "server", "admin", "cli", "explain", "demo", "harness", "testing", "validation", "access",
         "metrics", "logs", "health", "reach", "matrix", "coverage", "openapi", "signing"}

# what each layer may import, besides itself
ALLOWED = {
    "values": {"values"},
    "loaders": {"values", "steps"},  # they build the steps' objects (a GraphQL route, response fields)
    "steps": {"values"},
    "live": {"values", "steps", "upstream"},
    "upstream": {"values", "steps"},
    "edges": {"values", "loaders", "steps", "live", "upstream"},
}
# where the layout still bends (docs/architecture.md): each is named, and must still exist
BENDS: set[tuple[str, str]] = set()


def layer(module: str) -> str:
    for name, members in (("values", VALUES), ("loaders", LOADERS), ("steps", STEPS), ("live", LIVE), ("upstream", UPSTREAM), ("edges", EDGES)):
        if module in members:
            return name
    raise AssertionError(f"gateway.{module} has no layer in tests/test_layout.py: place it (docs/architecture.md)")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules `path` imports, at any depth of the file (type-checking imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name == "gateway" or name.startswith("gateway."):
                module = name.removeprefix("gateway").removeprefix(".")
                if module and module in known:
                    found.add(module)
    return found


def test_every_module_imports_only_the_layers_below_it() -> None:
    found = modules()
    known = set(found)
    broken = []
    bends = set()
    for module, path in sorted(found.items()):
        if module == "":
            continue  # the package's public face exports the app
        mine = layer(module)
        for imported in sorted(imports(path, known) - {module}):
            theirs = layer(imported)
            if theirs == mine or theirs in ALLOWED[mine]:
                continue
            if (module, imported) in BENDS:
                bends.add((module, imported))
                continue
            broken.append(f"gateway.{module} ({mine}) imports gateway.{imported} ({theirs})")
    assert broken == []
    assert bends == BENDS, "a bend is straightened: take it off BENDS"


def test_the_rule_is_read_from_the_source() -> None:
    # the test can fail: a value importing a step is found
    source = PACKAGE / "settings.py"
    assert "keys" not in imports(source, set(modules()))
    assert imports(PACKAGE / "settings.py", set(modules())) <= VALUES
    assert "routing" in imports(PACKAGE / "decision.py", set(modules()))
