"""Settle Jittor's compile target and each MPI rank's GPU before `jittor` is first imported.

Jittor builds CUDA kernels whenever it finds `nvcc`, even on a machine with no GPU,
where that build is slow and useless. Entry points (scripts, tests) import this module
before anything imports jittor; `nvcc_path=""` then forces the CPU build. A value the
user already exported is left alone.

With a GPU (or `SFACE_CUDA=1`, to build the CUDA code where there is none), Jittor is given
the CUDA home and settings that `install/jittor_cuda.py home` (run by setup.sh) recorded:
its nvcc, NCCL, and the switches that keep it from downloading anything.

Under mpirun, `--workers_id 0,1` means the rank r of a machine uses the r-th listed GPU of that
machine (cycling when it runs more ranks than ids, e.g. `--workers_id 0` puts every rank on its
machine's GPU 0). r is the node-local rank the launcher exports: OMPI_COMM_WORLD_LOCAL_RANK
(Open MPI), MPI_LOCALRANKID (MPICH, Intel MPI), PMI_LOCAL_RANK, PMIX_LOCAL_RANK, or SLURM_LOCALID
(srun; looked at last, as an mpirun inside a Slurm job passes on its own). Where none of them is
set, the global rank stands in for it, which is right on one machine only: across machines two
ranks of one machine may then share a GPU. Jittor picks its device from the local rank among the
visible GPUs, so each rank is shown only its own GPU (CUDA_VISIBLE_DEVICES), and the ids count
within what was visible before.

On the CPU, kernels are compiled one at a time (`use_parallel_op_compiler=0`): Jittor 1.3.11's
parallel kernel compiler crashes (SIGSEGV in a compile thread, 'C0' or 'C4') in about 1 of 100
cold-cache launches of 3 mpirun ranks and in single processes compiling a new graph, the crash
Jittor's maintainers answer with this setting (Jittor/JGAN issue 9). On 2 cores it costs little
(docs/gpu.md has the figures) and nothing once kernels are cached. With a GPU, Jittor's parallel
compiler stays on (the crash is not known there, each kernel is a slow nvcc run, and GPU machines
have the cores to run many). Export `use_parallel_op_compiler=N` to choose otherwise.
"""
import json
import os
import shutil
import subprocess
import sys

RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")
# A rank's place among those on its machine, by launcher; SLURM_LOCALID last (see above).
LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "PMIX_LOCAL_RANK",
                        "SLURM_LOCALID")
CUDA_SETTINGS = os.path.join(os.path.expanduser("~"), ".cache", "sface-jittor", "cuda.json")


def cuda_gpu_present():
    """True when the NVIDIA driver reports at least one GPU."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def option_value(argv, name):
    """The value of `--name V` or `--name=V` in a command line, else None."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return None


def rank_gpu(rank, workers_id, visible):
    """The CUDA_VISIBLE_DEVICES value for the rank `rank` of a machine (`gpu_rank`), or None to leave the GPUs
    as they are.

    workers_id: the --workers_id text ('0,1', 'cpu', 'auto' or None); visible: CUDA_VISIBLE_DEVICES or None.
    """
    if rank is None or workers_id is None or workers_id.strip().lower() in ("cpu", "auto", ""):
        return None
    ids = [v.strip() for v in workers_id.split(",") if v.strip()]
    if not ids or not all(v.isdigit() for v in ids):
        return None  # no GPU ids: the script's own check of --workers_id names what is wrong, once Jittor is up
    chosen = int(ids[rank % len(ids)])
    devices = [v.strip() for v in visible.split(",")] if visible else None
    if devices is not None and not 0 <= chosen < len(devices):
        raise SystemExit(f"--workers_id {workers_id}: GPU {chosen} is not among CUDA_VISIBLE_DEVICES={visible}")
    return devices[chosen] if devices is not None else str(chosen)


def first_integer(environ, variables):
    """The value of the first of `variables` set in `environ`, as an int; None if none is set."""
    for variable in variables:
        if variable in environ:
            return int(environ[variable])
    return None


def gpu_rank(environ=os.environ):
    """The rank that picks this process's GPU from --workers_id: its node-local MPI rank, else its global rank
    (when the launcher names no local rank), else None (not under MPI)."""
    rank = first_integer(environ, RANK_VARIABLES)
    local = first_integer(environ, LOCAL_RANK_VARIABLES)
    return rank if rank is None or local is None else local


def apply_cuda_settings(path=CUDA_SETTINGS):
    """Export the environment setup.sh recorded for this machine's CUDA; values already exported win."""
    try:
        with open(path) as f:
            settings = json.load(f)
    except FileNotFoundError:
        print(f"warning: {path} is missing: run `bash setup.sh` so that Jittor builds with this machine's CUDA "
              "toolkit and downloads nothing", file=sys.stderr)
        return
    for key, value in settings["env"].items():
        os.environ.setdefault(key, value)
    if os.environ.get("conv_opt") == "1" and settings["cudnn"] is None:
        print("warning: no cuDNN found: convolutions run on Jittor's own CUDA kernels, which are much slower than "
              "cuDNN's (install nvidia-cudnn and re-run setup.sh)", file=sys.stderr)


def configure_jittor_env(argv=None):
    if "nvcc_path" not in os.environ and not (os.environ.get("SFACE_CUDA") == "1" or cuda_gpu_present()):
        os.environ["nvcc_path"] = ""
    if os.environ.get("nvcc_path") == "":
        os.environ.setdefault("use_parallel_op_compiler", "0")  # the CPU build (see above)
        return
    rank = gpu_rank()
    apply_cuda_settings()
    # One process is rank 0, so `--workers_id 1` there means GPU 1.
    gpu = rank_gpu(0 if rank is None else rank, option_value(argv if argv is not None else sys.argv, "--workers_id"),
                   os.environ.get("CUDA_VISIBLE_DEVICES"))
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


configure_jittor_env()
