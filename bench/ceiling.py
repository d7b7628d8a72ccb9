"""The ingest ceiling: what this machine allows a stop-and-wait meter at all. A responder
on the same kind of pty as the agent's serial driver reads a frame, makes one durable
commit of it (WAL, ``synchronous=FULL``, a one-column table, no index) and ACKs, with
nothing else in between: no framer object, no mapping, no dedupe.

``python -m bench.ceiling PORT DATABASE [--map]`` runs until stdin closes; it prints
"ready" once the port is open. ``--map`` adds, before each commit, only what an agent
must do with a frame before it may ACK a sale mapped and stored in one commit: the
agent's own framer, its key=value parser and ``map_record``; the commit still stores the
raw frame alone. That is the most any such agent could reach, whatever its journal does.
"""

from __future__ import annotations

import os
import select
import sqlite3
import sys
import threading
import tty
from dataclasses import replace

from agent.mapping import map_record
from agent.permits import DEFAULT_TEMPLATE, PermitForm, PermitNumbering
from bench.backlog import RULES
from drivers.framing import ACK, ETX, StxEtxFramer
from drivers.records import parse_kv

_ANSWER = bytes([ACK])


def serve(fd: int, db: sqlite3.Connection, stop: threading.Event) -> None:
    """Read frames (``STX · payload · ETX · check``), commit each, ACK it."""
    buffer = b""
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        buffer += os.read(fd, 4096)
        while (end := buffer.find(ETX)) >= 0 and len(buffer) > end + 1:
            frame, buffer = buffer[: end + 2], buffer[end + 2 :]
            db.execute("INSERT INTO frames (raw) VALUES (?)", (frame,))  # autocommit: durable
            os.write(fd, _ANSWER)


def serve_mapped(fd: int, db: sqlite3.Connection, stop: threading.Event) -> None:
    """As :func:`serve`, each frame framed, parsed and mapped by the agent's code first."""
    framer = StxEtxFramer()
    form = PermitForm.parse(DEFAULT_TEMPLATE, "PS-BENCH", "meter-1")  # as the bench's config
    rules = replace(RULES, numbering=PermitNumbering("PS-BENCH", {"meter-1": form}))
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        for event in framer.feed(os.read(fd, 4096)):
            map_record(parse_kv(event.payload), rules, source="meter-1")
            db.execute("INSERT INTO frames (raw) VALUES (?)", (event.payload,))
            os.write(fd, _ANSWER)


def main() -> None:
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    db = sqlite3.connect(sys.argv[2], isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE IF NOT EXISTS frames (raw BLOB NOT NULL)")
    stop = threading.Event()
    target = serve_mapped if sys.argv[3:] == ["--map"] else serve
    worker = threading.Thread(target=target, args=(fd, db, stop))
    worker.start()
    print("ready", flush=True)
    sys.stdin.read()
    stop.set()
    worker.join()
    db.close()
    os.close(fd)


if __name__ == "__main__":
    main()
