"""Keep secrets out of everything we print: URLs with passwords, keys, tokens."""

from collections.abc import Iterable
import re
from urllib.parse import parse_qsl, urlencode

_SECRET_QUERY_KEYS = {"password", "pass", "passwd", "secret", "token", "key", "sslpassword", "access_key", "secret_key"}
# The password runs to the last "@" that a host follows (no "@" before the path, query or end): a password with an
# unencoded "@" or "/" is masked whole. A later "@" in the same word (an e-mail address in a query) masks more, never less.
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>\S*)@(?=[^@\s/?#]*(?:[/?#\s]|$))")


def mask_url(url: str) -> str:
    """Return the URL with its password and secret query parameters replaced by `***`; the rest untouched."""
    masked = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", url, count=1)
    base, mark, query = masked.partition("?")
    if not mark:
        return masked
    fragment = ""
    if "#" in query:
        query, fragment = query.split("#", 1)
        fragment = "#" + fragment
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(key.lower() in _SECRET_QUERY_KEYS for key, _ in pairs):
        return masked
    query = urlencode([(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*")
    return f"{base}?{query}{fragment}"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Return `text` with every known secret and every password in a URL replaced by `***`."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)


def ambiguous_userinfo(url: str) -> str | None:
    """Return why the user and password of a network URL cannot be told from its host, or None. An unencoded "@"
    or "/" in a password makes URL parsers disagree on where the host starts, and part of the password would then
    be shown as a host name; the answer names the fix without showing any of it."""
    rest = url.partition("://")[2]
    head = re.split(r"[?#\s]", rest, maxsplit=1)[0]
    if head.startswith("/") or "@" not in head:  # a file path (sqlite:///…), or no user part
        return None
    userinfo = head.rpartition("@")[0]
    if "@" not in userinfo and "/" not in userinfo:
        return None
    return (f"the user or password in {mask_url(url)} contains \"@\" or \"/\"; write them percent-encoded (\"@\" as "
            "%40, \"/\" as %2F) so the host is read right")
