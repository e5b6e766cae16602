"""The run's one logger ("sface") and its machine-readable metrics file.

Rank 0 logs to the console (through tqdm, so progress bars stay intact) and to
`<outdir>/train.log`; other ranks print warnings and errors only, tagged with their rank.
`<outdir>/metrics.jsonl` holds one JSON object per record (training windows, evaluations).
"""
import json
import logging
import os
import time

from tqdm import tqdm

from data.image_list import DataError, text_lines
from evaluation.angles import angle_summary

LOGGER_NAME = "sface"


class TqdmHandler(logging.Handler):
    def emit(self, record):
        tqdm.write(self.format(record))


def setup_logging(outdir, rank=0):
    log = logging.getLogger(LOGGER_NAME)
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO)
    console = TqdmHandler()
    console.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s"
                                           if rank else "%(asctime)s %(message)s", "%H:%M:%S"))
    if rank:
        console.setLevel(logging.WARNING)
    log.addHandler(console)
    if rank == 0 and outdir:
        os.makedirs(outdir, exist_ok=True)
        to_file = logging.FileHandler(os.path.join(outdir, "train.log"))
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(to_file)
    return log


class MetricsLog:
    """Append-only JSONL; `truncate_after(step)` drops what a killed run wrote past its last checkpoint."""

    def __init__(self, path):
        self.path = path

    def truncate_after(self, step):
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            kept = [line for line in f if line.strip() and _complete_record_upto(line, step)]
        with open(self.path, "w") as f:
            f.writelines(kept)

    def write(self, record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path):
    """The records of a metrics.jsonl. A last line without its newline is one a killed run cut short: left out;
    any other line that is not a JSON object is a DataError naming `path:LINE`."""
    lines = [(number, line) for number, line in text_lines(path) if line.strip()]
    records = []
    for number, line in lines:
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError as e:
            if number == lines[-1][0] and not line.endswith("\n"):
                break
            raise DataError(f"{path}:{number}: not a JSON record ({e})") from None
        records.append(record)
    return records


def _complete_record_upto(line, step):
    try:
        return json.loads(line)["step"] <= step
    except (ValueError, KeyError):
        return False  # a line cut short by the kill


class TrainWindow:
    """Per-step figures summed over a logging window; the sums travel in checkpoints so a
    resumed run logs exactly what an uninterrupted one would have.

    The per-sample angles of the steps (lists) are concatenated instead, and logged as the window's
    `angles` (evaluation/angles.py): with `a` (SFace's), also the fraction of samples no longer pulled.
    """

    COUNTS = ("correct", "samples", "steps")  # summed as counts; everything else is averaged per step
    ANGLES = ("theta_target", "theta_other")  # lists of the window's angles

    def __init__(self, sums=None, a=None):
        self.sums = dict(sums or {})
        self.a = a
        self.start = time.time()

    def add(self, stats):
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, [] if k in self.ANGLES else 0) + v

    def record(self, progress, lr):
        """Means of the figures, accuracy (when counted) and throughput; then starts a new window."""
        s = self.sums
        record = {"kind": "train", "step": progress["step"], "epoch": progress["epoch"] + 1, "lr": lr}
        record.update({k: v / s["steps"] for k, v in s.items() if k not in self.COUNTS + self.ANGLES})
        if "correct" in s:
            record["train_acc"] = s["correct"] / s["samples"]
        if "theta_target" in s:
            record["angles"] = angle_summary(s["theta_target"], s["theta_other"], self.a)
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
