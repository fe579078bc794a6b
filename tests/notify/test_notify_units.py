"""The pure parts of notifications (masking, ping URLs, the sentence, the payload) and one delivery against
real local receivers."""

import threading
import time
from pathlib import Path

import pytest
import urllib3

from jobs.redact import endpoint_secrets, mask_endpoint
from worker.config import ConfigError, load_config
from worker.monitoring import delivery
from worker.monitoring.delivery import Message, Sender, deliver
from worker.monitoring.dispatch import Notifier
from worker.monitoring.notifications import payload, wants_webhook
from worker.monitoring.pings import ping_url
from worker.runs import Outcome

SLACK = "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX"
DISCORD = "https://discord.com/api/webhooks/123456789/abcDEFsecretTOKEN"


@pytest.mark.parametrize("url, shown", [
    (SLACK, "https://hooks.slack.com/***"),
    (DISCORD, "https://discord.com/***"),
    ("https://hc-ping.com/5bf0a2b2-8d3c-4a4e-9d6b-1f2e3d4c5b6a", "https://hc-ping.com/***"),
    ("http://user:pw@127.0.0.1:8080/hook?token=abc", "http://127.0.0.1:8080/***"),
    ("https://example.com", "https://example.com"),
    ("hooks.slack.com/services/T/B/X", "***"),
    (None, None),
])
def test_a_webhook_url_is_shown_without_anything_after_its_host(url: str | None, shown: str | None) -> None:
    assert mask_endpoint(url) == shown


def test_the_secret_parts_of_a_webhook_url_are_known_for_scrubbing() -> None:
    found = endpoint_secrets("https://user:pw@hooks.example.com/services/T/B/TOKEN?key=abc")
    assert "/services/T/B/TOKEN" in found and "key=abc" in found and "pw" in found


def test_ping_urls_follow_healthchecks_io() -> None:
    base = "https://hc-ping.com/uuid-1234"
    assert ping_url(base, "start") == "https://hc-ping.com/uuid-1234/start"
    assert ping_url(base + "/", "fail") == "https://hc-ping.com/uuid-1234/fail"
    assert ping_url(base, "") == base
    assert ping_url("https://hc.example.com/ping/key/slug?create=1", "start") == "https://hc.example.com/ping/key/slug/start?create=1"


def failed() -> Outcome:
    return Outcome(job="backup", run_id="abc123def456", outcome="failed", duration_s=4.25, stage="upload",
                   reason="the bucket refused the upload: AccessDenied; check the key's permissions",
                   fields={"artifact": "app-20261122T020000Z.sqlite.zst", "size": 2048, "raw_size": 8192})


def test_a_failure_payload_has_the_contract_fields_and_one_sentence_for_slack_and_discord() -> None:
    body = payload(failed(), "web-1", ["app"])
    assert body["job"] == "backup" and body["outcome"] == "failed" and body["run_id"] == "abc123def456"
    assert body["duration_s"] == 4.25 and body["stage"] == "upload" and "AccessDenied" in body["reason"]
    assert body["host"] == "web-1" and body["backup_set"] == "app"
    assert body["artifact"] == "app-20261122T020000Z.sqlite.zst" and body["size"] == 2048 and body["raw_size"] == 8192
    assert body["text"] == body["content"]
    assert body["text"].startswith("backup of app failed on web-1 at stage upload: the bucket refused")


def test_a_success_sentence_names_the_artifact_and_sizes() -> None:
    outcome = Outcome("backup", "r1", "succeeded", 1.5, fields={"artifact": "app-20261122T020000Z.sqlite.zst",
                                                                 "size": 1536, "raw_size": 4 << 20})
    assert payload(outcome, "h", ["app"])["text"] == (
        "backup of app succeeded on h in 1.5 s: app-20261122T020000Z.sqlite.zst, 1.5 KiB (4.0 MiB raw)")


def test_a_long_reason_is_cut_to_what_discord_accepts() -> None:
    outcome = failed()
    outcome.reason = "x" * 5000
    assert len(payload(outcome, "h", [])["content"]) <= 2000


@pytest.mark.parametrize("job, outcome, notify_on, wanted", [
    ("backup", "failed", "failure", True),
    ("backup", "skipped", "failure", True),
    ("cleanup", "failed", "failure", True),
    ("backup", "succeeded", "failure", False),
    ("cleanup", "skipped", "failure", False),
    ("backup", "succeeded", "all", True),
    ("cleanup", "succeeded", "all", True),
])
def test_which_outcomes_are_notified(job: str, outcome: str, notify_on: str, wanted: bool) -> None:
    assert wants_webhook(Outcome(job, "r", outcome, 0.1), notify_on) is wanted


