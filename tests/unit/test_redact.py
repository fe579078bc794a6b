import pytest

from jobs.redact import mask_url, scrub


@pytest.mark.parametrize(
    "url, masked",
    [
        ("postgresql://app:s3cr3t@db.internal:5432/app", "postgresql://app:***@db.internal:5432/app"),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgres://app@db/app", "postgres://app@db/app"),
        ("postgresql://db/app?password=pw&sslmode=require", "postgresql://db/app?password=***&sslmode=require"),
        ("sqlite:////app/data/app.db", "sqlite:////app/data/app.db"),
    ],
)
def test_mask_url_hides_passwords_and_secret_parameters(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_scrub_removes_known_secrets_and_url_passwords_from_free_text() -> None:
    text = "connect to postgresql://u:p%40ss@h/db failed; key AKIASECRETVALUE rejected"
    cleaned = scrub(text, ["AKIASECRETVALUE"])
    assert "p%40ss" not in cleaned and "AKIASECRETVALUE" not in cleaned
    assert "postgresql://u:***@h/db" in cleaned


@pytest.mark.parametrize("url", ["postgresql://u:Le@k5_pw@127.0.0.1:5432/db", "redis://:a@b@cache:6379/0",
                                 "rediss://default:x@y@z@cache:6380"])
def test_a_password_with_an_unencoded_at_sign_is_masked_whole(url: str) -> None:
    for text in (mask_url(url), scrub(f"cannot reach {url} now", [])):
        assert "k5_pw" not in text and "b@" not in text and "y@z" not in text
        assert "***@" in text


@pytest.mark.parametrize("url, masked", [
    ("postgresql://u:pa/ss@db.internal:5432/app", "postgresql://u:***@db.internal:5432/app"),
    ("redis://:x/y@z@cache:6379/0", "redis://:***@cache:6379/0"),
    ("postgresql://u:s3cr3t@db/app?sslrootcert=/etc/ca.pem", "postgresql://u:***@db/app?sslrootcert=/etc/ca.pem"),
])
def test_a_password_with_an_unencoded_slash_is_masked_whole_too(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert scrub(f"cannot reach {url} now", []) == f"cannot reach {masked} now"
