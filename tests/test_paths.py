import pytest

from gateway.errors import InvalidRequest
from gateway.paths import canonicalise

ACCEPTED = [
    (b"/", ()),
    (b"/merchants/M1/webhooks", ("merchants", "M1", "webhooks")),
    (b"/a%41b", ("aAb",)),
    (b"/caf%C3%A9", ("café",)),
    (b"/a;b=c", ("a;b=c",)),
    (b"/.well-known", (".well-known",)),
    (b"/...", ("...",)),
    (b"/a:b@c!$&'()*+,=~-_", ("a:b@c!$&'()*+,=~-_",)),
    (b"/%25", ("%",)),
]


@pytest.mark.parametrize(("raw", "segments"), ACCEPTED)
def test_canonical_form_keeps_raw_and_decoded_segments_aligned(raw: bytes, segments: tuple[str, ...]) -> None:
    path = canonicalise(raw)
    assert path.segments == segments
    assert path.raw == raw
    assert len(raw[1:].split(b"/")) == len(segments) or raw == b"/"


REFUSED = [
    (b"merchants", "must start with '/'"),
    (b"*", "must start with '/'"),
    (b"/a//b", "empty path segment"),
    (b"//a", "empty path segment"),
    (b"/a/", "empty path segment"),
    (b"/a/./b", "dot segment"),
    (b"/a/../b", "dot segment"),
    (b"/a/..", "dot segment"),
    (b"/a/%2e%2e/b", "dot segment"),
    (b"/a/%2E%2E/b", "dot segment"),
    (b"/a/.%2e/b", "dot segment"),
    (b"/a/%2e/b", "dot segment"),
    (b"/a/..;/b", "dot segment"),
    (b"/a/.;x=1/b", "dot segment"),
    (b"/a%2fb", "encoded slash"),
    (b"/a%2Fb", "encoded slash"),
    (b"/a\\b", "backslash"),
    (b"/a%5cb", "encoded backslash"),
    (b"/a%5Cb", "encoded backslash"),
    (b"/a\x00b", "NUL"),
    (b"/a%00b", "NUL"),
    (b"/a%0d%0ab", "control character"),
    (b"/a%7fb", "control character"),
    (b"/a%zzb", "malformed percent-escape"),
    (b"/a%2", "malformed percent-escape"),
    (b"/a%", "malformed percent-escape"),
    (b"/a%ffb", "not valid UTF-8"),
    (b"/a%c3", "not valid UTF-8"),
    (b"/a%c0%af", "not valid UTF-8"),  # overlong '/'
    (b"/a%252fb", "double-encoded"),
    (b"/a%252e%252e", "double-encoded"),
    (b"/a%255cb", "double-encoded"),
    (b"/a%2500", "double-encoded"),
    (b"/caf\xc3\xa9", "must be percent-encoded"),
    (b"/a b", "must be percent-encoded"),
    (b"/a\tb", "must be percent-encoded"),
    (b"/a{b}", "must be percent-encoded"),
    (b"/a|b", "must be percent-encoded"),
    (b"/a#b", "must be percent-encoded"),
]


@pytest.mark.parametrize(("raw", "problem"), REFUSED)
def test_ambiguous_paths_are_refused_with_the_reason(raw: bytes, problem: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        canonicalise(raw)
    assert problem in refused.value.description
    assert refused.value.status == 400 and refused.value.error == "invalid_request"


def test_raw_tail_is_the_exact_bytes_after_the_prefix() -> None:
    path = canonicalise(b"/api/v1/caf%C3%A9/a%41")
    assert path.raw_tail(2) == b"/caf%C3%A9/a%41"
    assert path.raw_tail(3) == b"/a%41"
    assert path.raw_tail(4) == b"/"
    assert path.raw_tail(0) == b"/api/v1/caf%C3%A9/a%41"
    assert canonicalise(b"/").raw_tail(0) == b"/"
