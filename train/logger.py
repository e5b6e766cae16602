"""The run's one logger ("sface") and its machine-readable metrics file.

Rank 0 logs to the console (through tqdm, so progress bars stay intact) and to
`<outdir>/train.log`; other ranks print warnings and errors only, tagged with their rank.
Each log window's figures also go to `<outdir>/metrics.jsonl` (evaluation/metrics_file.py).
"""
import contextlib
import logging
import os
import sys
import time

from tqdm import tqdm

from util import distributed
from util.files import appending_failed, make_outdir

LOGGER_NAME = "sface"


class TqdmHandler(logging.Handler):
    def emit(self, record):
        tqdm.write(self.format(record))


class RunLogFile(logging.FileHandler):
    """train.log: a write that fails (a full disk) ends the run with one line naming the file, instead of
    logging's traceback for every later line."""

    def handleError(self, record):
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            raise appending_failed(self.baseFilename, "log", error) from None
        super().handleError(record)


def setup_logging(outdir):
    log = logging.getLogger(LOGGER_NAME)
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO)
    console = TqdmHandler()
    main = distributed.is_main()
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s" if main else
                                           f"%(asctime)s [rank {distributed.rank()}] %(levelname)s %(message)s",
                                           "%H:%M:%S"))
    if not main:
        console.setLevel(logging.WARNING)
    log.addHandler(console)
    if main and outdir:
        make_outdir(outdir)
        to_file = RunLogFile(os.path.join(outdir, "train.log"))
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(to_file)
    return log


class TrainWindow:
    """Per-step figures summed over a logging window; the sums travel in checkpoints so a
    resumed run logs exactly what an uninterrupted one would have.

    The per-sample angles of the steps (lists) are concatenated instead, and logged as the window's
    `angles`, summarised by `summarise_angles(theta_target, theta_other)` (evaluation/angles.py).
    """

    COUNTS = ("correct", "samples", "steps")  # summed as counts; everything else is averaged per step
    ANGLES = ("theta_target", "theta_other")  # lists of the window's angles

    def __init__(self, sums, summarise_angles):
        self.sums = dict(sums or {})
        self.summarise_angles = summarise_angles
        self.start = time.time()

    def add(self, stats):
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, [] if k in self.ANGLES else 0) + v

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside (an evaluation) is left out of the window's throughput."""
        began = time.time()
        try:
            yield
        finally:
            self.start += time.time() - began

    def record(self, progress, lr):
        """Means of the figures, accuracy (when counted) and throughput; then starts a new window."""
        s = self.sums
        record = {"kind": "train", "step": progress["step"], "epoch": progress["epoch"] + 1, "lr": lr}
        record.update({k: v / s["steps"] for k, v in s.items() if k not in self.COUNTS + self.ANGLES})
        if "correct" in s:
            record["train_acc"] = s["correct"] / s["samples"]
        if "theta_target" in s:
            record["angles"] = self.summarise_angles(s["theta_target"], s["theta_other"])
        record["img_per_s"] = s["samples"] / max(time.time() - self.start, 1e-9)
        self.sums, self.start = {}, time.time()
        return record


def describe_record(record):
    """One log line's worth of a training record."""
    skip = ("kind", "step", "epoch", "lr", "img_per_s", "skipped_images", "angles")
    figures = "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in skip)
    if "angles" in record:
        angles = record["angles"]
        figures += (f"  theta_y median {angles['theta_target']['p50']:.3f}"
                    f"  theta_j median {angles['theta_other']['p50']:.3f}")
        if "unpulled" in angles:
            figures += f"  unpulled {angles['unpulled']:.3f}"
    return f"{figures}  {record['img_per_s']:.1f} img/s"
