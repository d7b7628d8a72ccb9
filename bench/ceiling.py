"""The ingest ceiling: what this machine allows a stop-and-wait meter at all. A responder
on the same kind of pty as the agent's serial driver reads a frame, makes one durable
commit of it (WAL, ``synchronous=FULL``, a one-column table, no index) and ACKs, with
nothing else in between: no framer object, no mapping, no dedupe.

``python -m bench.ceiling PORT DATABASE`` runs until stdin closes; it prints "ready" once
the port is open.
"""

from __future__ import annotations

import os
import select
import sqlite3
import sys
import threading
import tty

from drivers.framing import ACK, ETX

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


def main() -> None:
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    db = sqlite3.connect(sys.argv[2], isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE IF NOT EXISTS frames (raw BLOB NOT NULL)")
    stop = threading.Event()
    worker = threading.Thread(target=serve, args=(fd, db, stop))
    worker.start()
    print("ready", flush=True)
    sys.stdin.read()
    stop.set()
    worker.join()
    db.close()
    os.close(fd)


if __name__ == "__main__":
    main()
