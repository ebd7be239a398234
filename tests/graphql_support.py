"""A real GraphQL server for the GraphQL route tests: graphql-core executing tests/graphql/bank.graphql
behind a small ASGI app under uvicorn on loopback, recording every request it receives."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from graphql import build_schema, graphql_sync

from tests.support import LiveServer

SDL = Path(__file__).parent / "graphql" / "bank.graphql"
ACCOUNTS_SDL = Path(__file__).parent / "graphql" / "accounts.graphql"
# a route table of the bank's scopes, and the start of its GraphQL route (a test adds its options)
BANK_TABLE_HEAD = "name: bank\nupstream: http://bank.test\nscopes:\n  LIST_PAYMENT:\n  MAKE_DEPOSIT:\n  REVEAL_CARD:\n  READ_EMAIL:\n  ADMIN:\nroutes:\n"
GRAPHQL_ROUTE = "  POST /graphql:\n    scopes: authenticated\n    graphql:\n"
ANA = {"__typename": "User", "id": "u1", "name": "Ana", "email": "ana@bank.test", "friends": [{"__typename": "User", "id": "u2", "name": "Bo", "email": "bo@bank.test", "friends": []}]}
PAYMENTS = [{"__typename": "Payment", "id": "p1", "amount": 5, "cardNumber": "4111"}, {"__typename": "Payment", "id": "p2", "amount": 7, "cardNumber": "4222"}]
CARD = {"__typename": "Card", "id": "c1", "number": "5555"}
NODES = {"u1": ANA, "p1": PAYMENTS[0], "c1": CARD}
ROOT = {
    "me": ANA,
    "payments": lambda info, first=None: PAYMENTS[:first],
    "offers": [{"id": "o1", "title": "Coffee"}],
    "node": lambda info, id: NODES.get(id),
    "status": "ok",
    "unguarded": "nobody may read this",
    "makeDeposit": lambda info, amount: {"id": "d1", "amount": amount},
    "revealCard": lambda info, id: CARD,
}
# the answers of accounts.graphql
ACCOUNT = {"__typename": "User", "id": "u1", "name": "Ana", "secret": "s3cr3t"}
ACCOUNTS_ROOT = {
    "me": ACCOUNT,
    "account": ACCOUNT,
    "node": lambda info, id: ACCOUNT if id == "u1" else None,
    "parties": [ACCOUNT, {"__typename": "Org", "id": "o1", "title": "Bank"}],
    "status": "ok",
}


@dataclass
class Request:
    method: str
    query_string: bytes
    content_type: str | None
    body: bytes


class GraphQLUpstream:
    """A GraphQL server (the bank's, unless told) on a loopback port: GET ?query=, POST JSON (one or a batch) and
    POST application/graphql, as graphql-core executes them. `received` holds every request."""

    def __init__(self, sdl: Path = SDL, root: dict[str, Any] = ROOT) -> None:
        self.schema = build_schema(sdl.read_text())
        self.root = root
        self.received: list[Request] = []
        self.persisted: dict[str, str] = {}  # the same manifest as the gateway's: sha256 -> document
        self.server = LiveServer(self.app, interface="asgi3", lifespan="off")
        self.url = f"http://127.0.0.1:{self.server.port}"

    def close(self) -> None:
        self.server.close()

    def execute(self, request: dict[str, Any]) -> dict[str, Any]:
        query = request.get("query")
        if query is None:
            query = self.persisted.get(((request.get("extensions") or {}).get("persistedQuery") or {}).get("sha256Hash"), "")
        result = graphql_sync(
            self.schema, query, self.root, variable_values=request.get("variables"), operation_name=request.get("operationName"),
        )
        answer: dict[str, Any] = {"data": result.data}
        if result.errors:
            answer["errors"] = [error.formatted for error in result.errors]
        return answer

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").decode() or None
        self.received.append(Request(scope["method"], scope["query_string"], content_type, body))
        if scope["method"] == "GET":
            params = {name: values[0] for name, values in parse_qs(scope["query_string"].decode()).items()}
            for name in ("variables", "extensions"):
                if name in params:
                    params[name] = json.loads(params[name])
            answer: Any = self.execute(params)
        elif content_type == "application/graphql":
            answer = self.execute({"query": body.decode()})
        else:
            parsed = json.loads(body)
            answer = [self.execute(item) for item in parsed] if isinstance(parsed, list) else self.execute(parsed)
        data = json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]})
        await send({"type": "http.response.body", "body": data})
