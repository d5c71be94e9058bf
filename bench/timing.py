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


def interleaved(fns: dict[str, Callable[[], object]], repeats: int,
                cpu_clock: Callable[[], float] = time.process_time
                ) -> dict[str, tuple[float, float]]:
    """Best ``(wall, CPU)`` seconds of each function over ``repeats`` rounds, the functions
    taking turns so that all of them meet the same load on a shared machine. CPU time is
    ``cpu_clock``'s: by default this process's, all its threads (for commands run as
    subprocesses, pass a clock of the children's)."""
    wall = {name: float("inf") for name in fns}
    cpu = dict(wall)
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), cpu_clock()
            fn()
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], cpu_clock() - start_cpu)
    return {name: (wall[name], cpu[name]) for name in fns}
