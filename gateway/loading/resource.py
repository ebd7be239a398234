"""A table's `resource:` block: its OAuth 2.0 protected-resource metadata (RFC 9728), checked and
turned into the document the proxy port serves and the URL every 401 of the table names."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import yaml

from gateway.catalog import Catalog, is_parameterised
from gateway.errors import InvalidRequest
from gateway.loading.nodes import Invalid, Reader, line_of
from gateway.paths import canonicalise
from gateway.scopes import Requirement
from gateway.tables import ProtectedResource
from gateway.types import Position

WELL_KNOWN = "/.well-known/oauth-protected-resource"
_KEYS = {"identifier", "authorization_servers", "documentation"}


@dataclass(frozen=True, slots=True)
class ResourceBlock:
    """What a `resource:` block says, checked; `publish` makes the served document of it."""

    identifier: str
    origin: str  # scheme://host[:port] of the identifier, as written
    metadata_path: str
    authorization_servers: tuple[str, ...]
    documentation: str | None
    line: int  # the identifier's line, for problems found across tables

    def publish(self, name: str, source: str, scopes: list[str]) -> ProtectedResource:
        """The metadata of table `name` (of file `source`), naming `scopes` as supported."""
        document: dict[str, object] = {"resource": self.identifier, "authorization_servers": list(self.authorization_servers)}
        if scopes:
            document["scopes_supported"] = scopes
        document["bearer_methods_supported"] = ["header"]  # the gateway refuses a token anywhere else
        document["resource_name"] = name
        if self.documentation is not None:
            document["resource_documentation"] = self.documentation
        return ProtectedResource(
            identifier=self.identifier, metadata_url=self.origin + self.metadata_path, metadata_path=self.metadata_path.encode("ascii"),
            document=json.dumps(document, indent=2).encode("utf-8"), source=Position(source, self.line),
        )


def read_resource(reader: Reader, node: yaml.Node) -> ResourceBlock:
    """:raises Invalid: the block, or one of its URLs, is not what RFC 9728 asks."""
    entries = reader.mapping(node, "resource", _KEYS)
    for required in ("identifier", "authorization_servers"):
        if required not in entries:
            raise Invalid(node, f"resource: missing key {required!r}")
    identifier_node = entries["identifier"][1]
    identifier = reader.string(identifier_node, "resource: identifier")
    origin, path = _identifier(identifier_node, identifier)
    servers_node = entries["authorization_servers"][1]
    servers = []
    for item in reader.string_nodes(servers_node, "resource: authorization_servers"):
        server = reader.string(item, "resource: authorization_servers item")
        parts = _url(item, server, "resource: authorization_servers item")
        # RFC 8414 2: an issuer identifier is an https URL without query or fragment
        if parts.scheme != "https" or "?" in server or "#" in server:
            raise Invalid(item, f"resource: authorization_servers: {server!r} must be an https:// issuer URL without query or fragment")
        servers.append(server)
    documentation = None
    if "documentation" in entries:
        documentation_node = entries["documentation"][1]
        documentation = reader.string(documentation_node, "resource: documentation")
        if _url(documentation_node, documentation, "resource: documentation").scheme not in ("http", "https"):
            raise Invalid(documentation_node, f"resource: documentation must be an http:// or https:// URL, not {documentation!r}")
    return ResourceBlock(identifier, origin, WELL_KNOWN + path, tuple(servers), documentation, line_of(identifier_node))


def _identifier(node: yaml.Node, identifier: str) -> tuple[str, str]:
    """The identifier's origin and path (without a terminating '/'), RFC 9728 1.2 and 3.1.

    :raises Invalid: not https, a fragment or a query, credentials, or a path the gateway could
        not serve the document at.
    """
    what = f"resource: identifier {identifier!r}"
    parts = _url(node, identifier, "resource: identifier")
    if parts.scheme != "https":
        raise Invalid(node, f"{what} must use https (RFC 9728 1.2)")
    if "#" in identifier:
        raise Invalid(node, f"{what} must not have a fragment (RFC 9728 1.2)")
    if "?" in identifier:
        # RFC 8707 2 says it SHOULD NOT; the gateway routes by path alone, so it could not serve
        # a document whose well-known URL is told apart by its query
        raise Invalid(node, f"{what} must not have a query: the metadata's URL would need it, and the gateway routes by path alone")
    path = parts.path.removesuffix("/")  # RFC 9728 3.1: a terminating '/' is removed
    if not path.isascii():
        raise Invalid(node, f"{what}: its path must be ASCII (percent-encode it)")
    try:
        canonicalise((WELL_KNOWN + path).encode("ascii"))
    except InvalidRequest as exc:
        raise Invalid(node, f"{what}: its metadata path {WELL_KNOWN + path} is one the gateway refuses: {exc.description}") from None
    return f"{parts.scheme}://{parts.netloc}", path


def _url(node: yaml.Node, text: str, what: str) -> SplitResult:
    """`text` split, once it is known to be an absolute URL with a host and no credentials.

    :raises Invalid: it is not.
    """
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises on an invalid port
    except ValueError as exc:
        raise Invalid(node, f"{what}: {text!r} is not a URL ({exc})") from None
    if not parts.scheme or not parts.hostname or any(character.isspace() or ord(character) < 0x20 for character in text):
        raise Invalid(node, f"{what}: {text!r} must be an absolute URL with a host")
    if parts.username is not None or parts.password is not None:
        raise Invalid(node, f"{what}: {text!r} must not carry credentials")
    return parts


def supported_scopes(catalog: Catalog | None, requirements: Iterable[Requirement]) -> list[str]:
    """`scopes_supported`: the catalog's scopes, else the scopes the routes name. A parameterised
    scope (`id:{bank_id}`) is left out: it is a pattern, not a value a client can request."""
    if catalog is not None:
        return [name for name in catalog.entries if not is_parameterised(name)]
    named = {scope for requirement in requirements for alternative in requirement.alternatives for scope in alternative}
    return sorted(scope for scope in named if not is_parameterised(scope))
