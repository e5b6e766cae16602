"""TensorBoard event files of a run (--tensorboard), fed from the records the run writes to metrics.jsonl.

Rank 0 turns each record into one event in `<outdir>/tensorboard/` (`tensorboard --logdir` that folder):
  train/<field>                  every figure of a training window (loss, intra, inter, cos_target, train_acc,
                                 lr, loss_scale, img_per_s, skipped_images, ...)
  angles/theta_y, angles/theta_j the window's angle histograms (10-degree bins over [0, pi]), as histograms
  angles/theta_y_median, angles/theta_j_median, angles/unpulled   the same windows as scalars
  eval/<target>/<field>          each verification figure (accuracy, auc, eer, tar_at_far_0.001, ...)

Each record's event is written and flushed as it comes, by this process (tensorboardX's SummaryWriter hands
events to a thread, and its flush does not wait for them), so a run killed after a checkpoint has the events
of every step up to it. A killed run also wrote events past its last checkpoint, which TensorBoard would show
beside the resumed run's (its Python loader shows both, its data server the later): a resumed run cuts each
event file back to the checkpoint's step (rewriting it whole, `write_atomically`) before it writes on, so
each step is there once. It also writes the records of metrics.jsonl that no event file holds (a run that
gains --tensorboard when resumed), with the time of the resume as their wall time.
"""
import glob
import importlib.util
import os
import socket
import struct
import time

import numpy as np

from evaluation.angles import HISTOGRAM_BINS
from util.files import appending_failed, make_outdir, remove_leftovers, write_atomically

TENSORBOARD_DIR = "tensorboard"
EVENT_FILES = "events.out.tfevents.*"  # TensorBoard reads every file whose name holds "tfevents"
WRITER = "tensorboardX"
NOT_FIGURES = ("kind", "step", "epoch", "target", "pairs", "angles")  # record fields that are not curves
ANGLE_TAGS = {"theta_target": "theta_y", "theta_other": "theta_j"}


def writer_installed():
    return importlib.util.find_spec(WRITER) is not None


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def record_scalars(record):
    """A metrics.jsonl record -> {tag: value} of its figures: train/<field>, eval/<target>/<field>; a dict of
    figures (tar_at_far) gives <field>_<key>, lists (fold_accuracies) none; the angles' medians and unpulled share."""
    prefix = f"eval/{record['target']}" if record["kind"] == "eval" else record["kind"]
    scalars = {}
    for key, value in record.items():
        if key in NOT_FIGURES:
            continue
        if is_number(value):
            scalars[f"{prefix}/{key}"] = float(value)
        elif isinstance(value, dict):
            scalars.update({f"{prefix}/{key}_{k}": float(v) for k, v in value.items() if is_number(v)})
    angles = record.get("angles", {})
    for key, name in ANGLE_TAGS.items():
        if key in angles:
            scalars[f"angles/{name}_median"] = angles[key]["p50"]
    if "unpulled" in angles:
        scalars["angles/unpulled"] = angles["unpulled"]
    return scalars


def histogram_fields(counts, edges=HISTOGRAM_BINS):
    """A logged histogram (counts in the bins `edges`) as TensorBoard's HistogramProto fields, from its first
    to its last non-empty bin.

    TensorBoard draws bucket i from bucket_limit[i - 1] (from `min` for the first) to bucket_limit[i] (to `max`
    for the last), and its Python loader first drops the empty buckets at either end: with those left out here
    and min, max the outer edges of the rest, both of its loaders draw exactly the logged bins. The sums (which
    it does not draw) are the bin centres', the only ones the record allows."""
    counts = np.asarray(counts, np.float64)
    if len(counts) != len(edges) - 1:
        raise ValueError(f"a histogram of {len(counts)} bins, expected {len(edges) - 1}")
    held = np.flatnonzero(counts)
    first, last = (held[0], held[-1]) if len(held) else (0, -1)
    counts, edges = counts[first:last + 1], edges[first:last + 2]
    centres = (edges[:-1] + edges[1:]) / 2
    return {"min": float(edges[0]), "max": float(edges[-1]), "num": float(counts.sum()), "sum": float(counts @ centres),
            "sum_squares": float(counts @ centres ** 2), "bucket_limit": [float(e) for e in edges[1:]],
            "bucket": counts.tolist()}


