"""mpirun on CPU: exact data parallelism, the sharded SFace head, GPU assignment, failing ranks."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from conftest import REPO_ROOT, assert_same_angles
from data.loader import epoch_order
from model.checkpoint import load_checkpoint
from util.distributed import parse_workers, rank_share
from util.runtime import rank_gpu

TRAIN = os.path.join(REPO_ROOT, "train_SFace_jittor.py")
HEAD_CHECK = os.path.join(REPO_ROOT, "tests", "mpi_sharded_head_check.py")
MPI_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
SEED = 1337


def mpirun(ranks, *command):
    return ["mpirun", "-np", str(ranks), "--oversubscribe", sys.executable, *command]


def train_args(data_root, outdir, *extra):
    return [TRAIN, "--data_root", str(data_root), "--outdir", str(outdir), "--net", "MobileFaceNet",
            "--batch_size", "8", "--lr", "0.01", "--epochs", "2", "--stages", "5", "--log_freq", "1",
            "--save_freq", "2", "--target", "none", "--workers_id", "cpu", "--num_workers", "1", *extra]


def run(command, timeout=600, env=MPI_ENV):
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def train_records(outdir):
    with open(os.path.join(outdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == "train"]


def assert_same_run(reference, other, steps):
    """Same logged figures and (within float32 rounding grown over a few steps) the same weights."""
    a, b = train_records(reference), train_records(other)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, steps + 1))
    for ra, rb in zip(a, b):
        for key in ("loss", "intra", "inter", "cos_target", "cos_other"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (ra["step"], key)
        assert rb["train_acc"] == ra["train_acc"]
        assert_same_angles(ra["angles"], rb["angles"])  # gathered over the ranks (or the head's blocks)
    x, y = load_checkpoint(os.path.join(reference, "last.npz")), load_checkpoint(os.path.join(other, "last.npz"))
    assert x["meta"]["progress"] == y["meta"]["progress"]
    for part in ("backbone", "head", "optimizer"):
        assert x[part].keys() == y[part].keys()
        errors = {name: np.linalg.norm(y[part][name] - value) for name, value in x[part].items()}
        norms = {name: np.linalg.norm(value) for name, value in x[part].items()}
        # Tight over the whole part; loose per array, where gradients that are sums with heavy cancellation
        # (BatchNorm biases) keep only a few digits in float32 whatever the summation order.
        assert np.linalg.norm(list(errors.values())) <= 1e-3 * np.linalg.norm(list(norms.values())), part
        for name, value in x[part].items():
            assert errors[name] <= 0.05 * norms[name] + 1e-6 * np.sqrt(value.size), (part, name, errors[name])


def test_ranks_get_the_gpus_listed_in_workers_id():
    assert rank_gpu(1, "0,1", None) == "1"
    assert rank_gpu(1, "0,1", "4,6") == "6"  # ids count within the GPUs visible to mpirun
    assert rank_gpu(3, "0", None) == "0"  # every rank on the one GPU
    assert rank_gpu(2, "0,1", None) == "0"  # more ranks than ids: cycle
    assert rank_gpu(0, "cpu", "0") is None and rank_gpu(0, "auto", None) is None and rank_gpu(None, "0,1", None) is None
    with pytest.raises(SystemExit, match="not among CUDA_VISIBLE_DEVICES"):
        rank_gpu(1, "0,3", "0,1")
    for malformed in ("abc", ",", "0,x", "-1"):  # left to the script's own check, which names the flag
        assert rank_gpu(0, malformed, None) is None


@pytest.mark.parametrize("text", ["", ",", "abc", "0,x", "-1", "0,-2"])
def test_workers_id_that_names_no_gpu_is_refused(text):
    with pytest.raises(ValueError, match=f"^--workers_id must be 'cpu', 'auto' or comma-separated GPU ids, "
                                         f"got '{text}'"):
        parse_workers(text)


def test_cpu_processes_compile_kernels_one_at_a_time_unless_told_otherwise():
    """util.runtime turns Jittor's parallel kernel compiler off in CPU builds (it crashed there), in mpirun
    ranks and single processes alike; a CUDA build keeps Jittor's default; an exported value wins."""
    # One write per process, so that the ranks' lines cannot interleave in mpirun's output.
    probe = ["-c", "import os, util.runtime, jittor; "
                   "os.write(1, f'threads {jittor.flags.use_parallel_op_compiler}\\n'.encode())"]
    env = {k: v for k, v in MPI_ENV.items() if k not in ("use_parallel_op_compiler", "nvcc_path")}

    def compile_threads(command, **extra):
        return re.findall(r"^threads (\S+)$", run(command, env=dict(env, **extra)).stdout, re.MULTILINE)

    assert compile_threads(mpirun(2, *probe)) == ["0", "0"]
    assert compile_threads([sys.executable, *probe]) == ["0"]
    assert compile_threads(mpirun(1, *probe), use_parallel_op_compiler="4") == ["4"]
    cuda_build = ["-c", "import os, util.runtime; "
                        "os.write(1, f'threads {os.environ.get(\"use_parallel_op_compiler\")}\\n'.encode())"]
    assert compile_threads([sys.executable, *cuda_build], nvcc_path="/usr/local/cuda/bin/nvcc") == ["None"]


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_sharded_head_equals_the_unsharded_one(ranks):
    """7 classes and 5 samples: uneven blocks of classes and uneven batch shares."""
    command = [sys.executable, HEAD_CHECK] if ranks == 1 else mpirun(ranks, HEAD_CHECK)
    out = run(command).stdout
    report = json.loads(out[out.index("ok ") + 3:].splitlines()[0])
    assert report["world_size"] == ranks and sum(report["blocks"]) == 7 and len(report["blocks"]) == ranks


