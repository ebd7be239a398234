import pytest

from gateway.credentials import bearer_token
from gateway.errors import CredentialsInvalidRequest, InvalidToken, Unauthorized

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer   {TOKEN}  "])
def test_one_bearer_token_in_the_authorization_header_is_taken(header: str) -> None:
    assert bearer_token([header.encode()], b"") == TOKEN


REFUSED = [
    ([], b"", Unauthorized, "requires a bearer token"),
    ([b"Basic dXNlcjpwYXNz"], b"", Unauthorized, "scheme 'Basic' is not accepted"),
    ([b"Token abc"], b"", Unauthorized, "scheme 'Token' is not accepted"),
    ([b""], b"", Unauthorized, "scheme '(empty)'"),
    ([b"Bearer"], b"", CredentialsInvalidRequest, "carries no token"),
    ([b"Bearer    "], b"", CredentialsInvalidRequest, "carries no token"),
    ([f"Bearer {TOKEN} {TOKEN}".encode()], b"", CredentialsInvalidRequest, "several credentials"),
    ([f"Bearer {TOKEN},Bearer {TOKEN}".encode()], b"", CredentialsInvalidRequest, "several credentials"),
    ([f"Bearer {TOKEN}".encode()] * 2, b"", CredentialsInvalidRequest, "several Authorization headers"),
    ([f"Bearer {TOKEN}".encode()], b"access_token=" + TOKEN.encode(), CredentialsInvalidRequest, "never in the query string"),
    ([], b"a=1&access_token=x", CredentialsInvalidRequest, "never in the query string"),
    ([b'Bearer "quoted"'], b"", InvalidToken, "characters a token cannot hold"),
    ([b"Bearer " + b"a" * 20000], b"", InvalidToken, "longer than"),
]


@pytest.mark.parametrize(("headers", "query", "refusal", "words"), REFUSED)
def test_missing_several_or_misplaced_credentials_are_refused(headers: list[bytes], query: bytes, refusal: type, words: str) -> None:
    with pytest.raises(refusal) as refused:
        bearer_token(headers, query)
    assert words in refused.value.description


def test_a_query_parameter_merely_named_like_a_token_is_not_mistaken() -> None:
    assert bearer_token([f"Bearer {TOKEN}".encode()], b"my_access_token_count=3") == TOKEN