def record_histograms(record):
    """{tag: HistogramProto fields} of a training record's angle histograms."""
    angles = record.get("angles", {})
    return {f"angles/{name}": histogram_fields(angles[key]["histogram"])
            for key, name in ANGLE_TAGS.items() if key in angles}


def record_event(record, wall_time):
    """One TensorBoard Event holding every scalar and histogram of a record, at its step."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.summary_pb2 import HistogramProto, Summary
    values = [Summary.Value(tag=tag, simple_value=value) for tag, value in record_scalars(record).items()]
    values += [Summary.Value(tag=tag, histo=HistogramProto(**fields))
               for tag, fields in record_histograms(record).items()]
    return Event(wall_time=wall_time, step=record["step"], summary=Summary(value=values))


# ---- event files: TFRecord framing (little-endian length, masked CRC-32C of it, data, masked CRC-32C of it) ----

def frame(data):
    from tensorboardX.record_writer import masked_crc32c
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def read_events(data):
    """An event file's bytes -> [(its framed bytes, Event)], up to the first record that is cut short or fails its
    checksums (what a writer killed mid-record leaves; TensorBoard too reads no further)."""
    from google.protobuf.message import DecodeError
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c
    events, at = [], 0
    while at + 12 <= len(data):
        header = data[at:at + 8]
        length = struct.unpack("<Q", header)[0]
        end = at + 12 + length + 4
        if struct.unpack("<I", data[at + 8:at + 12])[0] != masked_crc32c(header) or end > len(data):
            break
        payload = data[at + 12:end - 4]
        if struct.unpack("<I", data[end - 4:end])[0] != masked_crc32c(payload):
            break
        try:
            events.append((data[at:end], Event.FromString(payload)))
        except DecodeError:
            break
        at = end
    return events


def event_files(folder):
    return sorted(glob.glob(os.path.join(glob.escape(folder), EVENT_FILES)))


def remove_event_files(folder):
    """A new run's start: the event files an earlier run left in its folder (with no checkpoint) go."""
    for path in event_files(folder):
        os.remove(path)


def cut_event_file(path, step):
    """Keep the events of steps <= `step` in one event file (rewritten only when it held more);
    -> the latest step of the figures kept (-1 if none)."""
    with open(path, "rb") as f:
        data = f.read()
    kept = [(raw, event) for raw, event in read_events(data) if event.step <= step]
    if sum(len(raw) for raw, _ in kept) != len(data):
        write_atomically(path, b"".join(raw for raw, _ in kept), "TensorBoard event file")
    return max((event.step for _, event in kept if event.HasField("summary")), default=-1)


class TensorBoardLog:
    """Rank 0's event writer of one run: `write(record)` for each record metrics.jsonl gets."""

    def __init__(self, folder):
        self.folder, self.file = folder, None

    def resume(self, step, records):
        """A run resumed at `step`: drop what a killed process wrote past it, then write the `records` (those of
        metrics.jsonl, up to `step`) that no event file holds."""
        if os.path.isdir(self.folder):
            remove_leftovers(self.folder)  # a rewrite killed midway
        latest = max((cut_event_file(path, step) for path in event_files(self.folder)), default=-1)
        for record in records:
            if latest < record["step"] <= step:
                self.write(record)

    def write(self, record):
        try:
            if self.file is None:
                self.file = self.new_event_file()
            self.file.write(frame(record_event(record, time.time()).SerializeToString()))
            self.file.flush()
        except OSError as e:  # a full disk
            raise appending_failed(self.file.name if self.file else self.folder, "TensorBoard event file",
                                   e) from None

    def new_event_file(self):
        """A file of its own (TensorBoard's name, with the process id and a count to keep it unique), opened with
        the version event every event file starts with."""
        from tensorboardX.proto.event_pb2 import Event
        make_outdir(self.folder)
        stem = os.path.join(self.folder, f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                                         f"{os.getpid()}")
        count = 0
        while True:
            try:
                file = open(stem + (f".{count}" if count else ""), "xb")
                break
            except FileExistsError:
                count += 1
        file.write(frame(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()))
        return file

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None
