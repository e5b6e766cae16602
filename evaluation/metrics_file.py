"""A run's `metrics.jsonl`: one JSON object per line (training windows, evaluations), appended by training
and read back by the reports and plots."""
import json
import os

from data.text import DataError, text_lines
from util.files import appending_failed, write_atomically

METRICS_NAME = "metrics.jsonl"


class MetricsLog:
    """Append-only JSONL; `truncate_after(step)` drops what a killed run wrote past its last checkpoint.

    `also`: a function given each record once it is written (the run's TensorBoard writer), or None."""

    def __init__(self, path, also=None):
        self.path, self.also = path, also

    def start(self):
        write_atomically(self.path, b"", "metrics file")

    def truncate_after(self, step):
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            kept = [line for line in f if line.strip() and _complete_record_upto(line, step)]
        write_atomically(self.path, "".join(kept), "metrics file")

    def records(self):
        """The records written so far (none before the file exists)."""
        return read_metrics(self.path) if os.path.exists(self.path) else []

    def write(self, record):
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise appending_failed(self.path, "metrics file", e) from None
        if self.also is not None:
            self.also(record)


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
