import re

from gateway.errors import Forbidden, InvalidToken, NotFound, render

QUOTED_PARAM = re.compile(r'(\w+)="([\x20\x21\x23-\x5b\x5d-\x7e]*)"')


def test_challenge_values_are_always_valid_quoted_strings() -> None:
    refusal = InvalidToken('no RS256 signing key matches kid "a\\b"; café\r\nX-Injected: 1')
    _, headers, _ = render(refusal, realm="payments")
    challenge = dict(headers)[b"www-authenticate"].decode("ascii")
    assert challenge.startswith("Bearer ")
    params = QUOTED_PARAM.findall(challenge)
    assert [name for name, _ in params] == ["realm", "error", "error_description"]
    assert ", ".join(f'{name}="{value}"' for name, value in params) == challenge[len("Bearer "):]
    assert dict(params)["error_description"] == "no RS256 signing key matches kid 'a?b'; caf???X-Injected: 1"


def test_every_refusal_body_is_json_with_error_and_description() -> None:
    for refusal in (NotFound("no route"), Forbidden("needs a", scope="a", required=[["a"]])):
        status, headers, body = render(refusal)
        assert (b"content-type", b"application/json") in headers
        assert body.startswith(b'{"error": "') and b'"error_description": ' in body
    assert b"www-authenticate" not in dict(render(NotFound("x"))[1])
