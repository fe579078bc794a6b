"""Client-side encryption with age (age-encryption.org v1, issue 20): the one home of it. Import it as
`from jobs import encryption`; keys.py holds the keys, streams.py the streams.

The cryptography is pyrage's (the Rust `age` crate); nothing here is cryptography. This package parses
recipients (public keys: `age1…`, `ssh-ed25519 …`, `ssh-rsa …`) and identities (secret keys: `AGE-SECRET-KEY-1…`,
or an unencrypted SSH private key), and streams: `encrypting` turns writes of plaintext into an age stream in
`out`, `decrypting` turns an age stream into reads of plaintext, `opens` tells by a trial decryption of a file's
header whether identities open it. pyrage's `encrypt_io`/`decrypt_io` take a reader and a writer and run to the
end, so each stream runs them on a thread on one side of an `os.pipe`: memory stays at a few chunks whatever the
size, an error on the thread is raised in the caller, and the thread is always joined.

pyrage is imported on first use, so the worker runs without it while encryption is not configured.
"""

from jobs.encryption.keys import (FORMAT, IDENTITY_FILE_VARIABLE, IDENTITY_VARIABLE, IDENTITY_VARIABLES, PACKAGE,
                                  RECIPIENTS_VARIABLE, SUFFIX, BindingMissing, Identity, Recipient, binding, configured,
                                  fingerprints, identity_secrets, load_identities, manifest_field, new_identity,
                                  parse_recipients)
from jobs.encryption.streams import decrypting, encrypting, opens

__all__ = ["FORMAT", "IDENTITY_FILE_VARIABLE", "IDENTITY_VARIABLE", "IDENTITY_VARIABLES", "PACKAGE", "RECIPIENTS_VARIABLE",
           "SUFFIX", "BindingMissing", "Identity", "Recipient", "binding", "configured", "decrypting", "encrypting",
           "fingerprints", "identity_secrets", "load_identities", "manifest_field", "new_identity", "opens",
           "parse_recipients"]
