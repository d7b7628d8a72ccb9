"""Interleaved A/B of one stop-and-wait meter's ingest: this checkout's agent against
another checkout's, round by round, beside the ceiling (bench/ceiling.py) of each round.

    python -m bench.ab_ingest BASE_CHECKOUT [FRAMES [ROUNDS [WORK_DIR]]]

WORK_DIR=/dev/shm takes the disk out (the agent's own CPU is then the limit).
"""

import statistics
import sys
import tempfile
from pathlib import Path

import bench.__main__ as b
import bench.common as common


def main() -> None:
    trees = {"new": common.ROOT, "base": Path(sys.argv[1])}
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    res: dict[str, list[float]] = {"ceiling": [], "new": [], "base": []}
    here = common.ROOT
    with tempfile.TemporaryDirectory(dir=sys.argv[4] if len(sys.argv) > 4 else None) as tmp:
        for r in range(rounds):
            res["ceiling"].append(b.ceiling_ingest(Path(tmp) / f"c{r}", n))
            for name, root in trees.items():
                common.ROOT = root  # the agent runs as `python -m agent` from that tree
                res[name].append(b.agent_ingest(Path(tmp) / f"{name}{r}", n, meters=1, burst=1))
            common.ROOT = here
            print(r, {k: round(v[-1]) for k, v in res.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(
        "median frames/s",
        {k: round(v) for k, v in med.items()},
        f"new/ceiling {med['new'] / med['ceiling']:.2f},",
        f"base/ceiling {med['base'] / med['ceiling']:.2f}",
    )


if __name__ == "__main__":
    main()