def test_bad_notification_variables_are_named_and_their_urls_masked(tmp_path: Path) -> None:
    env = {"BACKUP_DIR": str(tmp_path), "NOTIFY_WEBHOOK_URL": "ftp://hooks.example.com/services/SECRET",
           "NOTIFY_ON": "sometimes", "HEALTHCHECK_PING_URL": "hc-ping.com/SECRET", "HEALTH_PORT": "99999",
           "DISK_WARN_PERCENT": "101"}
    with pytest.raises(ConfigError) as raised:
        load_config(env, cwd=tmp_path)
    text = "; ".join(raised.value.problems)
    for name in ("NOTIFY_WEBHOOK_URL", "NOTIFY_ON", "HEALTHCHECK_PING_URL", "HEALTH_PORT", "DISK_WARN_PERCENT"):
        assert name in text
    assert "SECRET" not in text


def test_config_shows_notification_urls_masked_and_knows_their_secrets(tmp_path: Path) -> None:
    config = load_config({"BACKUP_DIR": str(tmp_path), "NOTIFY_WEBHOOK_URL": SLACK, "NOTIFY_ON": "all",
                          "HEALTHCHECK_PING_URL": "https://hc-ping.com/uuid-secret", "HEALTH_PORT": "8080"}, cwd=tmp_path)
    shown = config.describe()
    assert shown["NOTIFY_WEBHOOK_URL"] == "https://hooks.slack.com/***"
    assert shown["HEALTHCHECK_PING_URL"] == "https://hc-ping.com/***"
    assert shown["NOTIFY_ON"] == "all" and shown["HEALTH_PORT"] == 8080 and shown["DISK_WARN_PERCENT"] == 80
    assert "XXXXXXXXXXXXXXXXXXXXXXXX" not in repr(config) and "uuid-secret" not in repr(config)
    assert "/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX" in config.secrets()
    assert load_config({"BACKUP_DIR": str(tmp_path), "HEALTH_PORT": "off"}, cwd=tmp_path).health_port is None


def message(url: str) -> Message:
    return Message(url + "/hook", b"{}", "application/json", "webhook")


def test_delivery_retries_a_server_error_and_then_succeeds(receiver) -> None:
    receiver.statuses[:] = [503]
    problem, attempts = deliver(urllib3.PoolManager(), message(receiver.url), time.monotonic() + 10)
    assert problem is None and attempts == 2 and len(receiver.requests) == 2


def test_delivery_gives_up_on_a_client_error_at_once(receiver) -> None:
    receiver.statuses[:] = [404]
    problem, attempts = deliver(urllib3.PoolManager(), message(receiver.url), time.monotonic() + 10)
    assert problem == "HTTP 404" and attempts == 1


def test_delivery_to_a_refusing_receiver_ends_with_a_problem_in_words(refusing_url: str) -> None:
    problem, attempts = deliver(urllib3.PoolManager(), message(refusing_url), time.monotonic() + 10)
    assert problem.startswith("cannot connect") and attempts == delivery.ATTEMPTS
    assert "/hook" not in problem


def test_delivery_to_a_hanging_receiver_ends_by_its_deadline(hanging) -> None:
    began = time.monotonic()
    problem, _ = deliver(urllib3.PoolManager(), message(hanging.url), time.monotonic() + 4)
    assert "no answer" in problem
    assert time.monotonic() - began < 15  # a bound, not a speed: 4 s budget plus one read timeout at most


def test_a_sender_never_blocks_and_close_gives_up_after_its_grace(hanging) -> None:
    sender = Sender("webhook", hanging.url + "/hook")
    began = time.monotonic()
    for _ in range(delivery.QUEUE_SIZE + 5):  # more than the queue holds: the extra ones are dropped, not waited for
        sender.send(message(hanging.url))
    assert sender.close(0.5) is False
    assert time.monotonic() - began < 10


def test_close_returns_at_once_after_a_stop_signal(hanging) -> None:
    sender = Sender("webhook", hanging.url)
    sender.send(message(hanging.url))
    stop = threading.Event()
    stop.set()
    began = time.monotonic()
    sender.close(30, stop)
    assert time.monotonic() - began < 10  # STOP_DRAIN_S, not the 30 s grace


