"""jobs/encryption.py (issue 20): recipients, identities, and the age streams, against pyrage and the stock `age`
CLI (Debian package `age`), with real SSH keys from `ssh-keygen`."""

import errno
import hashlib
import io
import os
from pathlib import Path
import subprocess
import sys
import textwrap
import threading

import pytest

from jobs import encryption
from jobs.encryption import decrypting, encrypting, load_identities, opens, parse_recipients
from jobs.errors import DecryptError, IntegrityError


@pytest.fixture(scope="module")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Unencrypted ed25519 and RSA keys, an ECDSA key (age cannot use it) and a passphrase-protected one."""
    directory = tmp_path_factory.mktemp("ssh")
    keys = {}
    for name, args in {"ed25519": ["-t", "ed25519", "-N", ""], "rsa": ["-t", "rsa", "-b", "2048", "-N", ""],
                       "ecdsa": ["-t", "ecdsa", "-N", ""], "locked": ["-t", "ed25519", "-N", "a passphrase"]}.items():
        keys[name] = directory / name
        subprocess.run(["ssh-keygen", "-q", *args, "-C", "me@laptop", "-f", str(keys[name])], check=True)
    return keys


def pair() -> tuple[str, str]:
    return encryption.new_identity()


def encrypt(data: bytes, recipients: list[encryption.Recipient], piece: int = 1 << 16) -> bytes:
    out = io.BytesIO()
    with encrypting(out, recipients) as plain:
        for start in range(0, len(data), piece):
            plain.write(data[start:start + piece])
    return out.getvalue()


def decrypt(ciphertext: bytes, identities: list[encryption.Identity]) -> bytes:
    with decrypting(io.BytesIO(ciphertext), identities, "app-20250101T000000Z.sqlite.zst.age") as plain:
        return plain.read()


# --- recipients -------------------------------------------------------------------------------------------------

def test_recipients_age_and_ssh_separated_by_commas_and_newlines(ssh_keys) -> None:
    _, age = pair()
    ed25519 = (ssh_keys["ed25519"].with_suffix(".pub")).read_text().strip()  # with its comment me@laptop
    rsa = (ssh_keys["rsa"].with_suffix(".pub")).read_text().strip()
    text = f"\n {age.upper()} ,\n\n{ed25519}\r\n,{rsa},, {age}\n"
    found = parse_recipients(text)
    assert [recipient.text for recipient in found] == [age, " ".join(ed25519.split()[:2]), " ".join(rsa.split()[:2])]
    for recipient in found:  # the fingerprint of the canonical recipient string, as the manifest records it
        assert recipient.fingerprint == hashlib.sha256(recipient.text.encode()).hexdigest()[:16]
    assert encryption.fingerprints(found) == [recipient.fingerprint for recipient in found]
    assert encryption.manifest_field(found) == {"format": "age", "recipients": encryption.fingerprints(found)}
    assert parse_recipients("") == [] and parse_recipients(" \n ") == []


@pytest.mark.parametrize(("text", "expected"), [
    ("age1xyz", "entry 1 ('age1xyz') is not a valid recipient"),
    ("age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq", "is not a valid recipient"),
    ("ecdsa-sha2-nistp256 AAAAE2VjZHNh", "is a ecdsa-sha2-nistp256 key, which age cannot encrypt to"),
    ("ssh-dss AAAAB3NzaC1kc3M", "is a ssh-dss key"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAbroken", "entry 1 ('ssh-ed25519 …') is not a valid recipient"),
    ("hello world", "entry 1 ('hello world') is not a recipient"),
    (",, ,\n", "holds no recipient"),
])
def test_a_bad_recipient_is_named_with_what_a_valid_one_looks_like(text: str, expected: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_recipients(text)
    message = str(caught.value)
    assert expected in message
    assert "age1" in message and "ssh-ed25519" in message  # what a valid one looks like


def test_a_secret_key_given_as_recipient_is_refused_without_showing_it(ssh_keys) -> None:
    identity, age = pair()
    for text in (f"{age},{identity}", ssh_keys["ed25519"].read_text()):
        with pytest.raises(ValueError) as caught:
            parse_recipients(text)
        assert "secret key" in str(caught.value)
        assert identity[:20] not in str(caught.value) and "PRIVATE" not in str(caught.value)
    with pytest.raises(ValueError, match="entry 2 is a secret key"):
        parse_recipients(f"{age},{identity}")


# --- identities -------------------------------------------------------------------------------------------------

def test_identities_from_the_value_and_from_files(tmp_path: Path, ssh_keys) -> None:
    (one, one_public), (two, two_public) = pair(), pair()
    assert [i.recipient for i in load_identities(one, None)] == [one_public]
    assert load_identities(one, None)[0].variable == "BACKUP_ENCRYPTION_IDENTITY"
    assert [i.recipient for i in load_identities(f"# mine\n{one}\n\n{two.lower()}\n", None)] == [one_public, two_public]
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# created: 2025-01-01T00:00:00Z\n# public key: {one_public}\n{one}\n\n  # break-glass\n{two}\n")
    found = load_identities(None, keys)
    assert [i.recipient for i in found] == [one_public, two_public]
    assert found[0].variable == "BACKUP_ENCRYPTION_IDENTITY_FILE" and found[0].fingerprint == parse_recipients(one_public)[0].fingerprint
    assert one in found[0].secrets and two in found[0].secrets
    assert one not in repr(found) and one not in str(found)
    for name in ("ed25519", "rsa"):
        (ssh,) = load_identities(None, ssh_keys[name])
        assert ssh.kind == "ssh" and ssh.recipient is None and ssh.fingerprint is None
        body = ssh_keys[name].read_text().splitlines()[1]
        assert body in ssh.secrets  # a base64 line of the key is scrubbed from logs too
    assert load_identities(None, None) == [] and load_identities("", None) == []


@pytest.mark.parametrize(("value", "content", "expected"), [
    ("AGE-SECRET-KEY-1QQQQ", None, "BACKUP_ENCRYPTION_IDENTITY: line 1 is not a valid age identity"),
    ("not a key at all", None, "BACKUP_ENCRYPTION_IDENTITY: line 1 is not an age identity (AGE-SECRET-KEY-1…)"),
    ("# only a comment\n", None, "BACKUP_ENCRYPTION_IDENTITY holds no identity"),
    ("AGE-PLUGIN-YUBIKEY-1QQQQQQ", None, "age plugin identity, which is not supported"),
    (None, "# keys\nage1notasecret\n", "BACKUP_ENCRYPTION_IDENTITY_FILE='{path}': line 2 is not an age identity"),
    (None, b"\xff\xfe\x00binary", "is not text"),
    (None, "x" * 70000, "is larger than 64 KiB"),
])
def test_a_bad_identity_is_named_by_its_variable_and_never_shown(tmp_path: Path, value, content, expected) -> None:
    path = None
    if content is not None:
        path = tmp_path / "identity"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as caught:
        load_identities(value, path)
    message = str(caught.value)
    assert expected.format(path=path) in message
    for secret in filter(None, [value, "age1notasecret"]):
        assert secret.strip() not in message


def test_identity_problems_both_set_missing_file_directory_and_unusable_ssh_keys(tmp_path: Path, ssh_keys) -> None:
    identity, _ = pair()
    with pytest.raises(ValueError, match="BACKUP_ENCRYPTION_IDENTITY and BACKUP_ENCRYPTION_IDENTITY_FILE are both set"):
        load_identities(identity, tmp_path / "keys.txt")
    with pytest.raises(ValueError, match="does not exist"):
        load_identities(None, tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="is a directory"):
        load_identities(None, tmp_path)
    with pytest.raises(ValueError, match="protected by a passphrase"):
        load_identities(None, ssh_keys["locked"])
    with pytest.raises(ValueError, match="ecdsa") as caught:
        load_identities(None, ssh_keys["ecdsa"])
    assert "ed25519 and RSA keys work" in str(caught.value)
    if os.geteuid() != 0:  # root reads a 0000 file anyway
        unreadable = tmp_path / "unreadable.txt"
        unreadable.write_text(identity)
        unreadable.chmod(0)
        with pytest.raises(ValueError, match="cannot be read"):
            load_identities(None, unreadable)


# --- streams ----------------------------------------------------------------------------------------------------

def test_round_trip_with_one_and_with_two_recipients_age_and_ssh(tmp_path: Path, ssh_keys) -> None:
    identity, recipient = pair()
    data = os.urandom(3 * 65536 + 12345)
    ciphertext = encrypt(data, parse_recipients(recipient))
    assert ciphertext.startswith(b"age-encryption.org/v1\n") and data[:64] not in ciphertext
    assert decrypt(ciphertext, load_identities(identity, None)) == data
    both = parse_recipients(f"{recipient}\n{ssh_keys['ed25519'].with_suffix('.pub').read_text()}")
    ciphertext = encrypt(data, both, piece=1000)
    assert decrypt(ciphertext, load_identities(identity, None)) == data
    assert decrypt(ciphertext, load_identities(None, ssh_keys["ed25519"])) == data
    assert decrypt(encrypt(b"", both), load_identities(identity, None)) == b""  # an empty stream is a valid one


def test_the_stock_age_cli_reads_ours_and_we_read_its(tmp_path: Path, ssh_keys) -> None:
    identity, recipient = pair()
    key = tmp_path / "key.txt"
    key.write_text(f"# public key: {recipient}\n{identity}\n")
    data = os.urandom(200_000)
    ours = tmp_path / "ours.age"
    ours.write_bytes(encrypt(data, parse_recipients(f"{recipient},{ssh_keys['rsa'].with_suffix('.pub').read_text()}")))
    for key_file in (key, ssh_keys["rsa"]):
        assert subprocess.run(["age", "-d", "-i", str(key_file), str(ours)], capture_output=True, check=True).stdout == data
    theirs = subprocess.run(["age", "-r", recipient, "-R", str(ssh_keys["ed25519"].with_suffix(".pub"))], input=data,
                            capture_output=True, check=True).stdout
    assert decrypt(theirs, load_identities(None, key)) == data
    assert decrypt(theirs, load_identities(None, ssh_keys["ed25519"])) == data


def test_a_wrong_identity_is_refused_in_one_sentence_naming_the_variable(tmp_path: Path) -> None:
    _, recipient = pair()
    ciphertext = encrypt(b"secret rows" * 1000, parse_recipients(recipient))
    stranger, _ = pair()
    with pytest.raises(DecryptError) as caught:
        decrypt(ciphertext, load_identities(stranger, None))
    message = str(caught.value)
    assert message.startswith("none of the identities in BACKUP_ENCRYPTION_IDENTITY opens app-20250101T000000Z.sqlite.zst.age")
    assert message.count(". ") == 0 and "\n" not in message and stranger not in message
    assert isinstance(caught.value, IntegrityError) and caught.value.stage == "verify"


@pytest.mark.parametrize("damage", ["a flipped byte in the middle", "the last bytes cut off", "a flipped header byte"])
def test_a_tampered_ciphertext_is_refused_and_never_ends_cleanly(damage: str) -> None:
    identity, recipient = pair()
    data = os.urandom(5 * 65536)
    ciphertext = bytearray(encrypt(data, parse_recipients(recipient)))
    if damage == "a flipped byte in the middle":
        ciphertext[len(ciphertext) // 2] ^= 1
    elif damage == "the last bytes cut off":
        del ciphertext[-20:]
    else:
        ciphertext[ciphertext.index(b"\n---") + 8] ^= 1
    with pytest.raises(DecryptError, match="damaged, altered or cut short"):
        with decrypting(io.BytesIO(bytes(ciphertext)), load_identities(identity, None)) as plain:
            while plain.read(4096):
                pass


def test_an_abandoned_encryption_leaves_no_valid_age_file() -> None:
    identity, recipient = pair()
    out = io.BytesIO()
    with pytest.raises(RuntimeError, match="the snapshot failed"):
        with encrypting(out, parse_recipients(recipient)) as plain:
            plain.write(os.urandom(300_000))
            raise RuntimeError("the snapshot failed")
    with pytest.raises(DecryptError):  # half the data must never pass for a whole backup
        decrypt(out.getvalue(), load_identities(identity, None))


class Full(io.RawIOBase):
    """A destination that fills up after `room` bytes, as a disk does."""

    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)


def test_an_error_of_the_destination_is_raised_in_the_caller_as_it_is() -> None:
    _, recipient = pair()
    with pytest.raises(OSError) as caught:  # megabytes more than the pipe holds: the writer must not hang
        with encrypting(Full(200_000), parse_recipients(recipient)) as plain:
            for _ in range(64):
                plain.write(b"\0" * (1 << 20))
    assert caught.value.errno == errno.ENOSPC


def test_an_error_of_the_source_is_raised_in_the_caller_as_it_is() -> None:
    identity, recipient = pair()
    ciphertext = encrypt(os.urandom(400_000), parse_recipients(recipient))

    class Broken(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > 100_000:
                raise ConnectionResetError("the download broke")
            return super().read(size)

    with pytest.raises(ConnectionResetError, match="the download broke"):
        with decrypting(Broken(ciphertext), load_identities(identity, None)) as plain:
            plain.read()


def test_leaving_the_decryption_early_stops_its_thread() -> None:
    identity, recipient = pair()
    ciphertext = encrypt(os.urandom(4 << 20), parse_recipients(recipient))
    with decrypting(io.BytesIO(ciphertext), load_identities(identity, None)) as plain:
        assert len(plain.read(1000)) == 1000
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("age-")]
    with pytest.raises(RuntimeError):  # and so does leaving it by an error
        with decrypting(io.BytesIO(ciphertext), load_identities(identity, None)) as plain:
            plain.read(1000)
            raise RuntimeError("the restore stopped")
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("age-")]


class Counting(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.taken = 0

    def read(self, size=-1):
        data = super().read(size)
        self.taken += len(data)
        return data


def test_opens_tells_a_matching_identity_by_the_header_without_reading_the_whole_file(ssh_keys) -> None:
    identity, recipient = pair()
    ciphertext = encrypt(os.urandom(4 << 20), parse_recipients(f"{recipient},{ssh_keys['ed25519'].with_suffix('.pub').read_text()}"))
    for identities in (load_identities(identity, None), load_identities(None, ssh_keys["ed25519"])):
        source = Counting(ciphertext)
        assert opens(source, identities) is True
        assert source.taken < 200_000  # the header and the first 64 KiB chunk, not 4 MiB
    source = Counting(ciphertext)
    assert opens(source, load_identities(pair()[0], None)) is False
    assert source.taken <= 16384
    assert opens(io.BytesIO(encrypt(b"tiny", parse_recipients(recipient))), load_identities(identity, None)) is True
    with pytest.raises(DecryptError, match="is not an age file"):
        opens(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"zstd, not age" * 100), load_identities(identity, None), "app.sqlite.zst")


def test_encrypting_64_mib_holds_a_few_mib_at_most(tmp_path: Path) -> None:
    """Peak RSS of a fresh process that encrypts 64 MiB and decrypts it again, both streamed: a few MiB above
    what it held before, whatever the size."""
    script = textwrap.dedent("""
        import io, os, sys
        from jobs import encryption
        identity, recipient = encryption.new_identity()
        recipients, identities = encryption.parse_recipients(recipient), encryption.load_identities(identity, None)
        chunk = os.urandom(1 << 20)
        def high_water():
            return int([line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]) * 1024
        path = sys.argv[1]
        with open(path, "wb") as out, encryption.encrypting(out, recipients) as plain:  # warm up: threads, imports
            plain.write(chunk)
        before = high_water()
        with open(path, "wb") as out, encryption.encrypting(out, recipients) as plain:
            for _ in range(64):
                plain.write(chunk)
        with open(path, "rb") as source, encryption.decrypting(source, identities) as plain:
            total = 0
            while piece := plain.read(1 << 20):
                total += len(piece)
        assert total == 64 << 20, total
        print(high_water() - before)
    """)
    completed = subprocess.run([sys.executable, "-c", script, str(tmp_path / "big.age")], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parents[2], check=True)
    grown = int(completed.stdout)
    assert (tmp_path / "big.age").stat().st_size > 64 << 20
    assert grown < 8 << 20, f"peak RSS grew by {grown / 2**20:.1f} MiB while streaming 64 MiB"


class _FullAfter(io.RawIOBase):
    """An unbuffered file whose every write fails once `room` bytes were taken (a disk that fills up)."""

    def __init__(self, room: int) -> None:
        self.room, self.taken = room, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.taken + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.taken += len(data)
        return len(data)


@pytest.mark.parametrize("size", [100, 70_000])
def test_a_failed_last_write_is_raised_even_when_pyrage_swallows_it(size: int) -> None:
    """pyrage 1.4 drops an error of its last, small write: the stream must still fail, never end as if whole."""
    _, recipient = pair()
    out = _FullAfter(room=size)  # room for the header and most of the payload, not the last chunk
    with pytest.raises(OSError) as caught:
        with encrypting(out, parse_recipients(recipient)) as plain:
            plain.write(os.urandom(size))
    assert caught.value.errno == errno.ENOSPC
