"""`probex bench zoo-processes`: the zoo's trees one after another, and side by side.

One run generates the same preset (tiny; `--quick`: micro) twice into temp dirs: in one
process, then with its trees side by side in one process per usable core (one torch thread
each, as `generate_zoo` runs by default). It prints each way's seconds, per tree and in all,
the speed-up, and whether the two zoos are the same bytes (they must be: every tree draws
from its own seeded generators). The whole run is bounded by its longest tree, and each
process pays its start (importing torch) and a copy of the image pools.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

from probex_core.zoo import PRESETS, generate_zoo
from probex_core.zoo.parallel import usable_cores


def _digests(zoo: Path) -> dict[str, str]:
    """Every file's sha256 but summary.json's (which holds the timings)."""
    return {
        str(p.relative_to(zoo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(zoo.rglob("*"))
        if p.is_file() and p.name != "summary.json"
    }


def run(quick: bool = False) -> dict:
    preset = PRESETS["micro" if quick else "tiny"]
    cores = usable_cores()
    rows, digests = {}, {}
    with tempfile.TemporaryDirectory(prefix="probex-bench-zoo-") as tmp:
        for way, workers in (("one after another", 1), ("side by side", cores)):
            out = Path(tmp) / str(workers)
            t0 = time.perf_counter()
            summary = generate_zoo(preset, out, seed=0, progress=False, workers=workers)
            rows[way] = {
                "processes": summary["processes"],
                "seconds": time.perf_counter() - t0,
                "trees": {t["tree_id"]: t["seconds"] for t in summary["trees"]},
            }
            digests[way] = _digests(out)
    same = digests["one after another"] == digests["side by side"]
    speedup = rows["one after another"]["seconds"] / rows["side by side"]["seconds"]
    trees = list(rows["one after another"]["trees"])
    print(f"zoo {preset.name!r} seed 0, {cores} usable cores, 1 torch thread per process")
    print(f"{'way':18s} {'processes':>9s} " + " ".join(f"{t:>7s}" for t in trees) + "  total s")
    for way, row in rows.items():
        cells = " ".join(f"{row['trees'][t]:7.1f}" for t in trees)
        print(f"{way:18s} {row['processes']:9d} {cells}  {row['seconds']:7.1f}")
    print(f"speed-up {speedup:.2f}×; same bytes: {'yes' if same else 'NO'}", flush=True)
    if not same:
        raise RuntimeError("the zoo's trees side by side wrote other bytes than one by one")
    return {"preset": preset.name, "cores": cores, "ways": rows, "speedup": speedup}
