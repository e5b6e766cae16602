"""The run's one logger ("sface") and its machine-readable metrics file.

Rank 0 logs to the console (through tqdm, so progress bars stay intact) and to
`<outdir>/train.log`; other ranks print warnings and errors only, tagged with their rank.
`<outdir>/metrics.jsonl` holds one JSON object per record (training windows, evaluations).
"""
import json
import logging
import os

from tqdm import tqdm

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


def _complete_record_upto(line, step):
    try:
        return json.loads(line)["step"] <= step
    except (ValueError, KeyError):
        return False  # a line cut short by the kill
