"""redact_dsn and scrub: passwords never survive, everything else stays readable."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from runbooks.core.redact import MASK, redact_dsn, scrub

# --- URL DSNs ---


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://app:s3cret@db:5432/trading_db", "postgresql://app:***@db:5432/trading_db"),
        ("postgres://app:s3cret@db/trading_db?sslmode=require", "postgres://app:***@db/trading_db?sslmode=require"),
        ("postgresql://:s3cret@db/trading_db", "postgresql://:***@db/trading_db"),
        ("postgresql://app:p%40ss%3Aw0rd%2F@db/trading_db", "postgresql://app:***@db/trading_db"),
        ("postgresql://app:pa:ss@db/trading_db", "postgresql://app:***@db/trading_db"),
        ("POSTGRESQL://app:s3cret@db/trading_db", "POSTGRESQL://app:***@db/trading_db"),
        ("postgresql://app:s3cret@[::1]:5432/trading_db", "postgresql://app:***@[::1]:5432/trading_db"),
    ],
)
def test_url_dsn_with_password(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app@db:5432/trading_db",
        "postgresql://db/trading_db",
        "postgresql:///trading_db?host=/var/run/postgresql",
        "postgresql://db:5432/trading_db?sslmode=verify-full&application_name=runbooks",
    ],
)
def test_url_dsn_without_password_is_unchanged(dsn: str) -> None:
    assert redact_dsn(dsn) == dsn


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://app@db/trading_db?password=s3cret", "postgresql://app@db/trading_db?password=***"),
        ("postgresql://app@db/trading_db?sslmode=require&password=s3cret&connect_timeout=5",
         "postgresql://app@db/trading_db?sslmode=require&password=***&connect_timeout=5"),
        ("postgresql://app:s3cret@db/trading_db?password=other", "postgresql://app:***@db/trading_db?password=***"),
        ("postgresql://app@db/trading_db?Password=s3cret", "postgresql://app@db/trading_db?Password=***"),
    ],
)
def test_url_dsn_password_query_parameter(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected


def test_url_dsn_with_unencoded_spaces_in_the_password() -> None:
    # Malformed (libpq refuses it), which is exactly when it ends up in an error message.
    out = redact_dsn("postgresql://app:my very secret@db/trading_db")
    assert out == "postgresql://app:***@db/trading_db"


# --- key=value DSNs ---


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        ("host=db port=5432 dbname=trading_db user=app password=s3cret", "s3cret"),
        ("host=db dbname=trading_db password='my s3cret phrase' user=app", "my s3cret phrase"),
        (r"host=db password='it\'s s3cret' user=app", r"it\'s s3cret"),
        ("host=db password = s3cret user=app", "s3cret"),
        ("host=db password=abc://s3cret user=app", "abc://s3cret"),  # looks like a URL, is not one
    ],
)
def test_key_value_dsn_with_password(dsn: str, password: str) -> None:
    out = redact_dsn(dsn)
    assert password not in out
    assert "s3cret" not in out
    parsed = conninfo_to_dict(out)  # still a valid key=value DSN with everything else intact
    expected = conninfo_to_dict(dsn)
    expected["password"] = MASK
    assert parsed == expected


def test_key_value_dsn_without_password() -> None:
    out = redact_dsn("host=db port=5432 dbname=trading_db user=app")
    assert MASK not in out
    assert conninfo_to_dict(out) == {"host": "db", "port": "5432", "dbname": "trading_db", "user": "app"}


@pytest.mark.parametrize(
    ("dsn", "leak"),
    [
        ("host=db password=s3cret bogus", "s3cret"),  # libpq refuses: missing '='
        ("host=db password='my s3cret phrase' bogus", "s3cret"),
        ("host=db password='my s3cret phrase", "phrase"),  # unterminated quote
        ("host=db PASSWORD=s3cret dbname", "s3cret"),
        ("host=db password='ends in backslash\\", "backslash"),
    ],
)
def test_unparseable_key_value_dsn_still_hides_the_password(dsn: str, leak: str) -> None:
    out = redact_dsn(dsn)
    assert leak not in out
    assert "s3cret" not in out
    assert out.startswith("host=db ")
    assert MASK in out


# --- scrub ---


def test_scrub_replaces_every_given_secret() -> None:
    text = "pg_dump: auth failed for token tok-123456 with s3cret-a and again s3cret-a; key AKIA/secret+key=="
    out = scrub(text, ["s3cret-a", "tok-123456", "AKIA/secret+key=="])
    assert out == "pg_dump: auth failed for token *** with *** and again ***; key ***"


def test_scrub_prefers_longer_secrets_when_they_overlap() -> None:
    out = scrub("value: abcdef-long and abc", ["abc", "abcdef-long"])
    assert out == "value: *** and ***"
    assert "def" not in out


def test_scrub_masks_url_embedded_passwords_it_was_not_told_about() -> None:
    text = ("connection to postgresql://postgres:unknown-pw@db:5432/postgres failed; "
            "retry with https://svc:tok%2Fen@api.internal/v1 later")
    out = scrub(text, [])
    assert "unknown-pw" not in out
    assert "tok%2Fen" not in out
    assert "postgresql://postgres:***@db:5432/postgres" in out
    assert "https://svc:***@api.internal/v1" in out


def test_scrub_ignores_empty_and_missing_secrets() -> None:
    text = "nothing to see: 12 rows"
    assert scrub(text, [None, "", "absent-secret"]) == text


def test_scrub_handles_a_generator_and_multiline_text() -> None:
    secrets = (s for s in ["line-one-secret", "line-two-secret"])
    out = scrub("a line-one-secret\nb line-two-secret\n", secrets)
    assert out == "a ***\nb ***\n"


def test_scrub_leaves_plain_urls_alone() -> None:
    text = "see http://trading-api:8000/health and postgresql://app@db/trading_db"
    assert scrub(text, []) == text


def test_a_secret_webhook_url_is_scrubbed_as_http_clients_quote_it_back() -> None:
    """httpx lower-cases the scheme and host of the URL it names in an error: the token must not come back in that
    spelling (a misspelt webhook in `notifications test` or a report's "notification FAILED" line)."""
    import httpx

    from runbooks.core.redact import _REGISTERED, register_secret

    url = "HTTPS://Hooks.Example.com:443/services/T000/B000/XXXXsecretTOKENxxxx"
    try:
        register_secret(url)
        response = httpx.Response(404, request=httpx.Request("POST", url))
        with pytest.raises(httpx.HTTPStatusError) as info:
            response.raise_for_status()
        assert "secretTOKEN" in str(info.value)  # httpx does quote it
        assert "secretTOKEN" not in scrub(str(info.value)), scrub(str(info.value))
    finally:
        _REGISTERED.difference_update({url, str(httpx.URL(url)), "/services/T000/B000/XXXXsecretTOKENxxxx"})
