"""--tensorboard end to end: the event files a run writes, read back through TensorBoard's own server (its HTTP
API, as the dashboard reads them) and compared with metrics.jsonl; a resume after SIGKILL leaves each step
once; a run that gains the flag when resumed shows its whole history."""
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from conftest import REPO_ROOT, copy_demo_faces, small_pairs_folder
from evaluation.angles import HISTOGRAM_BINS
from evaluation.metrics_file import read_metrics
from model.checkpoint import load_checkpoint
from train.tensorboard_log import TENSORBOARD_DIR, event_files, read_events

pytest.importorskip("tensorboardX", reason="--tensorboard writes with tensorboardX (requirements.txt)")
TRAIN = os.path.join(REPO_ROOT, "train_SFace_jittor.py")
RUN = "."  # TensorBoard's name of the run whose event files lie in --logdir itself
# TensorBoard's two ways of reading event files: its data server (where it has a build for the machine), and
# the Python loader it falls back to (and uses with --logdir_spec); they differ in what they make of some events.
LOADERS = ("--load_fast=auto", "--load_fast=false")
SFACE_TRAIN_TAGS = {f"train/{k}" for k in ("loss", "intra", "inter", "cos_target", "cos_other", "train_acc", "lr",
                                            "img_per_s", "skipped_images")}
ANGLE_SCALAR_TAGS = {"angles/theta_y_median", "angles/theta_j_median", "angles/unpulled"}
EVAL_FIELDS = ("accuracy", "accuracy_std", "threshold", "xnorm", "auc", "eer")
EVAL_BY_FAR = ("tar_at_far", "threshold_at_far")  # {FAR: figure}: a tag <field>_<FAR> for each FAR reported


def train_args(data_root, outdir, *extra):
    return ["--data_root", str(data_root), "--outdir", str(outdir), "--net", "MobileFaceNet", "--workers_id", "cpu",
            "--num_workers", "2", "--lr", "0.05", "--log_freq", "1", *extra]


# ---- TensorBoard's server ----

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port, route, **query):
    url = f"http://127.0.0.1:{port}/data/{route}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def tensorboard_server(logdir, tmp_path, *options, timeout=45):
    """`tensorboard --logdir logdir` on a free local port, until it serves the run's scalars; -> the port.
    The server is stopped on leaving, whatever happened."""
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("the tensorboard package is absent (requirements.txt installs it for the tests)")
    port, log = free_port(), tmp_path / "tensorboard_server.log"
    # Jittor's SIGCHLD handler quick-exits any process that imported it when a child dies of a signal; this test
    # stops its server with one.
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port",
                                   str(port), "--host", "127.0.0.1", *options], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout
        while True:
            assert server.poll() is None, f"tensorboard stopped: {log.read_text()[-2000:]}"
            assert time.time() < deadline, f"tensorboard served no scalars in {timeout} s: {log.read_text()[-2000:]}"
            try:
                if get_json(port, "plugin/scalars/tags").get(RUN):
                    break
            except OSError:
                pass  # not listening yet
            time.sleep(0.25)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        signal.signal(signal.SIGCHLD, previous)


def served_scalars(port, tag):
    """[(step, value)] of a scalar tag, as the dashboard gets them."""
    return [(step, value) for _, step, value in get_json(port, "plugin/scalars/scalars", tag=tag, run=RUN)]


def served_histograms(port, tag):
    """[(step, [[left, right, count], ...])] of a histogram tag."""
    return [(step, buckets) for _, step, buckets in get_json(port, "plugin/histograms/histograms", tag=tag, run=RUN)]


# ---- what metrics.jsonl says each tag should show ----

def logged(records, tag):
    """[(step, value)] that metrics.jsonl holds for a tag, looked up field by field."""
    group, _, name = tag.partition("/")
    if group == "train":
        return [(r["step"], r[name]) for r in records if r["kind"] == "train"]
    if tag == "angles/unpulled":
        return [(r["step"], r["angles"]["unpulled"]) for r in records if r["kind"] == "train"]
    if group == "angles":
        field = {"theta_y_median": "theta_target", "theta_j_median": "theta_other"}[name]
        return [(r["step"], r["angles"][field]["p50"]) for r in records if r["kind"] == "train"]
    target, _, field = name.partition("/")
    evals = [r for r in records if r["kind"] == "eval" and r["target"] == target]
    for figures in EVAL_BY_FAR:
        if field.startswith(figures + "_"):
            return [(r["step"], r[figures][field[len(figures) + 1:]]) for r in evals]
    return [(r["step"], r[field]) for r in evals]


