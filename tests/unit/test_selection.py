"""One selection of backups (jobs.selection): which backups count, which one is the newest, and what happens
when the newest proves damaged. Every caller (restore, verify, freshness, catch-up, retention) asks here."""

from datetime import datetime, timedelta, timezone

import pytest

from jobs import selection
from jobs.backups import Backup
from jobs.errors import IntegrityError, NotFound
from jobs.selection import Purpose

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=timezone.utc)


def backup(hours_old: float, *, verified: bool = True, stored: int | None = 10, present: bool = True,
           created_offset_h: float = 0.0, reason: str | None = None) -> Backup:
    """A backup whose artifact stamp is `hours_old` before NOW; its manifest's created_at may differ by
    `created_offset_h` (a manifest written by a wrong clock, or edited)."""
    stamp = NOW - timedelta(hours=hours_old)
    artifact = f"app-{stamp:%Y%m%dT%H%M%SZ}.sqlite.zst"
    created = stamp + timedelta(hours=created_offset_h)
    manifest = {"created_at": created.isoformat(), **({"reason": reason} if reason else {})}
    return Backup(id=artifact.removesuffix(".zst"), artifact=artifact, created_at=created, size=10, sha256="0" * 64,
                  verified=verified, manifest=manifest, stored_size=stored, present=present)


@pytest.mark.parametrize(
    "case, backups, expected_hours_old",
    [
        ("the newest sound backup", [backup(1), backup(25)], 1),
        ("an unverified newer one does not count", [backup(1, verified=False), backup(25)], 25),
        ("a newer one of the wrong size does not count", [backup(1, stored=9), backup(25)], 25),
        ("a newer one whose artifact is missing does not count", [backup(1, present=False), backup(25)], 25),
        ("a stamp a year ahead is never the newest", [backup(-24 * 365), backup(2)], 2),
        ("a created_at a year ahead is never the newest", [backup(0.5, created_offset_h=24 * 365), backup(2)], 2),
        ("4 minutes ahead is the tolerance, still the newest", [backup(-4 / 60), backup(2)], -4 / 60),
        ("6 minutes ahead is in the future", [backup(-6 / 60), backup(2)], 2),
        ("only future ones: none", [backup(-48)], None),
        ("nothing at all: none", [], None),
    ],
)
@pytest.mark.parametrize("purpose", [Purpose.FRESHNESS, Purpose.CATCH_UP, Purpose.RETENTION])
def test_the_newest_sound_backup_is_the_same_answer_for_every_purpose(case, backups, expected_hours_old, purpose) -> None:
    chosen = selection.newest(backups, purpose, NOW)
    if expected_hours_old is None:
        assert chosen is None, case
    else:
        assert chosen is not None and chosen.created_at == NOW - timedelta(hours=expected_hours_old), case


@pytest.mark.parametrize(
    "case, newest, flags",
    [
        ("sound", backup(1), []),
        ("future", backup(-10), ["future"]),
        ("damaged", backup(1, stored=3), ["damaged"]),
        ("pre-restore", backup(1, reason="pre-restore"), ["pre-restore"]),
        ("future and damaged", backup(-10, present=False), ["future", "damaged"]),
    ],
)
def test_flags_say_why_a_backup_is_special(case, newest, flags) -> None:
    assert selection.flags(newest, NOW) == flags, case


def test_latest_names_a_damaged_newest_backup_and_never_falls_back_silently() -> None:
    newest, older = backup(1, stored=9), backup(25)
    with pytest.raises(IntegrityError) as raised:
        selection.latest([older, newest], Purpose.RESTORE, NOW, None, fallback=False, where="here")
    message = str(raised.value)
    assert newest.id in message and "--fallback" in message and older.id in message


def test_latest_with_fallback_takes_the_newest_intact_older_one_and_says_what_it_skipped() -> None:
    newest, middle, oldest = backup(1), backup(25, stored=1), backup(49)

    def prove(candidate: Backup) -> str:
        if candidate is newest:
            raise IntegrityError(f"{candidate.artifact} does not match the SHA-256 in its manifest")
        return "proven"

    chosen, proof, notes = selection.latest([oldest, middle, newest], Purpose.RESTORE, NOW, prove, fallback=True, where="here")
    assert (chosen, proof) == (oldest, "proven")
    assert [note.split(":")[0] for note in notes] == [f"skipped {newest.id}", f"skipped {middle.id}"]


