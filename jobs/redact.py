"""Keep secrets out of everything we print. This module is the one place that knows which parts of a URL are secret:
every printer of configuration, errors, log lines, catalog rows and messages masks through it.

The secrets of a URL are found by parsing it, never by matching a pattern against it:

- The user info is the part of the authority (what follows `scheme://`) before its last `@`. The authority runs
  to the first `/`: a `?` or `#` may stand in a password, as libpq reads them. When no `@` comes before that `/`
  but one comes later, the `/` may be part of a password written unencoded, so the user info runs to the URL's
  last `@`: an `@` in a path or query then masks more than the password, never less.
- The password is the user info after its first `:` (the user is before it and is not a secret). It is a secret
  as written and percent-decoded, and so is the password other common parsers would read from the same URL
  (RFC 3986 readers such as urllib, which stop at `?` and `#`; libpq and SQLAlchemy, which stop at the first `@`).
- The values of secret query parameters (`password=`, `sslpassword=`, `token=`, `key=`, …) anywhere in the URL,
  as written, percent-decoded and form-decoded.

A webhook or ping URL (an endpoint) carries its token in its path: for those, everything after the host is secret.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
import re
from typing import Any
from urllib.parse import quote, unquote, unquote_plus

MASK = "***"
# A known secret shorter than this is not replaced in free text: replacing every "a" or "42" in a message would
# garble it and, by where the stars fall, show the secret anyway. Such a password is still masked wherever it
# stands as a URL's password (masking parses the URL), which is where a secret appears in what we print.
SCRUB_MIN_LENGTH = 3
PLACEHOLDER = "password"  # the password of the example URLs in our hints (USER:PASSWORD@HOST)
SECRET_QUERY_KEYS = frozenset({
    "password", "pass", "passwd", "pwd", "secret", "token", "key", "sslpassword", "access_key", "secret_key",
    "api_key", "apikey", "access_token", "auth_token", "x-amz-security-token", "x-amz-signature", "signature",
})
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_URL_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://\S+")
_QUERY_SECRET = re.compile(r"(?<=[?&])(?P<key>[^=&#?/]+)=(?P<value>[^&]*)")  # libpq and urllib split at "&" only
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(?::\d*)?")


@dataclass(frozen=True)
class UrlParts:
    """Where the parts of a URL are, as offsets into it, so that masking changes nothing else."""

    scheme: str
    userinfo: tuple[int, int] | None  # the user info, without its "@"; None when the URL has none
    password: tuple[int, int] | None  # the password, after the user info's first ":"; None when there is none
    hosts: str  # what follows the user info up to the path: host[:port], a host list, [IPv6]:port, or ""
    tail: str  # the path, query and fragment, as written
    readings: tuple[str, ...]  # the password as every parser we know would read it (for scrubbing)
    clear: bool  # every parser we know reads the same user info: no unencoded "@", "/", "?" or "#" in it

    def user(self, url: str) -> str | None:
        """Return the user as written (not decoded), or None when the URL has no user info."""
        if self.userinfo is None:
            return None
        return url[self.userinfo[0]:self.userinfo[1]].partition(":")[0]

    def secret(self, url: str) -> str | None:
        """Return the password as written (not decoded), or None when there is none."""
        return url[self.password[0]:self.password[1]] if self.password else None


LONE_USER_IS_PASSWORD = ("redis", "rediss")


def split_url(url: str) -> UrlParts | None:
    """Given a URL (`scheme://…`), return where its user info, password, hosts and tail are. Return None if it
    does not start with a scheme and `://`."""
    match = _SCHEME.match(url)
    if not match:
        return None
    start = match.end()
    rest = url[start:]
    readings: list[str] = []
    at = -1
    if not rest.startswith("/"):
        authority = rest.split("/", 1)[0]
        at = authority.rfind("@")
        if at < 0 and "@" in rest:  # an unencoded "/" in a password, or an "@" in the path or query
            at = rest.rfind("@")
        rfc = re.split(r"[/?#]", rest, maxsplit=1)[0].rfind("@")  # urllib, redis-py and other RFC 3986 readers
        first = rest.find("@")  # libpq (up to the first "@" before any "/") and SQLAlchemy (a password is [^@]*)
        for end in (at, rfc, first):
            if end >= 0 and ":" in rest[:end]:
                readings.append(rest[rest.index(":") + 1:end])
    if at < 0:
        tail_at = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
        return UrlParts(match.group()[:-3], None, None, rest[:tail_at], rest[tail_at:], (), True)
    colon = rest.find(":", 0, at)
    password = (start + colon + 1, start + at) if colon >= 0 and colon + 1 < at else None
    if colon < 0 < at and match.group()[:-3].lower() in LONE_USER_IS_PASSWORD:
        password = (start, start + at)  # redis://TOKEN@host: many Redis clients read a lone user part as the password
        readings.append(rest[:at])
    after = rest[at + 1:]
    tail_at = next((i for i, c in enumerate(after) if c in "/?#"), len(after))
    userinfo = rest[:at]
    clear = not any(c in userinfo for c in "@/?#")
    return UrlParts(match.group()[:-3], (start, start + at), password, after[:tail_at], after[tail_at:],
                    tuple(dict.fromkeys(r for r in readings if r)), clear)


def _query_spans(url: str, start: int) -> list[tuple[int, int]]:
    """Return where the values of secret query parameters are in `url`, looking at every `?` after `start`."""
    spans = []
    position = url.find("?", start)
    while position >= 0:
        for found in _QUERY_SECRET.finditer(url, position + 1):
            if found["key"].strip().lower() in SECRET_QUERY_KEYS and found["value"]:
                spans.append(found.span("value"))
        position = url.find("?", position + 1)
    return spans


def _forms(text: str) -> list[str]:
    return list(dict.fromkeys(form for form in (text, unquote(text), unquote_plus(text)) if form))


def url_secrets(url: str | None) -> list[str]:
    """Given any URL (sqlite, postgresql, redis, http(s), an S3 endpoint, SQLAlchemy `dialect+driver://`), return
    its secrets for scrubbing: its password as written and percent-decoded (also as other parsers would read it),
    and the values of its secret query parameters. [] when it has none or is not a URL."""
    parts = split_url(url) if url else None
    if parts is None or not url:
        return []
    found: list[str] = []
    for reading in parts.readings:
        found += _forms(reading)
    for begin, end in _query_spans(url, len(parts.scheme) + 3):
        found += _forms(url[begin:end])
    return list(dict.fromkeys(found))


def mask_url(url: str) -> str:
    """Given any URL, return it with its password and the values of its secret query parameters replaced by
    `***`, everything else as written. A text that is not a URL is returned as it is."""
    return _mask(url, keep_placeholder=False)


def _mask(url: str, keep_placeholder: bool) -> str:
    parts = split_url(url)
    if parts is None:
        return url
    password = parts.password
    if keep_placeholder and password and (parts.secret(url) or "").lower() == PLACEHOLDER:
        password = None
    merged: list[list[int]] = []
    for begin, end in sorted(([password] if password else []) + _query_spans(url, len(parts.scheme) + 3)):
        if merged and begin <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([begin, end])
    masked, position = [], 0
    for begin, end in merged:
        masked.append(url[position:begin] + MASK)
        position = end
    return "".join(masked) + url[position:]


def mask_endpoint(url: str | None) -> str | None:
    """Given a webhook or ping URL, return `scheme://host[:port]` and `/***` when anything follows the host (None
    stays None): its path is its password. `***` when the host cannot be told for sure from the rest."""
    if not url:
        return None
    parts = split_url(url)
    if parts is None or not parts.clear or not parts.hosts or not _HOST.fullmatch(parts.hosts):
        return MASK
    return f"{parts.scheme}://{parts.hosts.lower()}" + ("/***" if parts.tail not in ("", "/") else "")


def endpoint_secrets(url: str | None) -> list[str]:
    """Given a webhook or ping URL, return the parts of it that logs must never show: the URL itself, everything
    after its host (and its path and query alone), its user info and its password."""
    if not url:
        return []
    parts = split_url(url)
    if parts is None:
        return [url]
    found = [url, *url_secrets(url)]
    path, _, query = parts.tail.partition("?")
    found += [part for part in (parts.tail, path.partition("#")[0], query.partition("#")[0]) if part not in ("", "/")]
    if parts.userinfo:
        found.append(url[parts.userinfo[0]:parts.userinfo[1]])
    return list(dict.fromkeys(found))


def ambiguous_userinfo(url: str) -> str | None:
    """Return why the user and password of a network URL cannot be told from its host, or None. An unencoded "@"
    or "/" in a password makes URL parsers disagree on where the host starts, and part of the password would then
    be shown as a host name; the answer names the fix without showing any of it."""
    parts = split_url(url)
    if parts is None or parts.userinfo is None:
        return None
    userinfo = url[parts.userinfo[0]:parts.userinfo[1]]
    head = re.split(r"[/?#]", url[len(parts.scheme) + 3:], maxsplit=1)[0]
    if "@" not in userinfo and ("/" not in userinfo or "@" not in head and _HOST.fullmatch(head)):
        return None  # a plain host[:port] before the first "/": the "@" is in the path or query
    return (f"the user or password in {mask_url(url)} contains \"@\" or \"/\"; write them percent-encoded (\"@\" as "
            "%40, \"/\" as %2F) so the host is read right")


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Return `text` with every known secret (the longest first, so that one holding another goes whole; none
    shorter than SCRUB_MIN_LENGTH) and every URL's password and secret parameters replaced by `***`. A URL whose
    password is the word `password` (any case) is an example in a hint, like postgresql://USER:PASSWORD@HOST/DB,
    and keeps it; a real password `password` is a known secret and goes with those."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= SCRUB_MIN_LENGTH:
            text = text.replace(secret, MASK)
    return _URL_IN_TEXT.sub(lambda found: _mask(found.group(), keep_placeholder=True), text)


def scrub_value(value: Any, secrets: list[str]) -> Any:
    """Return `value` with `scrub` applied to every string in it, through dicts, lists and tuples."""
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return {key: scrub_value(item, secrets) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_value(item, secrets) for item in value]
    return value


def secrets_of(urls: Iterable[str | None], endpoints: Iterable[str | None], values: Iterable[str]) -> list[str]:
    """Given URLs (sources, catalog, S3 endpoint), webhook and ping URLs and plain secret values, return every
    secret they hold, once each."""
    found = [value for value in values if value]
    for url in urls:
        found.extend(url_secrets(url))
    for url in endpoints:
        found.extend(endpoint_secrets(url))
    return list(dict.fromkeys(found))


def mask_key(value: str | None) -> str | None:
    """Return an access key id for people: its first four characters when it is long enough to spare them."""
    if not value:
        return None
    return value[:4] + MASK if len(value) > 8 else MASK


def secret_in_args(args: Sequence[str], secrets: Sequence[str]) -> bool:
    """Return whether a secret is in a command line the way a slip puts it there: as an argument of its own,
    after `password=` (a conninfo), or as a URL's password. (A password that happens to equal the user name, as
    in postgres:postgres, is not taken for a slip.)"""
    for secret in secrets:
        if not secret:
            continue
        forms = "|".join(re.escape(form) for form in {secret, quote(secret, safe="")})
        slip = re.compile(rf"(?:^(?:{forms})$|(?:pass(?:word|wd)?|pwd)\s*=\s*['\"]?(?:{forms})|:(?:{forms})@)", re.IGNORECASE)
        if any(slip.search(arg) for arg in args):
            return True
    return False