def as_float32(points):
    """TensorBoard keeps scalars as float32: what it serves is each logged value rounded so, exactly."""
    return [(step, float(np.float32(value))) for step, value in points]


def check_served(port, records, target=None):
    """Every scalar and histogram tag of the records, each with the logged steps and values, nothing else."""
    expected = SFACE_TRAIN_TAGS | ANGLE_SCALAR_TAGS
    if target:
        evaluation = next(r for r in records if r["kind"] == "eval")
        expected |= {f"eval/{target}/{f}" for f in EVAL_FIELDS}
        expected |= {f"eval/{target}/{f}_{far}" for f in EVAL_BY_FAR for far in evaluation[f]}
        assert f"eval/{target}/tar_at_far_0.001" in expected
    assert set(get_json(port, "plugin/scalars/tags")[RUN]) == expected
    for tag in sorted(expected):
        assert served_scalars(port, tag) == as_float32(logged(records, tag)), tag
    assert set(get_json(port, "plugin/histograms/tags")[RUN]) == {"angles/theta_y", "angles/theta_j"}
    train = [r for r in records if r["kind"] == "train"]
    for tag, field in (("angles/theta_y", "theta_target"), ("angles/theta_j", "theta_other")):
        served = served_histograms(port, tag)
        assert [step for step, _ in served] == [r["step"] for r in train], tag
        for (step, buckets), record in zip(served, train):
            counts = record["angles"][field]["histogram"]
            assert sum(counts) == record["angles"][field]["count"] > 0
            assert [list(map(as_served, bucket)) for bucket in buckets] == logged_bins(counts), (tag, step)


def as_served(number):
    """A histogram's edges and counts as TensorBoard serves them: its Python loader rounds them to float32."""
    return float(np.float32(number))


def logged_bins(counts):
    """[[left, right, count]] of a logged histogram's 10-degree bins, from its first to its last non-empty one."""
    held = np.flatnonzero(counts)
    return [[as_served(HISTOGRAM_BINS[i]), as_served(HISTOGRAM_BINS[i + 1]), counts[i]]
            for i in range(held[0], held[-1] + 1)]


def event_steps(folder):
    """The steps of the figure events in a run's event files, file by file (a step twice is a duplicate)."""
    steps = []
    for path in event_files(folder):
        with open(path, "rb") as f:
            steps += [event.step for _, event in read_events(f.read()) if event.HasField("summary")]
    return sorted(steps)


# ---- the tests ----

def test_a_two_step_run_is_served_by_tensorboard_as_metrics_jsonl_logged_it(tmp_path):
    import train_SFace_jittor
    data_root, _ = copy_demo_faces(tmp_path / "data", classes=4, per_class=4)
    target = small_pairs_folder(str(tmp_path / "mini_lfw"))
    outdir = tmp_path / "run"
    train_SFace_jittor.main(train_args(data_root, outdir, "--batch_size", "8", "--max_steps", "2", "--target", target,
                                       "--tensorboard"))
    records = read_metrics(str(outdir / "metrics.jsonl"))
    assert [(r["kind"], r["step"]) for r in records] == [("eval", 0), ("train", 1), ("train", 2), ("eval", 2)]
    log = (outdir / "train.log").read_text()
    assert f"watch the curves: tensorboard --logdir {outdir / TENSORBOARD_DIR}" in log
    assert f"plot the curves: python3 tools/plot_run.py {outdir}" in log
    for loader in LOADERS:
        with tensorboard_server(outdir / TENSORBOARD_DIR, tmp_path, loader) as port:
            check_served(port, records, target="mini_lfw")