def test_latest_without_fallback_reports_a_sha_mismatch_of_the_newest_by_name() -> None:
    newest, older = backup(1), backup(25)

    def prove(candidate: Backup) -> str:
        raise IntegrityError("does not match the SHA-256 in its manifest")

    with pytest.raises(IntegrityError, match=f"the newest backup {newest.id} in here is damaged"):
        selection.latest([older, newest], Purpose.VERIFY, NOW, prove, fallback=False, where="here")


def test_latest_passes_over_future_backups_and_says_so_when_nothing_else_is_there() -> None:
    ahead = backup(-24 * 365)
    assert selection.latest([ahead, backup(2)], Purpose.RESTORE, NOW, None, False, "here")[0].created_at == NOW - timedelta(hours=2)
    with pytest.raises(NotFound, match="dated in the future"):
        selection.latest([ahead], Purpose.RESTORE, NOW, None, False, "here")


def test_when_every_backup_is_damaged_even_fallback_fails_naming_them() -> None:
    with pytest.raises(IntegrityError, match="none of the 2 verified backups"):
        selection.latest([backup(1, stored=1), backup(2, present=False)], Purpose.RESTORE, NOW, None, True, "here")


def flagged(hours_old: float, flag: str) -> Backup:
    plain = backup(hours_old)
    return Backup(id=plain.id, artifact=plain.artifact, created_at=plain.created_at, size=plain.size, sha256=plain.sha256,
                  verified=True, manifest={**plain.manifest, "flags": [flag]}, stored_size=plain.stored_size)


@pytest.mark.parametrize("flag", ["shrunk", "empty_allowed"])
def test_a_flagged_backup_counts_for_freshness_but_restores_of_the_latest_and_retention_slots_pass_over_it(flag) -> None:
    newest, older = flagged(1, flag), backup(25)
    assert selection.newest([newest, older], Purpose.FRESHNESS, NOW) == newest
    assert selection.newest([newest, older], Purpose.CATCH_UP, NOW) == newest
    assert selection.newest([newest, older], Purpose.RETENTION, NOW) == older
    chosen, _, notes = selection.latest([newest, older], Purpose.RESTORE, NOW, None, False, "here")
    assert chosen == older and len(notes) == 1 and newest.id in notes[0] and "by its id" in notes[0]
    assert flag in selection.flags(newest, NOW)


def test_only_flagged_backups_are_still_restored_rather_than_nothing() -> None:
    only = flagged(1, "empty_allowed")
    chosen, _, notes = selection.latest([only], Purpose.RESTORE, NOW, None, False, "here")
    assert chosen == only and "flagged" in notes[0]


def test_a_manifests_flags_are_untrusted_input() -> None:
    odd = Backup(id="x", artifact="app-20261122T010000Z.sqlite.zst", created_at=NOW - timedelta(hours=2), size=10,
                 sha256="0" * 64, verified=True, manifest={"flags": "shrunk"}, stored_size=10)
    assert selection.manifest_flags(odd) == []


def test_a_pre_restore_safety_backup_is_fresh_but_never_the_latest_to_restore_nor_a_retention_slot() -> None:
    """Restoring --latest twice must not undo the first restore (review of issue 17)."""
    safety, before = backup(1, reason="pre-restore"), backup(3)
    assert selection.newest([safety, before], Purpose.FRESHNESS, NOW) == safety
    assert selection.newest([safety, before], Purpose.RETENTION, NOW) == before
    chosen, _, notes = selection.latest([safety, before], Purpose.RESTORE, NOW, None, False, "here")
    assert chosen == before and "safety backup" in notes[0]

@pytest.mark.parametrize(("artifact_suffix", "manifest", "encrypted"), [
    (".zst", {}, False),
    (".zst", {"encryption": {"recipients": 2}}, True),
    (".zst.age", {}, True),
    (".zst.age", {"encryption": {"recipients": 1}}, True),
    (".zst", {"encryption": None}, False),
])
def test_an_encrypted_backup_is_flagged_by_its_name_or_its_manifest(artifact_suffix, manifest, encrypted) -> None:
    stamp = NOW - timedelta(hours=1)
    artifact = f"app-{stamp:%Y%m%dT%H%M%SZ}.sqlite{artifact_suffix}"
    found = Backup(id=f"app-{stamp:%Y%m%dT%H%M%SZ}.sqlite", artifact=artifact, created_at=stamp, size=10,
                   sha256="0" * 64, verified=True, manifest={"created_at": stamp.isoformat(), **manifest}, stored_size=10)
    assert ("encrypted" in selection.flags(found, NOW)) is encrypted
    assert selection.newest([found], Purpose.FRESHNESS, NOW) is found  # an encrypted backup counts like any other
