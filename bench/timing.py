"""The timers every benchmark uses, so all figures are measured the same way."""

import time
from collections.abc import Callable


def best_of(fn, repeat: int = 3):
    """``(best seconds over repeat calls of fn, the last result)``."""
    best, value = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - started)
    return best, value


def interleaved(fns: dict[str, Callable[[], object]], repeats: int
                ) -> dict[str, tuple[float, float]]:
    """Best ``(wall, CPU)`` seconds of each function over ``repeats`` rounds, the functions
    taking turns so that all of them meet the same load on a shared machine (CPU time is
    the process's: all its threads)."""
    wall = {name: float("inf") for name in fns}
    cpu = dict(wall)
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    return {name: (wall[name], cpu[name]) for name in fns}