def kill_when(process, predicate, timeout=300):
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, "training did not reach the kill point in time"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_a_run_resumed_after_sigkill_shows_each_step_once_in_tensorboard(tmp_path):
    data_root, _ = copy_demo_faces(tmp_path / "data", classes=4, per_class=4)  # 4 batches of 4
    outdir, events = tmp_path / "run", tmp_path / "run" / TENSORBOARD_DIR
    args = train_args(data_root, outdir, "--batch_size", "4", "--max_steps", "4", "--save_freq", "2", "--target",
                      "none", "--tensorboard")
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # see tensorboard_server
    try:
        process = subprocess.Popen([sys.executable, TRAIN, *args], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        kill_when(process, lambda: events.is_dir() and 3 in event_steps(events))
    finally:
        signal.signal(signal.SIGCHLD, previous)
    checkpoint_step = load_checkpoint(str(outdir / "last.npz"))["meta"]["progress"]["step"]
    assert checkpoint_step == 2 and event_steps(events) == [1, 2, 3]  # the kill left a step past the checkpoint
    resumed = subprocess.run([sys.executable, TRAIN, "--resume", str(outdir), "--workers_id", "cpu"], cwd=REPO_ROOT,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert event_steps(events) == [1, 2, 3, 4] and len(event_files(events)) == 2
    records = read_metrics(str(outdir / "metrics.jsonl"))
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for loader in LOADERS:  # the data server would show the later of two events of a step, the Python loader both
        with tensorboard_server(events, tmp_path, loader) as port:
            check_served(port, records)


def test_a_run_given_tensorboard_when_resumed_shows_its_whole_history(tmp_path):
    """The records written before the flag came go to the event files too; --no-tensorboard stops the writing."""
    import train_SFace_jittor
    data_root, _ = copy_demo_faces(tmp_path / "data", classes=4, per_class=4)
    outdir, events = tmp_path / "run", tmp_path / "run" / TENSORBOARD_DIR
    train_SFace_jittor.main(train_args(data_root, outdir, "--batch_size", "8", "--max_steps", "2", "--target", "none"))
    assert not events.exists()
    train_SFace_jittor.main(["--resume", str(outdir), "--workers_id", "cpu", "--max_steps", "3", "--tensorboard"])
    assert event_steps(events) == [1, 2, 3]
    records = read_metrics(str(outdir / "metrics.jsonl"))
    with tensorboard_server(events, tmp_path) as port:
        check_served(port, records)
    train_SFace_jittor.main(["--resume", str(outdir), "--workers_id", "cpu", "--max_steps", "4", "--no-tensorboard"])
    assert event_steps(events) == [1, 2, 3] and read_metrics(str(outdir / "metrics.jsonl"))[-1]["step"] == 4
    assert load_checkpoint(str(outdir / "last.npz"))["meta"]["config"]["tensorboard"] is False


def test_a_new_run_removes_the_event_files_an_earlier_one_left(tmp_path):
    """A run killed before its first checkpoint leaves events; a new run in its folder starts the curves anew."""
    import train_SFace_jittor
    data_root, _ = copy_demo_faces(tmp_path / "data", classes=2, per_class=4)
    outdir, events = tmp_path / "run", tmp_path / "run" / TENSORBOARD_DIR
    events.mkdir(parents=True)
    (events / "events.out.tfevents.1.host.1").write_bytes(b"an earlier run's events")
    train_SFace_jittor.main(train_args(data_root, outdir, "--batch_size", "4", "--max_steps", "1", "--target", "none",
                                       "--tensorboard"))
    assert event_steps(events) == [1] and len(event_files(events)) == 1


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, where every write fails with ENOSPC")
def test_an_event_file_on_a_full_disk_is_one_error_naming_it(tmp_path):
    from train.tensorboard_log import TensorBoardLog
    from util.files import OutputError
    log = TensorBoardLog(str(tmp_path))
    with open("/dev/full", "ab") as log.file:
        with pytest.raises(OutputError, match="^/dev/full: cannot write the TensorBoard event file \\(No space"):
            log.write({"kind": "train", "step": 1, "epoch": 1, "lr": 0.1, "loss": 1.0})
        log.file.raw.close()  # what the failed write left buffered goes nowhere


def test_tensorboard_without_its_writer_is_a_usage_error(monkeypatch, capsys):
    import train.config
    from train.config import SFACE, configure
    assert configure(SFACE, ["--data_mode", "demo"]).cfg["tensorboard"] is False  # off unless given
    monkeypatch.setattr(train.config, "writer_installed", lambda: False)
    with pytest.raises(SystemExit) as stopped:
        configure(SFACE, ["--data_mode", "demo", "--tensorboard"])
    assert stopped.value.code == 2 and "--tensorboard writes its event files with the tensorboardX package, which is " \
                                      "not installed here: pip install -r requirements.txt" in capsys.readouterr().err