def test_two_ranks_train_like_one_process_sharded_or_not(tiny_face_set, tmp_path):
    data_root, _ = tiny_face_set(classes=5, per_class=4)  # 2 batches of 8 per epoch, 4 per rank
    single, parallel, sharded = tmp_path / "single", tmp_path / "parallel", tmp_path / "sharded"
    run([sys.executable, *train_args(data_root, single, "--max_steps", "4")])
    run(mpirun(2, *train_args(data_root, parallel, "--max_steps", "4")))
    assert_same_run(single, parallel, steps=4)
    # A sharded 2-rank run stores the whole head; one process resumes it, unsharded, to the same end.
    run(mpirun(2, *train_args(data_root, sharded, "--max_steps", "2", "--shard_head")))
    checkpoint = load_checkpoint(str(sharded / "last.npz"))
    assert checkpoint["head"]["weight"].shape == (5, 512)
    assert checkpoint["optimizer"]["head/weight/momentum"].shape == (5, 512)
    run([sys.executable, TRAIN, "--resume", str(sharded), "--max_steps", "4", "--workers_id", "cpu"])
    assert_same_run(single, sharded, steps=4)


def rank_processes(marker):
    """{MPI rank: pid} of the rank processes whose environment holds `marker` (not their forked helpers)."""
    marked = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if env.get(b"SFACE_TEST_MARKER") == marker.encode() and b"OMPI_COMM_WORLD_RANK" in env:
            marked[int(pid)] = (int(env[b"OMPI_COMM_WORLD_RANK"]), parent)
    return {rank: pid for pid, (rank, parent) in marked.items() if parent not in marked}


