"""age keys (issue 20): recipients (public keys) parsed from BACKUP_ENCRYPTION_RECIPIENTS, identities (secret keys)
from BACKUP_ENCRYPTION_IDENTITY or BACKUP_ENCRYPTION_IDENTITY_FILE, and new pairs for `keygen`. Every message
names the variable and what a valid value looks like, never a secret."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
import hashlib
from pathlib import Path
import re
from types import ModuleType

PACKAGE = "pyrage"
FORMAT = "age"
SUFFIX = ".age"  # <name>-<stamp>.<kind>.zst.age
RECIPIENTS_VARIABLE = "BACKUP_ENCRYPTION_RECIPIENTS"
IDENTITY_VARIABLE = "BACKUP_ENCRYPTION_IDENTITY"
IDENTITY_FILE_VARIABLE = "BACKUP_ENCRYPTION_IDENTITY_FILE"
IDENTITY_VARIABLES = (IDENTITY_VARIABLE, IDENTITY_FILE_VARIABLE)  # secrets: never in a child's environment
IDENTITY_FILE_LIMIT = 1 << 16
_SSH_TYPES = ("ssh-ed25519", "ssh-rsa")
_RECIPIENT_HINT = "use an age public key (age1… from `backup-worker keygen`) or an SSH public key (ssh-ed25519 AAAA… or ssh-rsa AAAA…)"


class BindingMissing(Exception):
    """pyrage cannot be imported; the message says what to install."""


def binding() -> ModuleType:
    """Return the pyrage module. Raise BindingMissing naming the package when it cannot be imported."""
    try:
        import pyrage
    except ImportError as error:
        raise BindingMissing(f"the age binding {PACKAGE} cannot be imported ({error}); install it with "
                             f"`pip install {PACKAGE}` (it is a dependency of backup-worker)") from None
    return pyrage


@dataclass(frozen=True)
class Recipient:
    """A public key to encrypt to: `text` its canonical form (`age1…` in lower case, or `ssh-… BASE64` without the
    comment), `key` pyrage's object."""

    text: str
    key: object = field(repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        """The first 16 hex digits of the SHA-256 of the recipient string: what a manifest records."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Identity:
    """A secret key to decrypt with, from `variable`; `recipient` is its public key (age identities only: an SSH
    identity cannot be turned into one), `secrets` the texts that must never reach a log."""

    kind: str  # "age" or "ssh"
    variable: str
    key: object = field(repr=False, compare=False)
    recipient: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def fingerprint(self) -> str | None:
        return Recipient(self.recipient, None).fingerprint if self.recipient else None


def _short(entry: str) -> str:
    return entry if len(entry) <= 16 else entry[:12] + "…"


def parse_recipients(text: str) -> list[Recipient]:
    """Given BACKUP_ENCRYPTION_RECIPIENTS (entries separated by commas or newlines, blank ones ignored), return
    its recipients, each once. Raise ValueError naming the bad entry (shortened; a secret key never shown)."""
    pyrage = binding()
    found: dict[str, Recipient] = {}
    entries = [entry.strip() for entry in re.split(r"[,\r\n]", text)]
    for number, entry in enumerate([entry for entry in entries if entry], start=1):
        where = f"entry {number}"
        if entry.upper().startswith(("AGE-SECRET-KEY-", "AGE-PLUGIN-")) or "PRIVATE KEY" in entry:
            raise ValueError(f"{where} is a secret key, not a recipient (not shown); put its public key here "
                             "(`age-keygen -y` prints it) and keep the secret key off this worker")
        words = entry.split()
        try:
            if entry.lower().startswith("age1") and len(words) == 1:
                canonical = entry.lower()
                key = pyrage.x25519.Recipient.from_str(canonical)
            elif words[0] in _SSH_TYPES and len(words) >= 2:
                canonical = f"{words[0]} {words[1]}"
                key = pyrage.ssh.Recipient.from_str(canonical)
            elif words[0].startswith(("ssh-", "ecdsa-", "sk-")):
                raise ValueError(f"{where} ({_short(entry)!r}) is a {words[0]} key, which age cannot encrypt to; "
                                 f"{_RECIPIENT_HINT}")
            else:
                raise ValueError(f"{where} ({_short(entry)!r}) is not a recipient; {_RECIPIENT_HINT}")
        except pyrage.RecipientError as error:
            raise ValueError(f"{where} ({_short(entry)!r}) is not a valid recipient ({error}); {_RECIPIENT_HINT}") from None
        found.setdefault(canonical, Recipient(canonical, key))
    if text.strip() and not found:
        raise ValueError(f"holds no recipient, only separators; {_RECIPIENT_HINT}, or unset it")
    return list(found.values())


def fingerprints(recipients: Sequence[Recipient]) -> list[str]:
    """Return each recipient's fingerprint, for the manifest's `"encryption": {"format": "age", "recipients": …}`."""
    return [recipient.fingerprint for recipient in recipients]


def manifest_field(recipients: Sequence[Recipient]) -> dict[str, object]:
    """Return the manifest's `encryption` field: the format and the recipients' fingerprints, never a secret."""
    return {"format": FORMAT, "recipients": fingerprints(recipients)}


def identity_secrets(text: str) -> list[str]:
    """Given an identity value or an identity file's content, return what log scrubbing must hide: the whole
    text and each of its lines that is not a comment (an SSH key's base64 lines included)."""
    lines = [line.strip() for line in text.splitlines()]
    return [text.strip(), *(line for line in lines if line and not line.startswith(("#", "-----")))]


def load_identities(value: str | None, file: Path | None) -> list[Identity]:
    """Given BACKUP_ENCRYPTION_IDENTITY's value and BACKUP_ENCRYPTION_IDENTITY_FILE's path (None when unset),
    return the identities, [] when neither is set. Raise ValueError naming the variable (never the secret) when
    both are set, the file cannot be read, or what they hold is not an age identity or an unencrypted
    ed25519/RSA SSH private key. BindingMissing when pyrage is missing."""
    if value and file:
        raise ValueError(f"{IDENTITY_VARIABLE} and {IDENTITY_FILE_VARIABLE} are both set; set only one of them")
    if value:
        return _parse_identities(value, IDENTITY_VARIABLE)
    if file is None:
        return []
    where = f"{IDENTITY_FILE_VARIABLE}={str(file)!r}"
    try:
        with open(file, "rb") as handle:
            data = handle.read(IDENTITY_FILE_LIMIT + 1)
    except FileNotFoundError:
        raise ValueError(f"{where} does not exist; give the path of an age identity file (`backup-worker keygen > key.txt`)") from None
    except IsADirectoryError:
        raise ValueError(f"{where} is a directory; give the path of an age identity file") from None
    except OSError as error:
        raise ValueError(f"{where} cannot be read ({error.strerror or error}); make it readable by this user") from None
    if len(data) > IDENTITY_FILE_LIMIT:
        raise ValueError(f"{where} is larger than {IDENTITY_FILE_LIMIT // 1024} KiB: not an identity file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not text: not an age identity file or an SSH private key") from None
    return _parse_identities(text, where)


def _parse_identities(text: str, where: str) -> list[Identity]:
    pyrage = binding()
    variable = where.partition("=")[0]
    secrets = tuple(identity_secrets(text))
    if "-----BEGIN" in text:
        try:
            key = pyrage.ssh.Identity.from_buffer(text.strip().encode() + b"\n")
        except pyrage.IdentityError as error:
            reason = ("it is protected by a passphrase; age needs it unencrypted (`ssh-keygen -p -N '' -f FILE` "
                      "on a copy kept as safe as the key)") if "decrypted" in str(error) else f"{error}"
            raise ValueError(f"{where} holds an SSH private key that cannot be used: {reason}; ed25519 and RSA "
                             "keys work") from None
        return [Identity("ssh", variable, key, None, secrets)]
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.upper().startswith("AGE-SECRET-KEY-1"):
            kind = "an age plugin identity, which is not supported" if line.upper().startswith("AGE-PLUGIN-") \
                else "not an age identity (AGE-SECRET-KEY-1…)"
            raise ValueError(f"{where}: line {number} is {kind} (not shown); `backup-worker keygen` prints one")
        try:
            key = pyrage.x25519.Identity.from_str(line.upper())
        except pyrage.IdentityError:
            raise ValueError(f"{where}: line {number} is not a valid age identity (not shown; it looks damaged or "
                             "cut short); copy it again whole") from None
        found.append(Identity("age", variable, key, str(key.to_public()), secrets))
    if not found:
        raise ValueError(f"{where} holds no identity; `backup-worker keygen` prints one (AGE-SECRET-KEY-1…)")
    return found


def new_identity() -> tuple[str, str]:
    """Return a new age identity (AGE-SECRET-KEY-1…) and its recipient (age1…)."""
    key = binding().x25519.Identity.generate()
    return str(key), str(key.to_public())


def configured(env: Mapping[str, str], cwd: Path, problems: list[str]) -> tuple[list[Recipient], list[Identity], Path | None]:
    """Given the environment, return the recipients, the identities and the identity file's path (relative to
    `cwd`), adding a problem for an invalid recipient or identity, for both identity variables set, and for
    either set while pyrage cannot be imported, and for recipients set to blank text."""
    text = env.get(RECIPIENTS_VARIABLE, "")
    value = env.get(IDENTITY_VARIABLE, "").strip() or None
    file = cwd / env[IDENTITY_FILE_VARIABLE].strip() if env.get(IDENTITY_FILE_VARIABLE, "").strip() else None
    recipients: list[Recipient] = []
    identities: list[Identity] = []
    if text and not text.strip():  # set, but to nothing (an unresolved reference): never read as "off"
        problems.append(f"{RECIPIENTS_VARIABLE} is set but holds no recipient, so backups would be stored "
                        "unencrypted; set it to the recipients (age1…), or unset it to take unencrypted backups")
    try:
        recipients = parse_recipients(text) if text.strip() else []
    except BindingMissing as error:
        problems.append(f"{RECIPIENTS_VARIABLE} is set but {error}")
    except ValueError as error:
        problems.append(f"{RECIPIENTS_VARIABLE}: {error}")
    try:
        identities = load_identities(value, file)
    except BindingMissing as error:
        problems.append(f"{IDENTITY_VARIABLE if value else IDENTITY_FILE_VARIABLE} is set but {error}")
    except ValueError as error:
        problems.append(str(error))
    return recipients, identities, file
