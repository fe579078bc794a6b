"""Rose, a voice companion: a sketch of the app in docs/deploy-sqlite-app.md's worked example (layout 1).

Conversations live in SQLite on the volume (/app/data/rose.db, WAL mode so that backups never block a write);
synthesized speech goes to /tmp/rose_audio, which the worker's CLEANUP_RULES empties of day-old files. Railway
starts it as `backup-worker run --exec "uvicorn app:app --host 0.0.0.0 --port ${PORT:-8000}"`; locally:
`ROSE_DB=data/rose.db BACKUP_SOURCE=sqlite:///data/rose.db backup-worker run --exec "uvicorn app:app"`.
"""

import os
from pathlib import Path
import sqlite3
import uuid

from fastapi import FastAPI

DB = Path(os.environ.get("ROSE_DB", "/app/data/rose.db"))
AUDIO = Path(os.environ.get("ROSE_AUDIO", "/tmp/rose_audio"))

app = FastAPI(title="Rose")


def connect() -> sqlite3.Connection:
    DB.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(DB, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, created_at TEXT DEFAULT CURRENT_TIMESTAMP, "
               "role TEXT NOT NULL, text TEXT NOT NULL, audio TEXT)")
    return db


@app.post("/say")
def say(text: str) -> dict[str, str]:
    """Store the user's line and Rose's answer; write the answer's audio to /tmp (a stand-in for real TTS)."""
    answer = f"You said: {text}"
    AUDIO.mkdir(parents=True, exist_ok=True)
    audio = AUDIO / f"{uuid.uuid4().hex}.mp3"
    audio.write_bytes(answer.encode())
    with connect() as db:
        db.execute("INSERT INTO messages (role, text) VALUES ('user', ?)", (text,))
        db.execute("INSERT INTO messages (role, text, audio) VALUES ('rose', ?, ?)", (answer, audio.name))
    return {"answer": answer, "audio": audio.name}


@app.get("/healthz")
def healthz() -> dict[str, str]:
    with connect() as db:
        db.execute("SELECT 1")
    return {"status": "ok"}
