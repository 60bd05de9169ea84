"""The zoo's trees trained side by side: one process per core, one torch thread each.

Each tree draws everything from its own seeded generators, and the zoo runs one torch thread
with deterministic algorithms either way, so a tree's bytes do not depend on which process
trains it, or on what the other processes do. A process per core, rather than threads in one
process: the batched matmuls are small, and OpenMP's threads spin-wait between them.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

import torch
from tqdm import tqdm

_steps: queue.Queue | None = None  # in a worker: where it reports its steps to the parent


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_trees(fn: Callable, jobs: Sequence[tuple], workers: int, threads: int, bar: tqdm) -> list:
    """`fn(*job, step)` for every job, results in job order; `step(n)` advances `bar`.

    With `workers` ≤ 1 the jobs run here, one after another; else in that many spawned
    processes, each with `threads` torch threads and deterministic algorithms, taking jobs in
    order as they free up (the order decides how the jobs pack). The first job to fail stops
    the rest: jobs not yet started are cancelled, those running finish, and its error is
    raised here. A worker ends itself when this process is killed.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job, bar.update) for job in jobs]
    context = multiprocessing.get_context("spawn")  # no fork of a process OpenMP has run in
    steps = context.Queue()
    with ProcessPoolExecutor(
        min(workers, len(jobs)), context, initializer=_start, initargs=(steps, threads, os.getpid())
    ) as pool:
        futures = [pool.submit(_call, fn, job) for job in jobs]
        try:
            _follow(futures, steps, bar)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    _drain(steps, bar)
    return [f.result() for f in futures]


def _follow(futures: list[Future], steps: queue.Queue, bar: tqdm) -> None:
    """Advance the bar until every job is done; raise the first failure."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
        _drain(steps, bar)
        for f in done:
            f.result()  # raises the job's error


def _drain(steps: queue.Queue, bar: tqdm) -> None:
    while True:
        try:
            bar.update(steps.get_nowait())
        except queue.Empty:
            return


def _start(steps: queue.Queue, threads: int, parent: int) -> None:
    global _steps
    _steps = steps
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    threading.Thread(target=_end_when_orphaned, args=(parent,), daemon=True).start()


def _end_when_orphaned(parent: int) -> None:
    """End this worker once the process that started it is gone (killed, say): a tree's
    minutes of training would otherwise go on, writing to a hub nobody is generating."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _call(fn: Callable, job: tuple):
    step = _Batched(_steps)
    try:
        return fn(*job, step)
    finally:
        step.flush()


class _Batched:
    """`step(n)` for a worker: sums its steps and sends them at most twice a second."""

    def __init__(self, steps: queue.Queue | None):
        self.steps, self.n, self.last = steps, 0, time.monotonic()

    def __call__(self, n: int) -> None:
        self.n += n
        if time.monotonic() - self.last >= 0.5:
            self.flush()

    def flush(self) -> None:
        if self.n and self.steps is not None:
            self.steps.put(self.n)
        self.n, self.last = 0, time.monotonic()
