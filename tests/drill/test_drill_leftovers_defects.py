"""Defects a review found in the drill's scratch database naming and leftover cleanup (jobs/drill/postgres.py:
`_create`, `_clear_leftovers`, `_not_droppable`), all fixed; each test names one and guards against its return.
The hard rule they guard: a drill never touches a database that is not a scratch database of its own set that
nobody uses. The fix: a concurrent CREATE's UniqueViolation moves to the next second's name; the mark (COMMENT)
names the set's full database name and a leftover is dropped only when its comment is exactly this set's and the
drill's role owns it; a drill keeps a session on its scratch database while it lives, and ages go by the server's
clock; advice quotes identifiers."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
import threading
import uuid

import psycopg
from psycopg import sql
from structlog.testing import capture_logs

from jobs.drill import postgres as drill_pg
from jobs.drill.postgres import comment_for, scratch_database, scratch_name
from jobs.engines.pg_connect import quote_ident
from jobs.engines import pg_connect
from jobs.engines.pg_connect import parse_url
from jobs.errors import SourceError
from tests.drill.conftest import scratch_databases
from tests.postgres.conftest import admin, url_for

OLD = "20200101000000"


def exists(name: str) -> bool:
    with admin() as connection:
        return connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def create(name: str, comment: str | None, owner: str | None = None) -> None:
    with admin() as connection:
        owned = sql.SQL(" OWNER {}").format(sql.Identifier(owner)) if owner else sql.SQL("")
        connection.execute(sql.SQL("CREATE DATABASE {}{}").format(sql.Identifier(name), owned))
        if comment is not None:
            connection.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(comment)))


def drop(*names: str) -> None:
    with admin() as connection:
        for name in names:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def databases(*names: str) -> Iterator[None]:
    try:
        yield
    finally:
        drop(*names)


def one_drill(database: str) -> None:
    """What a drill of the set whose database is `database` does to the server before and after its restore."""
    with scratch_database(parse_url(url_for(database)), threading.Event()):
        pass


def test_two_drills_of_a_set_creating_their_scratch_database_at_the_same_moment_both_get_one(make_db) -> None:
    """Defect: `_create` retries the next second's name only on DuplicateDatabase, but two CREATE DATABASE of one
    name running at the same moment fail the loser with UniqueViolation ("duplicate key value violates unique
    constraint pg_database_datname_index"): PostgreSQL checks the name, then inserts, and the concurrent insert
    hits the unique index. So exactly the case the retry was written for (two drills of a set in the same second:
    the scheduled one and `backup-worker drill`, two instances) still fails the second drill at stage `scratch`."""
    app = make_db("race")
    server = parse_url(url_for(app))
    start = datetime.now(timezone.utc)
    made: list[str] = []
    failures: list[str] = []
    for step in range(3):
        now = start + timedelta(minutes=step)  # each round's names its own: a round drops the names it made
        barrier = threading.Barrier(4)

        def one() -> None:
            with pg_connect.connect(server) as session:
                barrier.wait()
                try:
                    made.append(drill_pg._create(session, app, now))
                except psycopg.Error as error:
                    failures.append(f"{type(error).__name__}: {error}")

        threads = [threading.Thread(target=one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        drop(*made)
    assert failures == []
    assert len(made) == len(set(made)) == 12


def test_a_leftover_of_another_set_whose_database_name_starts_with_this_sets_is_not_dropped(make_db) -> None:
    """Defect: `_clear_leftovers` selects `starts_with(datname, '<db>_drill_') AND datname ~ '_drill_\\d{14}$'`.
    For the set whose database is `app`, that also selects the scratch databases of a set whose database is
    `app_drill_x` (`app_drill_x_drill_<stamp>`), marked with the same COMMENT: the drill of `app` drops another
    set's database. The docs promise only those "named `<db>_drill_<stamp>` for the set's database"."""
    app = make_db("pfx")
    other_set = f"{app}_drill_x"
    other_leftover = scratch_name(other_set, datetime(2020, 1, 1, tzinfo=timezone.utc))
    with databases(other_set, other_leftover):
        create(other_set, comment=None)
        create(other_leftover, comment_for(other_set))  # that set's own mark
        one_drill(app)
        assert exists(other_leftover), "the drill of one set dropped another set's scratch database"


def test_a_leftover_of_another_set_whose_long_name_shares_the_first_42_bytes_is_not_dropped() -> None:
    """Defect: `scratch_name` keeps only the first 42 bytes of the database's name (63 - len('_drill_<stamp>')),
    and the COMMENT is the same for every set, so two sets whose database names share their first 42 bytes have
    scratch databases that nothing tells apart: the drill of one drops the other's. The mark would have to say
    whose it is (the set's full database name in the COMMENT, compared before dropping)."""
    stem = f"bw_review_{uuid.uuid4().hex[:8]}_" + "x" * 30  # 49 bytes
    mine, theirs = f"{stem}_orders", f"{stem}_billing"
    assert mine.encode()[:42] == theirs.encode()[:42] and mine != theirs
    their_leftover = scratch_name(theirs, datetime(2020, 1, 1, tzinfo=timezone.utc))
    with databases(mine, theirs, their_leftover):
        create(mine, comment=None)
        create(theirs, comment=None)
        create(their_leftover, comment_for(theirs))  # that set's own mark
        one_drill(mine)
        assert exists(their_leftover), "the drill of one set dropped another set's scratch database"


def test_a_live_drills_scratch_database_is_not_dropped_by_another_drill_of_the_set_between_its_sessions(
        make_db, monkeypatch) -> None:
    """Defect: "unused" is judged by one DROP DATABASE at one instant, but a drill holds no session on its scratch
    database for its whole life: between CREATE and pg_restore (server_version, pg_restore --list, the lock watch
    connecting), and between pg_restore's exit and the row count, nobody is connected. "Over an hour old" is judged
    by a stamp from the creating machine's clock, so a drill whose clock runs over an hour behind (another instance,
    a laptop running `backup-worker drill`), or simply a drill whose restore took over an hour, has its live scratch
    database dropped by another drill of the set, and fails. A drill should keep one session on its scratch
    database from creation to drop (and/or stamp with the server's clock)."""
    app = make_db("live")
    server = parse_url(url_for(app))
    real = datetime.now(timezone.utc)

    class Behind(datetime):
        @classmethod
        def now(cls, tz=None):  # this machine's clock is two hours behind the other instance's
            return real - timedelta(hours=2)

    monkeypatch.setattr(drill_pg, "datetime", Behind)
    with scratch_database(server, threading.Event()) as live:
        monkeypatch.setattr(drill_pg, "datetime", datetime)
        # the live drill is between two of its sessions (pg_restore has exited, the row count not yet connected)
        one_drill(app)  # another drill of the set, on a machine with the right time
        assert exists(live.dbname), "another drill dropped the scratch database of a drill still running"


def test_a_database_marked_with_the_drills_comment_but_owned_by_another_role_is_not_dropped(make_db, make_role) -> None:
    """Defect: the COMMENT is the only proof that the drill created a database, and any owner may set any comment
    (copied from a leftover, a tool that clones database settings, a restore of pg_dumpall). A worker connecting as
    a superuser (the usual Railway `postgres` URL) then drops a database another role owns. A scratch database is
    always owned by the role that created it: `datdba = current_user` is a check the server enforces."""
    app = make_db("owner")
    someone = make_role("someone")
    theirs = f"{app}_drill_{OLD}"
    with databases(theirs):
        create(theirs, comment_for(app), owner=someone)  # this set's mark, forged
        one_drill(app)
        assert exists(theirs), "a drill running as a superuser dropped a database another role owns"


def test_the_leftover_warning_gives_a_drop_command_that_names_that_database(make_db) -> None:
    """Defect: the `drill.scratch_leftover` warning tells the operator to run `DROP DATABASE <name>` with the name
    unquoted. For a set whose database has capitals (`MyApp`), PostgreSQL folds the unquoted name to lower case:
    the command fails, or drops `myapp_drill_<stamp>`, another database (another set's: the hard rule broken by
    the operator following the worker's advice). The same goes for `drill.scratch_left` and the
    `ALTER ROLE {user} CREATEDB` advice."""
    app = f"BW_Review_{uuid.uuid4().hex[:8]}"
    leftover = f"{app}_drill_{OLD}"
    folded = leftover.lower()
    with databases(app, leftover, folded):
        create(app, comment=None)
        create(leftover, comment="not the drill's")  # kept, with the warning
        create(folded, comment=None)  # a database of another set, `bw_review_…`
        with capture_logs() as logs:
            one_drill(app)
        [warning] = [event for event in logs if event["event"] == "drill.scratch_leftover"]
        command = warning["detail"].split("drop it by hand: ", 1)[1]
        with admin() as connection:
            connection.execute(command)
        assert exists(folded), f"running the warning's own command ({command}) dropped another database"
        assert not exists(leftover)


def test_a_leftover_of_this_set_marked_and_owned_by_the_drills_role_and_old_is_still_dropped(make_db) -> None:
    """The fixes above must not keep everything: this set's own old leftover (its mark, the drill's role as owner,
    nobody connected) is dropped."""
    app = make_db("own")
    mine = f"{app}_drill_{OLD}"
    with databases(mine), capture_logs() as logs:
        create(mine, comment_for(app))
        one_drill(app)
        assert not exists(mine)
    assert [(event["event"], event["database"]) for event in logs if event["event"].startswith("drill.scratch_leftover")] == [
        ("drill.scratch_leftover_dropped", mine)]


def test_a_scratch_database_whose_mark_cannot_be_set_is_dropped_before_the_drill_fails(make_db, monkeypatch) -> None:
    """Defect: when COMMENT ON DATABASE failed after CREATE DATABASE, the new database stayed, unmarked, so no
    later drill would ever drop it."""
    app = make_db("nomark")
    monkeypatch.setattr(drill_pg, "comment_for", lambda database: "\x00")  # psycopg refuses a NUL in text
    try:
        one_drill(app)
    except SourceError as error:
        assert "cannot create the drill's scratch database" in str(error)
    else:
        raise AssertionError("the drill went on without its mark")
    assert scratch_databases(app) == []


def test_when_every_name_is_taken_the_sentence_names_the_last_name_tried(make_db) -> None:
    """Defect: the sentence named the first name tried (this second's), not the one CREATE last failed on."""
    app = make_db("taken")
    with admin() as connection:
        start = connection.execute("SELECT now()").fetchone()[0].astimezone(timezone.utc)
    taken = [scratch_name(app, start + timedelta(seconds=ahead)) for ahead in range(drill_pg.NAME_TRIES + 5)]
    with databases(*taken):
        for name in taken:
            create(name, comment=None)
        try:
            one_drill(app)
        except SourceError as error:
            [named] = [name for name in taken if name in str(error)]
            assert taken.index(named) >= drill_pg.NAME_TRIES - 1, str(error)
            assert "already exists" in str(error)
        else:
            raise AssertionError("a drill created a scratch database although every name was taken")


def test_identifiers_in_advice_are_quoted_when_postgresql_would_fold_or_refuse_them() -> None:
    assert quote_ident("app_drill_20200101000000") == "app_drill_20200101000000"
    assert quote_ident("MyApp") == '"MyApp"'
    assert quote_ident('a"b') == '"a""b"'
    assert quote_ident("user") == '"user"'
    assert quote_ident("my app") == '"my app"'
    assert comment_for('a"b') == 'backup-worker restore drill scratch database of "a""b"; dropped when its drill ends'
