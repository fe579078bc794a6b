"""Keep secrets out of everything we print: URLs with passwords, keys, tokens."""

from collections.abc import Iterable
import re
from urllib.parse import parse_qsl, urlencode

_SECRET_QUERY_KEYS = {"password", "pass", "passwd", "secret", "token", "key", "sslpassword", "access_key", "secret_key"}
# The password runs to the LAST "@" before the host: a password with an unencoded "@" is masked whole.
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^\s/?#]*)@")


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


def unencoded_userinfo(url: str) -> bool:
    """Return whether the user and password part of `url` holds an "@" that should have been written %40: URL
    parsers disagree on where such a host starts, and part of the password would be taken for the host."""
    authority = url.partition("://")[2].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return authority.count("@") > 1
