"""The baseline: what a Python developer would write by hand for the same job. A Starlette app,
one shared httpx.AsyncClient, and pyjwt's jwt.decode with the public key on every request; the
same routes, scopes and answers as the gateway's bench table. No cache, no tricks.

Run: NAIVE_UPSTREAM=http://127.0.0.1:8081/v3 NAIVE_PUBLIC_KEY=pub.pem \
     uvicorn --app-dir bench naive_proxy:app --port 8080
Settings come from the environment: NAIVE_UPSTREAM, NAIVE_PUBLIC_KEY (PEM file), NAIVE_ISSUER,
NAIVE_AUDIENCE.
"""

from __future__ import annotations

import contextlib
import os

import httpx
import jwt
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

UPSTREAM = os.environ.get("NAIVE_UPSTREAM", "http://127.0.0.1:8081/v3")
PUBLIC_KEY = open(os.environ.get("NAIVE_PUBLIC_KEY", "pub.pem")).read()
ISSUER = os.environ.get("NAIVE_ISSUER", "https://auth.bench")
AUDIENCE = os.environ.get("NAIVE_AUDIENCE", "bench-api")
PREFIX = "/adyen/management"

# scope -> the scopes it implies
IMPLIES = {"psp.webhook:write": {"psp.webhook:read"}}

# (method, path template, any one of these scopes grants it)
ROUTES = [
    ("GET", "/merchants/{merchantId}/webhooks", {"psp.webhook:read"}),
    ("POST", "/merchants/{merchantId}/webhooks", {"psp.webhook:write"}),
    ("GET", "/merchants/{merchantId}/webhooks/{webhookId}", {"psp.webhook:read"}),
    ("PATCH", "/merchants/{merchantId}/webhooks/{webhookId}", {"psp.webhook:write"}),
    ("DELETE", "/merchants/{merchantId}/webhooks/{webhookId}", {"psp.webhook:write"}),
    ("POST", "/me/allowedOrigins", {"psp.onlinepayment:write"}),
    ("GET", "/merchants/{merchantId}", {"psp.accountsettings:write", "psp.onlinepayment:write"}),
]

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host"}

client: httpx.AsyncClient


def error(status: int, code: str) -> JSONResponse:
    return JSONResponse({"error": code}, status_code=status)


def scopes_of(token: str) -> set[str]:
    claims = jwt.decode(token, PUBLIC_KEY, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER,
                        options={"require": ["exp", "iss", "aud"]})
    scopes = set(claims.get("scope", "").split())
    for scope in list(scopes):
        scopes |= IMPLIES.get(scope, set())
    return scopes


def endpoint(granting: set[str]):
    async def handle(request: Request):
        authorization = request.headers.get("authorization", "")
        if not authorization.startswith("Bearer "):
            return error(401, "unauthorized")
        try:
            scopes = scopes_of(authorization[len("Bearer "):])
        except jwt.InvalidTokenError:
            return error(401, "invalid_token")
        if not scopes & granting:
            return error(403, "forbidden")
        return await forward(request)
    return handle


async def forward(request: Request) -> StreamingResponse:
    url = UPSTREAM + request.url.path[len(PREFIX):]
    if request.url.query:
        url += "?" + request.url.query
    headers = [(name, value) for name, value in request.headers.items() if name not in HOP_BY_HOP]
    outgoing = client.build_request(request.method, url, headers=headers, content=request.stream())
    response = await client.send(outgoing, stream=True)
    headers = {name: value for name, value in response.headers.items() if name not in HOP_BY_HOP}
    return StreamingResponse(response.aiter_raw(), status_code=response.status_code, headers=headers,
                             background=BackgroundTask(response.aclose))


async def not_found(request: Request, exc: Exception) -> JSONResponse:
    return error(404, "not_found")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    global client
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100, max_keepalive_connections=100), timeout=30) as client:
        yield


app = Starlette(
    routes=[Route(PREFIX + template, endpoint(granting), methods=[method]) for method, template, granting in ROUTES],
    exception_handlers={404: not_found, 405: not_found},
    lifespan=lifespan,
)
