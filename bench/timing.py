"""The timer every benchmark uses, so all figures are measured the same way."""

import time


def best_of(fn, repeat: int = 3):
    """``(best seconds over repeat calls of fn, the last result)``."""
    best, value = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - started)
    return best, value
