"""`probex bench NAME`: side-by-side measurements that print ratios from one run.

Each bench lives in its own module with a `run(quick: bool = False) -> dict` function that
prints a table and returns the numbers it printed. Targets are printed next to the measured
ratios; benches never assert wall-clock limits in tests.
"""

from __future__ import annotations

import importlib

BENCHES: dict[str, str] = {
    "core": "bench.core",
    "zoo": "bench.zoo",
    "zoo-processes": "bench.zoo_processes",
    "trees": "bench.trees",
    "search": "bench.search",
    "zoo-signal": "bench.zoo_signal",
    "lora-signal": "bench.lora_signal",
    "low-rank": "bench.low_rank",
    "modelj": "bench.modelj",
    "scale": "bench.scale",
}


def run_bench(name: str | None = None, quick: bool = False) -> dict[str, dict]:
    """Run one bench by name, or all of them when `name` is None."""
    names = [name] if name else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        raise SystemExit(f"unknown bench {unknown[0]!r}; choose from {', '.join(BENCHES)}")
    results = {}
    for n in names:
        module = importlib.import_module(BENCHES[n])
        print(f"== bench {n} ==")
        results[n] = module.run(quick=quick)
    return results
