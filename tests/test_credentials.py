import pytest

from gateway.credentials import bearer_token, presented
from gateway.errors import CredentialsInvalidRequest, InvalidToken, Unauthorized
from tests.support import QUERIES_WITHOUT_TOKEN, QUERY_TOKENS

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


@pytest.mark.parametrize("query", QUERY_TOKENS, ids=[query.decode("latin-1") for query in QUERY_TOKENS])
@pytest.mark.parametrize("headers", [[], [f"Bearer {TOKEN}".encode()]], ids=["no header", "with header"])
def test_a_query_parameter_any_framework_reads_as_access_token_is_refused(headers: list[bytes], query: bytes) -> None:
    with pytest.raises(CredentialsInvalidRequest) as refused:
        bearer_token(headers, query)
    assert "never in the query string" in refused.value.description
    assert presented(headers, query) is None, "the fast path must leave such a query to bearer_token"


@pytest.mark.parametrize("query", QUERIES_WITHOUT_TOKEN, ids=[query.decode("latin-1") or "(none)" for query in QUERIES_WITHOUT_TOKEN])
def test_a_query_without_a_token_parameter_is_left_alone(query: bytes) -> None:
    assert bearer_token([f"Bearer {TOKEN}".encode()], query) == TOKEN


@pytest.mark.parametrize("query", [b"", b"a=1&b=2", b"page=3;sort=name"])
def test_a_query_that_cannot_name_a_token_keeps_the_fast_path(query: bytes) -> None:
    header = f"Bearer {TOKEN}".encode()
    assert presented([header], query) is header


def test_the_refusal_names_the_parameter() -> None:
    with pytest.raises(CredentialsInvalidRequest, match="'access%5Ftoken' reads as access_token"):
        bearer_token([], b"a=1&access%5Ftoken=x")
