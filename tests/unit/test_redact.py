import pytest

from jobs.redact import (ambiguous_userinfo, endpoint_secrets, mask_endpoint, mask_url, scrub, scrub_value, split_url,
                          url_secrets)


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


# --- One parser for every URL (issue 17, mechanism 6) -------------------------------------------------------------

URLS = [  # url, masked, secrets (as written, percent-decoded, form-decoded; and as other parsers would read them)
    ("postgresql://app:s3cr3t@db.internal:5432/app", "postgresql://app:***@db.internal:5432/app", {"s3cr3t"}),
    ("postgres://app:s3cr3t@db/app", "postgres://app:***@db/app", {"s3cr3t"}),
    ("postgresql+psycopg://cat:topsecret@db/catalog", "postgresql+psycopg://cat:***@db/catalog", {"topsecret"}),
    ("redis://:pass word@cache:6379/0", "redis://:***@cache:6379/0", {"pass word"}),
    ("rediss://default:p@ss@cache:6380", "rediss://default:***@cache:6380", {"p@ss", "p"}),
    ("postgresql://u:pa/ss@db/app", "postgresql://u:***@db/app", {"pa/ss"}),
    ("postgres://u:pa:ss@db/app", "postgres://u:***@db/app", {"pa:ss"}),
    ("redis://:50%off@cache", "redis://:***@cache", {"50%off"}),
    ("redis://:pa#ss@cache:6379", "redis://:***@cache:6379", {"pa#ss"}),
    ("postgresql://u:pa?ss@db/app?sslmode=require", "postgresql://u:***@db/app?sslmode=require", {"pa?ss"}),
    ("postgresql://u:p?x@y@host/db", "postgresql://u:***@host/db", {"p?x@y", "p?x"}),
    ("postgresql://u:p%40ss%2Fw%20x@db/app", "postgresql://u:***@db/app", {"p%40ss%2Fw%20x", "p@ss/w x"}),
    ("postgresql://u:pässwörd@db/app", "postgresql://u:***@db/app", {"pässwörd"}),
    ("postgresql://u:p%C3%A4ss@db/app", "postgresql://u:***@db/app", {"p%C3%A4ss", "päss"}),
    ("redis://:x@cache", "redis://:***@cache", {"x"}),
    ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0", {"hunter2"}),
    ("postgres://app@db/app", "postgres://app@db/app", set()),
    ("redis://default:@cache", "redis://default:@cache", set()),
    ("postgresql://u:pw-6@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db", {"pw-6"}),
    ("redis://[::1]:6379", "redis://[::1]:6379", set()),
    # Many Redis clients (Lettuce, Jedis' URI form) read a lone user part as the password: it is masked as one.
    ("redis://T0KEN-abc@cache:6379", "redis://***@cache:6379", {"T0KEN-abc"}),
    ("rediss://T0KEN@cache", "rediss://***@cache", {"T0KEN"}),
    ("postgresql://u:pw-list@h1:5432,h2:5433/db?target_session_attrs=read-write",
     "postgresql://u:***@h1:5432,h2:5433/db?target_session_attrs=read-write", {"pw-list"}),
    ("postgresql:///db?host=/run/postgresql&password=x", "postgresql:///db?host=/run/postgresql&password=***", {"x"}),
    ("postgresql://u:pw@/db?host=/run/postgresql", "postgresql://u:***@/db?host=/run/postgresql", {"pw"}),
    ("postgresql://db/app?password=pw&sslmode=require", "postgresql://db/app?password=***&sslmode=require", {"pw"}),
    ("postgresql://u@h/d?sslpassword=k3y&sslkey=/k.pem", "postgresql://u@h/d?sslpassword=***&sslkey=/k.pem", {"k3y"}),
    ("postgresql://h/d?PASSWORD=a%26b+c", "postgresql://h/d?PASSWORD=***", {"a%26b+c", "a&b+c", "a&b c"}),
    ("postgresql://h/d?password=a;b&x=1", "postgresql://h/d?password=***&x=1", {"a;b"}),
    ("https://key:s3cret@minio.local:9000", "https://key:***@minio.local:9000", {"s3cret"}),
    ("https://s3.example.com/?token=t0k&x=1", "https://s3.example.com/?token=***&x=1", {"t0k"}),
    ("postgresql://u:pw@h/db?application_name=me@x", "postgresql://u:***@h/db?application_name=me@x", {"pw"}),
    ("postgresql://h/db?application_name=me@x", "postgresql://h/db?application_name=me@x", set()),
    # An "@" after a port, with no user info before the path, cannot be told from a password holding an
    # unencoded "/": more is masked, never less.
    ("postgresql://h:5432/db?application_name=me@x", "postgresql://h:***@x", {"5432/db?application_name=me"}),
    ("sqlite:////app/data/app.db", "sqlite:////app/data/app.db", set()),
    ("sqlite:///rel/x@y.db", "sqlite:///rel/x@y.db", set()),
    ("not a url", "not a url", set()),
]


@pytest.mark.parametrize("url, masked, secrets", URLS)
def test_every_url_is_masked_and_its_secrets_found_by_parsing_its_user_info(url: str, masked: str, secrets: set[str]) -> None:
    assert mask_url(url) == masked
    assert set(url_secrets(url)) == secrets
    for secret in secrets:
        assert f":{secret}@" not in masked and f"={secret}" not in masked


