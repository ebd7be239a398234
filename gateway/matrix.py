"""`gateway access --matrix`: a table's routes against its catalog's scopes, as Markdown, CSV or
one self-contained HTML page for an auditor.

A cell says whether holding that one scope (with what the catalog says it implies) meets the
route's requirement (`Requirement.met_by`, as the decision checks it), or which other scopes an
all-of group still needs with it. What depends on the token beyond its scope strings (step-up,
live grants, grant types, `requires`) is said once per scope, under the matrix.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass
from pathlib import Path

from gateway.catalog import Catalog, ScopeEntry, is_parameterised
from gateway.scopes import Access, Requirement
from gateway.tables import Api, Route

FORMATS = ("md", "csv", "html")


@dataclass(frozen=True, slots=True)
class Cell:
    opens: bool  # the scope alone, with its implications, meets the requirement
    needs: tuple[str, ...] = ()  # else: what an all-of group still needs with it (empty: nothing to do with it)


@dataclass(frozen=True, slots=True)
class Row:
    route: Route
    cells: tuple[Cell, ...]

    @property
    def name(self) -> str:
        return f"{self.route.method} {self.route.template}"

    @property
    def requires(self) -> str:
        route = self.route
        access = route.requirement.access
        text = {Access.PUBLIC: "public (no token)", Access.AUTHENTICATED: "any valid token"}.get(access) or route.requirement.describe()
        if route.user is not None:
            text += f"; a user token only for its own {{{route.user}}}"
        if route.hide:
            text += "; hidden (refusals are 404)"
        return text


@dataclass(frozen=True, slots=True)
class Matrix:
    api: Api
    scopes: tuple[str, ...]
    rows: tuple[Row, ...]


def build(api: Api, routes: tuple[Route, ...]) -> Matrix:
    """The matrix of `api`'s routes (of `routes`, every table's) against its scopes: the
    catalog's, or without one the scopes its routes name."""
    mine = tuple(route for route in routes if route.api is api)
    catalog = api.catalog
    if catalog.entries:
        scopes = tuple(catalog.entries)
    else:
        scopes = tuple(sorted({scope for route in mine for alternative in route.requirement.alternatives for scope in alternative}))
    rows = tuple(Row(route, tuple(_cell(catalog, route.requirement, scope) for scope in scopes)) for route in mine)
    return Matrix(api, scopes, rows)


def _cell(catalog: Catalog, requirement: Requirement, scope: str) -> Cell:
    if requirement.access is not Access.SCOPES:
        return Cell(False)
    held = catalog.with_implications(frozenset({scope}))
    # a parameterised requirement (`id:{bankId}`) is met by an instance of its catalog entry
    alternatives = [frozenset(catalog.pattern_for(name) or name if is_parameterised(name) else name for name in alternative)
                    for alternative in requirement.alternatives]
    if Requirement(Access.SCOPES, tuple(alternatives)).met_by(held):
        return Cell(True)
    # the fewest other scopes that complete a group this one is part of
    partial = sorted(tuple(sorted(alternative - held)) for alternative in alternatives if alternative & held)
    if not partial:
        return Cell(False)
    return Cell(False, min(partial, key=len))


def notes(entry: ScopeEntry | None) -> str:
    """What, beyond its name, decides whether a token's scope counts, in words."""
    if entry is None:
        return ""
    said = []
    if is_parameterised(entry.name):
        said.append("parameterised: an instance opens the routes whose path names it")
    if entry.implies:
        said.append(f"implies {', '.join(entry.implies)}")
    if entry.aliases:
        said.append(f"also written {', '.join(entry.aliases)}")
    if entry.suffixes:
        said.append(f"forms {', '.join(f'{entry.name}_{suffix}' for suffix in sorted(entry.suffixes))}")
    if entry.requires:
        said.append(f"held only with one of {', '.join(entry.requires)}")
    if entry.grant_types is not None:
        said.append(f"only in {' or '.join(sorted(entry.grant_types))} tokens")
    if entry.step_up is not None:
        age = f" within {entry.step_up.max_age:g} s" if entry.step_up.max_age is not None else ""
        said.append(f"counts only after an authentication with acr {' or '.join(entry.step_up.acr)}{age}")
    if entry.grants:
        said.append(f"counts only while the {' and '.join(sorted(entry.grants))} grants are active")
    if entry.condition:
        said.append(f"optional form waits until: {entry.condition}")
    return "; ".join(said)


def _text(cell: Cell, mark: str) -> str:
    if cell.opens:
        return mark
    return f"with {' and '.join(cell.needs)}" if cell.needs else ""


def render_csv(matrix: Matrix) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["route", "requires", *matrix.scopes])
    for row in matrix.rows:
        writer.writerow([row.name, row.requires, *(_text(cell, "yes") for cell in row.cells)])
    return out.getvalue()


