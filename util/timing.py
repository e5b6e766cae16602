"""Timing a step the way every figure of the project is measured: the median of repeated calls after
untimed warm-up calls (Jittor compiles its kernels on first use)."""
import statistics
import time


def median_seconds(step, warmup, steps):
    """Median wall-clock seconds of `step()` over `steps` calls after `warmup` untimed ones; `step` must block
    until its work is done (e.g. end with jt.sync_all(True))."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