# Free text ends a URL at a space: a password holding one is found as a known secret (next test).
@pytest.mark.parametrize("url, masked, secrets", [case for case in URLS if " " not in case[0]])
def test_scrub_masks_a_url_in_free_text_as_mask_url_does(url: str, masked: str, secrets: set[str]) -> None:
    assert scrub(f"cannot reach {url} now", []) == f"cannot reach {masked} now"


@pytest.mark.parametrize("text, secrets, scrubbed", [
    ("cannot reach redis://:pass word@cache now", ["pass word"], "cannot reach redis://:***@cache now"),
    ("x abc@def y", ["abc", "abc@def"], "x *** y"),  # the longest first: no "@def" left behind
    ("key AKIASECRETVALUE rejected", ["AKIASECRETVALUE"], "key *** rejected"),
    # A known secret shorter than SCRUB_MIN_LENGTH is not replaced in free text (every "ab" would go), but it
    # is masked where it stands as a URL's password.
    ("redis://:ab@cache said ab", ["ab"], "redis://:***@cache said ab"),
    ("hint: add it as postgresql://USER:PASSWORD@HOST/DB", [], "hint: add it as postgresql://USER:PASSWORD@HOST/DB"),
    ("redis://default:password@cache refused", ["password"], "redis://default:***@cache refused"),
    ("https://h/x?token=t0k&a=1 failed", [], "https://h/x?token=***&a=1 failed"),
])
def test_scrub_replaces_known_secrets_longest_first_and_url_passwords(text: str, secrets: list[str], scrubbed: str) -> None:
    assert scrub(text, secrets) == scrubbed


def test_scrub_value_reaches_every_string_inside_dicts_lists_and_tuples() -> None:
    value = {"a": "pw=hunter2", "b": ["redis://:zz@h", ("hunter2", 3)], "c": None}
    assert scrub_value(value, ["hunter2"]) == {"a": "pw=***", "b": ["redis://:***@h", ["***", 3]], "c": None}


@pytest.mark.parametrize("url, refused", [
    ("postgresql://u:p@ss@db/app", True),
    ("redis://:Le@k5_pw@cache:6379", True),
    ("postgresql://u:pa/ss@db/app", True),
    ("postgresql://u:p?x@y@host/db", True),
    ("postgresql://u:p?a/b@host/db", True),
    ("postgresql://u@x@host/db", True),
    ("postgresql://u:pa?ss@db/app", False),  # libpq reads it whole; so does redis' reader (split_url)
    ("redis://:pa#ss@cache:6379", False),
    ("redis://:pass word@cache:6379", False),
    ("postgresql://u:p%40ss%2F@db/app", False),
    ("postgresql://u:pw@h/db?application_name=me@x", False),
    ("postgresql://h/db?application_name=me@x", False),
    ("postgresql://h:5432/db?application_name=me@x", False),
    ("rediss://host?ssl_ca_certs=/etc/a@b/ca.pem", False),
    ("sqlite:///data/x@y.db", False),
])
def test_a_user_info_whose_host_parsers_would_disagree_on_is_refused(url: str, refused: bool) -> None:
    problem = ambiguous_userinfo(url)
    assert (problem is not None) == refused
    if problem:
        assert "%40" in problem and not [s for s in url_secrets(url) if len(s) >= 3 and s in problem]


@pytest.mark.parametrize("url, shown", [
    ("https://hooks.slack.com/services/T0000/B0000/XXXX", "https://hooks.slack.com/***"),
    ("http://user:pw@127.0.0.1:8080/hook?token=abc", "http://127.0.0.1:8080/***"),
    ("https://TOKEN@Hooks.Example.com/", "https://hooks.example.com"),
    ("https://example.com", "https://example.com"),
    ("https://[::1]:8443/x", "https://[::1]:8443/***"),
    ("https://u:pa/ss@hooks.example.com/x", "***"),  # which part is the host? none is shown
    ("https://u:pa?ss@hooks.example.com/x", "***"),
    ("https://hooks.example.com/x?to=a@b.c", "***"),
    ("hooks.slack.com/services/T/B/X", "***"),
    (None, None),
])
def test_an_endpoint_shows_its_host_only_and_nothing_when_the_host_is_in_doubt(url: str | None, shown: str | None) -> None:
    assert mask_endpoint(url) == shown


def test_an_endpoints_secrets_are_the_url_what_follows_its_host_its_user_info_and_password() -> None:
    found = endpoint_secrets("https://user:pw@hooks.example.com/services/T/B/TOKEN?key=abc#frag")
    assert {"/services/T/B/TOKEN?key=abc#frag", "/services/T/B/TOKEN", "key=abc", "user:pw", "pw", "abc#frag"} <= set(found)


def test_split_url_gives_the_user_and_password_as_written() -> None:
    url = "redis://default:pa#ss%20x@cache:6379/0?x=1"
    parts = split_url(url)
    assert parts is not None and (parts.user(url), parts.secret(url)) == ("default", "pa#ss%20x")
    assert (parts.hosts, parts.tail) == ("cache:6379", "/0?x=1")
    assert split_url("sqlite:////a.db").userinfo is None and split_url("app.db") is None
