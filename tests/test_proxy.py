"""Header hygiene as pure functions: what goes upstream, what comes back."""

import ipaddress

import pytest

from gateway.errors import InvalidRequest
from gateway.proxy import downstream_response_headers, upstream_request_headers
from gateway.settings import ProxySettings

IDENTITY = [(b"x-auth-scopes", b"s")]
TRUSTING = ProxySettings(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))


def forwarded(headers: list[tuple[bytes, bytes]], settings: ProxySettings = ProxySettings(), peer: str = "203.0.113.9") -> tuple[list, bool, int | None]:
    scope = {"headers": headers, "client": (peer, 5000), "scheme": "http"}
    return upstream_request_headers(scope, settings, b"upstream:8080", IDENTITY)


@pytest.mark.parametrize(("headers", "kept"), [
    # the Connection header before or after the header it names, alone or among others
    ([(b"connection", b"x-a"), (b"x-a", b"1"), (b"x-b", b"2")], [(b"x-b", b"2")]),
    ([(b"x-a", b"1"), (b"x-b", b"2"), (b"connection", b"keep-alive, X-A")], [(b"x-b", b"2")]),
    # several Connection headers: the second one's names count too
    ([(b"x-a", b"1"), (b"connection", b"keep-alive"), (b"x-b", b"2"), (b"connection", b"x-b")], [(b"x-a", b"1")]),
    # names nothing besides hop-by-hop options
    ([(b"connection", b"keep-alive"), (b"x-a", b"1")], [(b"x-a", b"1")]),
    ([(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), (b"X-A", b"1")], [(b"x-a", b"1")]),
])
def test_headers_named_by_connection_never_go_upstream(headers: list, kept: list) -> None:
    outgoing, has_body, length = forwarded([(b"host", b"gw"), *headers])
    assert outgoing == [*kept, (b"host", b"upstream:8080"), (b"x-forwarded-for", b"203.0.113.9"),
                        (b"x-forwarded-proto", b"http"), (b"x-forwarded-host", b"gw"), *IDENTITY]
    assert (has_body, length) == (False, None)


def test_connection_can_name_the_client_host_and_trusted_forwarding_headers() -> None:
    outgoing, _, _ = forwarded(
        [(b"host", b"gw"), (b"x-forwarded-for", b"198.51.100.1"), (b"connection", b"host, x-forwarded-for")],
        TRUSTING, peer="10.1.1.1",
    )
    assert (b"x-forwarded-for", b"10.1.1.1") in outgoing  # the listed client copy was dropped
    assert not any(name == b"x-forwarded-host" for name, _ in outgoing)


def test_a_listed_content_length_still_frames_the_body() -> None:
    _, has_body, length = forwarded([(b"content-length", b"5"), (b"connection", b"content-length")])
    assert (has_body, length) == (True, 5)


@pytest.mark.parametrize("values", [[b"5", b"6"], [b"-1"], [b"five"], [b"5, 5"]])
def test_content_length_must_be_one_number(values: list[bytes]) -> None:
    with pytest.raises(InvalidRequest, match="Content-Length"):
        forwarded([(b"content-length", value) for value in values])


@pytest.mark.parametrize(("headers", "kept"), [
    ([(b"connection", b"keep-alive"), (b"content-type", b"a/b"), (b"keep-alive", b"timeout=5")], [(b"content-type", b"a/b")]),
    ([(b"x-private", b"1"), (b"connection", b"close, X-Private"), (b"set-cookie", b"a=1")], [(b"set-cookie", b"a=1")]),
    ([(b"transfer-encoding", b"chunked"), (b"trailer", b"x"), (b"x-a", b"1"), (b"x-a", b"2")], [(b"x-a", b"1"), (b"x-a", b"2")]),
])
def test_response_hop_by_hop_and_connection_named_headers_are_dropped(headers: list, kept: list) -> None:
    assert downstream_response_headers(headers) == kept
