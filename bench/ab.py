"""Interleaved A/B of this checkout's agent against another checkout's, round by round,
beside the anchor measured in each round:

    python -m bench.ab ingest BASE_CHECKOUT [N [ROUNDS [WORK_DIR]]]
    python -m bench.ab drain  BASE_CHECKOUT [N [ROUNDS [WORK_DIR]]]

ingest: one stop-and-wait meter, N frames, against the ingest ceiling (bench/ceiling.py).
drain: a backlog of N records drained to the emulator, against the bare httpx.Client loop
(records/s, and the agent's CPU seconds per 1 000 records).
WORK_DIR=/dev/shm takes the disk out (the agent's own CPU is then the limit).
"""

import statistics
import sys
import tempfile
from pathlib import Path

import bench.__main__ as b
import bench.common as common


def main() -> None:
    kind = sys.argv[1]
    trees = {"new": common.ROOT, "base": Path(sys.argv[2])}
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    res: dict[str, list[float]] = {"anchor": [], "new": [], "base": []}
    cpu: dict[str, list[float]] = {"anchor": [], "new": [], "base": []}
    here = common.ROOT
    with tempfile.TemporaryDirectory(dir=sys.argv[5] if len(sys.argv) > 5 else None) as tmp:
        for r in range(rounds):
            for name, root in trees.items():
                common.ROOT = root  # the agent runs as `python -m agent` from that tree
                work = Path(tmp) / f"{name}{r}"
                if kind == "ingest":
                    res[name].append(b.agent_ingest(work, n, meters=1, burst=1))
                else:
                    rate, per_1000 = b.agent_drain(work, n)
                    res[name].append(rate)
                    cpu[name].append(per_1000)
            common.ROOT = here
            if kind == "ingest":
                res["anchor"].append(b.ceiling_ingest(Path(tmp) / f"c{r}", n))
            else:
                rate, per_1000, _ = b.bare_drain(Path(tmp) / f"new{r}" / "journal.sqlite3", 1)
                res["anchor"].append(rate)
                cpu["anchor"].append(per_1000)
            print(r, {k: round(v[-1]) for k, v in res.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    unit = "frames/s" if kind == "ingest" else "records/s"
    print(
        f"median {unit}",
        {k: round(v) for k, v in med.items()},
        f"new/anchor {med['new'] / med['anchor']:.2f},",
        f"base/anchor {med['base'] / med['anchor']:.2f}",
    )
    if kind == "drain":
        print("median CPU s per 1000", {k: round(statistics.median(v), 3) for k, v in cpu.items()})


if __name__ == "__main__":
    main()