class Collecting:
    """A stand-in for a Sender that keeps what it is given (the delivery itself is tested above)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def send(self, message: Message) -> None:
        self.messages.append(message)


def test_what_is_sent_to_the_webhook_and_the_ping_holds_no_secret_of_the_configuration() -> None:
    webhook, ping = Collecting(), Collecting()
    notifier = Notifier(webhook=webhook, webhook_url="https://hooks.example.com/x", notify_on="all",  # type: ignore[arg-type]
                               ping=ping, ping_url="https://hc-ping.com/k", host="web-1", sets=["app"],  # type: ignore[arg-type]
                               secrets=["pass word#1"])
    outcome = Outcome(job="backup", run_id="abc123def456", outcome="failed", duration_s=1.0, stage="snapshot",
                      reason="cannot reach redis://:pass word#1@cache:6379 nor redis://:zz@cache:6380",
                      fields={"detail": ["pass word#1"]})
    notifier.listener("finished", outcome)
    sent = [m.body.decode() for m in webhook.messages + ping.messages]
    assert len(sent) == 2 and all("pass word" not in body and ":zz@" not in body for body in sent)
    assert "redis://:***@cache:6379" in sent[0] and "redis://:***@cache:6380" in sent[1]


def restored_at_start(outcome: str = "succeeded") -> Outcome:
    fields = {"on_start": True, "set": "app"}
    if outcome == "succeeded":
        fields.update(backup="app-20261122T020000Z.sqlite", location="s3", restored_to="/app/data/app.db")
        return Outcome("restore", "r2", outcome, 3.25, fields=fields)
    return Outcome("restore", "r2", outcome, 3.25, stage="verify", fields=fields,
                   reason="none of the 1 verified backups in the bucket is intact (skipped app-20261122T020000Z.sqlite: …)")


def test_a_restore_at_start_says_which_backup_came_from_where_into_what() -> None:
    body = payload(restored_at_start(), "web-1", ["app"])
    assert body["text"] == ("restore at start of app succeeded on web-1 in 3.2 s: app-20261122T020000Z.sqlite from s3 "
                            "into /app/data/app.db")
    assert body["backup_set"] == "app" and body["on_start"] is True and body["location"] == "s3"
    failed_body = payload(restored_at_start("failed"), "web-1", ["app", "cache"])
    assert failed_body["text"].startswith("restore at start of app failed on web-1 at stage verify: none of the 1")


def test_a_restore_at_start_names_the_backups_it_passed_over() -> None:
    outcome = restored_at_start()
    notes = ["skipped app-20261122T030000Z.sqlite: its SHA-256 does not match its manifest",
             "passed over app-20261122T040000Z.sqlite: it shrank to under a tenth of the set's previous backup"]
    outcome.fields["passed_over"] = notes
    body = payload(outcome, "web-1", ["app"])
    assert body["text"] == ("restore at start of app succeeded on web-1 in 3.2 s: app-20261122T020000Z.sqlite from s3 "
                            f"into /app/data/app.db ({notes[0]}; {notes[1]})")
    assert body["passed_over"] == notes


@pytest.mark.parametrize("outcome, pinged", [("succeeded", "/log"), ("failed", "/fail")])
def test_a_restore_at_start_is_pinged_without_a_start_and_a_manual_restore_is_not(outcome: str, pinged: str) -> None:
    ping = Collecting()
    notifier = Notifier(webhook=None, webhook_url=None, notify_on="failure", ping=ping,  # type: ignore[arg-type]
                               ping_url="https://hc-ping.com/k", host="web-1", sets=["app"])
    run = restored_at_start(outcome)
    notifier.listener("started", Outcome("restore", "r2", "running", 0.0))
    notifier.listener("finished", run)
    manual = Outcome("restore", "r3", outcome, 1.0, fields={"backup": "app-20261122T020000Z.sqlite"})
    notifier.listener("started", manual)
    notifier.listener("finished", manual)
    (message,) = ping.messages
    assert message.url == f"https://hc-ping.com/k{pinged}"
    assert "restore at start of app" in message.body.decode()


def warned() -> Outcome:
    return Outcome("backup", "r2", "succeeded", 2.0, fields={
        "artifact": "app-20261122T020000Z.sqlite.zst", "size": 100, "raw_size": 4096, "flags": ["shrunk"],
        "warnings": ["the backup app-20261122T020000Z.sqlite is 4096 bytes raw, under a tenth of the set's previous backup"]})


@pytest.mark.parametrize("notify_on", ["failure", "all"])
def test_a_backup_that_succeeded_with_a_warning_is_notified_whatever_notify_on(notify_on: str) -> None:
    assert wants_webhook(warned(), notify_on) is True


def test_a_warning_is_said_first_in_the_sentence_and_carried_in_the_payload() -> None:
    body = payload(warned(), "h", ["app"])
    assert body["outcome"] == "succeeded"
    assert body["text"].startswith("WARNING: backup of app succeeded on h")
    assert "under a tenth of the set's previous backup" in body["text"]
    assert body["warnings"] == warned().fields["warnings"] and body["flags"] == ["shrunk"]