def _md(text: str) -> str:
    # Markdown renders inline HTML, and `|` ends a cell: both are written as text
    return html.escape(text, quote=False).replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`").replace("*", "\\*")


def render_md(matrix: Matrix) -> str:
    lines = [f"## Access matrix of {_md(matrix.api.name)}", "",
             "✓: the scope alone, with what it implies, opens the route; \"with X\": only together with X.", "",
             "| route | requires | " + " | ".join(_md(scope) for scope in matrix.scopes) + " |",
             "|---|---|" + "---|" * len(matrix.scopes)]
    for row in matrix.rows:
        lines.append(f"| {_md(row.name)} | {_md(row.requires)} | " + " | ".join(_md(_text(cell, "✓")) for cell in row.cells) + " |")
    described = [(scope, matrix.api.catalog.entries.get(scope)) for scope in matrix.scopes]
    legend = [f"- {_md(scope)}: " + _md("; ".join(part for part in (entry.description if entry else None, notes(entry)) if part))
              for scope, entry in described if entry is not None and (entry.description or notes(entry))]
    if legend:
        lines += ["", "### Scopes", "", *legend]
    return "\n".join(lines) + "\n"


_STYLE = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1f24; margin: 24px; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
p.meta { color: #57606a; margin: 0 0 16px; }
table { border-collapse: collapse; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; vertical-align: middle; }
thead th { background: #f6f8fa; vertical-align: bottom; text-align: left; }
th.scope { vertical-align: bottom; padding: 8px 4px; }
th.scope span { writing-mode: vertical-rl; transform: rotate(180deg); white-space: nowrap; font-family: ui-monospace, monospace; font-weight: 500; }
th.route { text-align: left; font-family: ui-monospace, monospace; font-weight: 500; white-space: nowrap; }
td.requires { color: #57606a; max-width: 22em; }
td.yes { background: #dafbe1; color: #1a7f37; text-align: center; font-weight: 700; font-size: 15px; }
td.part { background: #fff8c5; color: #7d4e00; text-align: center; font-size: 12px; }
td.none { background: #fff; }
tr.open td.requires { color: #cf222e; }
table.legend td.scope { font-family: ui-monospace, monospace; white-space: nowrap; }
"""


def render_html(matrix: Matrix) -> str:
    """One self-contained page: inline style, no script, no external URL; every string from the
    table escaped."""
    e = html.escape
    api = matrix.api
    head = "".join(f'<th class="scope" scope="col"><span>{e(scope)}</span></th>' for scope in matrix.scopes)
    body = []
    for row in matrix.rows:
        cells = []
        for scope, cell in zip(matrix.scopes, row.cells, strict=True):
            if cell.opens:
                cells.append(f'<td class="yes" data-scope="{e(scope)}" title="{e(scope)} opens {e(row.name)}">✓</td>')
            elif cell.needs:
                # the count keeps the column narrow; the route's `requires` names the group whole
                needs = " and ".join(cell.needs)
                cells.append(f'<td class="part" data-scope="{e(scope)}" data-needs="{e(needs)}" title="only together with {e(needs)}">'
                             f'+{len(cell.needs)}</td>')
            else:
                cells.append(f'<td class="none" data-scope="{e(scope)}"></td>')
        open_to_all = ' class="open"' if row.route.requirement.access is not Access.SCOPES else ""
        body.append(f'<tr{open_to_all} data-route="{e(row.name)}"><th class="route" scope="row">{e(row.name)}</th>'
                    f'<td class="requires">{e(row.requires)}</td>{"".join(cells)}</tr>')
    legend = []
    for scope in matrix.scopes:
        entry = api.catalog.entries.get(scope)
        legend.append(f'<tr><td class="scope">{e(scope)}</td><td>{e(entry.description or "") if entry else ""}</td>'
                      f'<td>{e(notes(entry))}</td></tr>')
    prefix = "/" + "/".join(api.prefix) if api.prefix else "/"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Access matrix: {e(api.name)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Access matrix: {e(api.name)}</h1>
<p class="meta">{len(matrix.rows)} routes under {e(prefix)} against {len(matrix.scopes)} scopes, from {e(Path(api.source.file).name)}.
✓: the scope alone, with what it implies, opens the route; +N: only together with N other scopes (an all-of group, named under requires).</p>
<table class="matrix">
<thead><tr><th scope="col">route</th><th scope="col">requires</th>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody>
</table>
<h2>Scopes</h2>
<table class="legend">
<thead><tr><th scope="col">scope</th><th scope="col">description</th><th scope="col">what else decides it</th></tr></thead>
<tbody>
{chr(10).join(legend)}
</tbody>
</table>
</body>
</html>
"""


def render(matrix: Matrix, form: str) -> str:
    return {"md": render_md, "csv": render_csv, "html": render_html}[form](matrix)
