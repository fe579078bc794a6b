"""`keygen`: a new age identity and its recipient (issue 20). Needs no configuration: it is run wherever the
identity will be kept, and it works on a worker whose configuration is not valid yet.

stdout is an age identity file as age-keygen writes it (`backup-worker keygen > key.txt`, then `age -d -i
key.txt`), or with --json an object; the warning goes to stderr, so that it is seen but never saved with the key.
"""

from datetime import datetime, timezone
import json
import sys

from jobs import encryption
from worker.context import EXIT_OK, EXIT_USAGE

WARNING = ("keygen: put the recipient (public key) in {variable}={recipient}\n"
           "keygen: keep the identity (AGE-SECRET-KEY-1…) safe: losing it loses every backup encrypted to its "
           "recipient, and nobody can recover them. Keep it in a password manager or a vault; not in this worker's own "
           "variables if a stolen bucket or worker is what you protect against (docs/encryption.md).\n")


def cmd_keygen(as_json: bool) -> int:
    try:
        identity, recipient = encryption.new_identity()
    except encryption.BindingMissing as error:
        print(f"keygen: {error}", file=sys.stderr)
        return EXIT_USAGE
    fingerprint = encryption.Recipient(recipient, None).fingerprint
    if as_json:
        print(json.dumps({"identity": identity, "recipient": recipient, "fingerprint": fingerprint}, indent=2), flush=True)
    else:
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"# created: {created}\n# public key: {recipient}\n{identity}", flush=True)
    sys.stderr.write(WARNING.format(variable=encryption.RECIPIENTS_VARIABLE, recipient=recipient))
    return EXIT_OK