def test_a_killed_rank_ends_the_job_and_the_checkpoint_survives(tiny_face_set, tmp_path):
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # Jittor's handler would end this test process
    data_root, _ = tiny_face_set(classes=5, per_class=4)
    outdir = tmp_path / "run"
    marker = uuid.uuid4().hex
    job = subprocess.Popen(mpirun(2, *train_args(data_root, outdir, "--epochs", "1000")), cwd=REPO_ROOT,
                           env=dict(MPI_ENV, SFACE_TEST_MARKER=marker), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (outdir / "last.npz").exists():
            assert job.poll() is None and time.time() < deadline, "training did not reach its first checkpoint"
            time.sleep(0.2)
        ranks = rank_processes(marker)
        assert set(ranks) == {0, 1}
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.time()
        _, stderr = job.communicate(timeout=60)
        assert time.time() - killed < 60
    finally:
        job.kill()
    assert job.returncode != 0
    assert "rank 1" in stderr and "signal 9" in stderr, stderr[-2000:]
    step = load_checkpoint(str(outdir / "last.npz"))["meta"]["progress"]["step"]
    assert step >= 2 and step % 2 == 0
    run([sys.executable, TRAIN, "--resume", str(outdir), "--max_steps", str(step + 1), "--workers_id", "cpu"])
    assert load_checkpoint(str(outdir / "last.npz"))["meta"]["progress"]["step"] == step + 1


def test_a_rank_that_fails_ends_the_job_naming_rank_and_file(tiny_face_set, tmp_path):
    data_root, entries = tiny_face_set(classes=5, per_class=4)
    order, _ = epoch_order(len(entries), SEED, 0)
    lo, hi = rank_share(8, 1, 2)
    victim = order[lo]  # the first image rank 1 reads
    (data_root / entries[victim][0]).write_bytes(b"not a jpeg")
    start = time.time()
    result = subprocess.run(mpirun(2, *train_args(data_root, tmp_path / "run", "--strict_data")), cwd=REPO_ROOT,
                            capture_output=True, text=True, env=MPI_ENV, timeout=120)
    assert result.returncode != 0 and time.time() - start < 60
    assert f"[rank 1/2] error: {data_root / 'imgs.txt'}:{victim + 1} ({entries[victim][0]})" in result.stderr, \
        result.stderr[-2000:]


def test_skipped_images_are_counted_over_every_rank(tiny_face_set, tmp_path):
    data_root, entries = tiny_face_set(classes=5, per_class=4)
    order, _ = epoch_order(len(entries), SEED, 0)
    for rank in (0, 1):
        victim = order[rank_share(8, rank, 2)[0]]  # the first image each rank reads
        (data_root / entries[victim][0]).write_bytes(b"not a jpeg")
    result = run(mpirun(2, *train_args(data_root, tmp_path / "run", "--max_steps", "1")))
    assert train_records(tmp_path / "run")[0]["skipped_images"] == 2
    assert "2 unreadable training images were skipped" in result.stdout + result.stderr


def test_benchmark_accounts_for_every_collective_of_a_step():
    """The mpirun benchmark's byte counts match the model: one all-reduce of every replicated gradient,
    four per synchronised BatchNorm layer (statistics forward and back), the gathered batch twice."""
    from jittor import nn

    from backbone import build_backbone
    from backbone.layers import count_parameters
    backbone = build_backbone("MobileFaceNet")
    batchnorms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm)]
    command = mpirun(2, os.path.join(REPO_ROOT, "benchmark.py"), "--net", "MobileFaceNet", "--num_classes", "7",
                     "--batch_size", "5", "--workers_id", "cpu", "--steps", "1", "--warmup", "0")
    rows = {}
    for line in run(command + ["--shard_head"]).stdout.splitlines():
        words = line.split()  # <kind ...> <calls> calls <megabytes> MB
        if len(words) > 4 and words[-3] == "calls":
            rows[" ".join(words[:-4])] = (int(words[-4]), float(words[-2]))
    assert rows["gradients (replicated parameters)"] == (1, pytest.approx(4 * count_parameters(backbone) / 1e6,
                                                                          abs=1e-3))
    calls, megabytes = rows["BatchNorm batch statistics"]
    assert calls == 4 * len(batchnorms)
    assert megabytes == pytest.approx(4 * 4 * sum(m.num_features for m in batchnorms) / 1e6, abs=1e-3)
    assert rows["embeddings of the global batch (sharded head)"] == (2, pytest.approx(2 * 5 * 512 * 4 / 1e6,
                                                                                      abs=1e-3))
