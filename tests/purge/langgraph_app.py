"""Real LangGraph apps on a real checkpoint store, for the thread rule's tests (test_langgraph.py,
test_purge_edge_cases.py): the apps, the SQLite and Postgres savers, and the purge of `langgraph=90d` as the tests
run it, to the end or stopped right after its first step."""

from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timedelta, timezone
import operator
from pathlib import Path
import sqlite3
import threading
import time
from typing import Annotated, Any, TypedDict

import pytest

from jobs.errors import Cancelled
from jobs.purge import Held, RuleResult, parse_retention_rules, purge
from tests.purge.conftest import hold, pg_execute

langgraph_graph = pytest.importorskip("langgraph.graph")
langgraph_types = pytest.importorskip("langgraph.types")
SqliteSaver = pytest.importorskip("langgraph.checkpoint.sqlite").SqliteSaver
PostgresSaver = pytest.importorskip("langgraph.checkpoint.postgres").PostgresSaver

AGE = timedelta(days=90)
RULE = "langgraph=90d"
CHECKPOINTS = "SELECT count(*) FROM checkpoints"


class State(TypedDict):
    messages: Annotated[list[str], operator.add]


def app(saver: Any) -> Any:
    """A one-node LangGraph app: every call appends the input and a reply to the thread's messages."""
    def reply(state: State) -> dict[str, list[str]]:
        return {"messages": [f"reply to {state['messages'][-1]}"]}

    builder = langgraph_graph.StateGraph(State)
    builder.add_node("reply", reply)
    builder.add_edge(langgraph_graph.START, "reply")
    builder.add_edge("reply", langgraph_graph.END)
    return builder.compile(checkpointer=saver)


def app_with_subgraph(saver: Any) -> Any:
    """A LangGraph app whose second node is a subgraph that stops at a human-in-the-loop interrupt (the
    subgraph's checkpoints, in their own checkpoint_ns, are newer than the root's newest one)."""
    def draft(state: State) -> dict[str, list[str]]:
        return {"messages": ["draft"]}

    def ask(state: State) -> dict[str, list[str]]:
        answer = langgraph_types.interrupt("approve?")
        return {"messages": [f"approved {answer}"]}

    inner = langgraph_graph.StateGraph(State)
    inner.add_node("draft", draft)
    inner.add_node("ask", ask)
    inner.add_edge(langgraph_graph.START, "draft")
    inner.add_edge("draft", "ask")
    inner.add_edge("ask", langgraph_graph.END)

    def first(state: State) -> dict[str, list[str]]:
        return {"messages": ["first"]}

    outer = langgraph_graph.StateGraph(State)
    outer.add_node("first", first)
    outer.add_node("inner", inner.compile())
    outer.add_edge(langgraph_graph.START, "first")
    outer.add_edge("first", "inner")
    outer.add_edge("inner", langgraph_graph.END)
    return outer.compile(checkpointer=saver)


def config(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}}


def talk(graph: Any, thread: str, turns: int) -> None:
    for turn in range(turns):
        graph.invoke({"messages": [f"{thread} says {turn}"]}, config(thread))


def messages(graph: Any, thread: str) -> list[str]:
    return graph.get_state(config(thread)).values.get("messages", [])


def next_second() -> datetime:
    """Wait until the next whole second has begun; return it (the purge's cutoff: threads written before it are
    old, threads written after it are not)."""
    now = datetime.now(timezone.utc)
    boundary = now.replace(microsecond=0) + timedelta(seconds=1)
    while datetime.now(timezone.utc) <= boundary:
        time.sleep(0.01)
    return boundary


# --- the checkpoint stores: (URL, saver) --------------------------------------------------------------------

@contextmanager
def sqlite_store(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """The SQLite saver on `tmp_path/rose.db` (WAL)."""
    path = tmp_path / "rose.db"
    connection = sqlite3.connect(path, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    try:
        yield f"sqlite:///{path}", SqliteSaver(connection)
    finally:
        connection.close()


@contextmanager
def postgres_store(url: str) -> Iterator[tuple[str, Any]]:
    """The Postgres saver on the database at `url`, its tables set up."""
    with PostgresSaver.from_conn_string(url) as saver:
        saver.setup()
        yield url, saver


def scalar(url: str, query: str) -> Any:
    """The one value `query` returns on the store at `url` (SQLite or PostgreSQL)."""
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            return db.execute(query).fetchone()[0]
    return pg_execute(url, query)[0][0]


def thread_ids(url: str) -> set[str]:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            found = {row[0] for table in ("checkpoints", "writes") for row in db.execute(f"SELECT thread_id FROM {table}")}
        return found
    return {row[0] for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
            for row in pg_execute(url, f"SELECT thread_id FROM {table}")}


# --- the purge of RULE --------------------------------------------------------------------------------------

def purge_threads(url: str, cutoff: datetime, cancel: threading.Event | None = None, held: Held | None = None,
                  **options: Any) -> list[RuleResult]:
    """Purge RULE at `cutoff` + AGE (threads written before `cutoff` are old), following `held` (by default what
    a backup taken now holds)."""
    return purge(url, parse_retention_rules(RULE), cutoff + AGE, cancel or threading.Event(),
                 held=held if held is not None else hold(url), **options)


def purge_stopped_after_first_step(url: str, cutoff: datetime, batch_size: int) -> Cancelled:
    """Purge RULE while a watcher stops the purge as soon as its first step has deleted checkpoints (a pause of
    0.5 s between steps leaves it the time); return the Cancelled the purge raised."""
    total = scalar(url, CHECKPOINTS)
    cancel = threading.Event()

    def stop_after_first_step() -> None:
        while not cancel.is_set():
            if scalar(url, CHECKPOINTS) < total:
                cancel.set()
            cancel.wait(0.005)

    watcher = threading.Thread(target=stop_after_first_step)
    watcher.start()
    try:
        with pytest.raises(Cancelled) as stopped:
            purge_threads(url, cutoff, cancel, pause=0.5, batch_size=batch_size)
    finally:
        cancel.set()
        watcher.join()
    return stopped.value
