"""Process-group helpers that also work in a single process (no mpirun).

Two kinds of traffic:
- inside Jittor's graph (`mpi_all_reduce`, differentiable): gradient sums, BatchNorm
  statistics, the gathered embeddings of a sharded head. Jittor runs ready operations in
  the order they were created, so every rank issues these collectives in the same order.
- on numpy arrays through mpi4py, on the MPI world Jittor has already initialised, at
  points every rank reaches together: batch sizes, logged figures, evaluation tables,
  checkpoint gathers, replica checks.
A rank that fails calls `abort`, so the whole job stops instead of hanging in a collective.
"""
import argparse
import sys
import traceback
import zlib
from contextlib import contextmanager

import jittor as jt
import numpy as np

from .errors import InputError


def in_mpi():
    return bool(jt.in_mpi)


def rank():
    return jt.rank if jt.in_mpi else 0


def world_size():
    return jt.world_size if jt.in_mpi else 1


def is_main():
    return rank() == 0


WORKERS_ID_HELP = "GPU ids for the ranks, e.g. '0' or '0,1' (rank r uses the r-th), 'cpu', or 'auto' (GPU 0.. when " \
                  "CUDA works)"


WORKERS_ID_FORMAT = "'cpu', 'auto' or comma-separated GPU ids"


def workers_id(text):
    """--workers_id's type: checked where it is typed, so a bad value is a usage error naming the flag."""
    try:
        parse_workers(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {WORKERS_ID_FORMAT}, got '{text}'") from None
    return text


def parse_workers(text):
    """--workers_id: 'cpu' -> [], 'auto' -> None (CUDA when Jittor has it), '0,1' -> [0, 1]."""
    text = text.strip().lower()
    if text in ("cpu", "auto"):
        return [] if text == "cpu" else None
    ids = [v.strip() for v in text.split(",") if v.strip()]
    if not ids or not all(v.isdigit() for v in ids):  # isdigit: no sign, so no negative id
        raise ValueError(f"--workers_id must be {WORKERS_ID_FORMAT}, got '{text}'")
    return [int(v) for v in ids]


class DeviceError(InputError):
    """A device asked for that this machine does not have."""


def select_device(workers_id):
    """Turn CUDA on or off as --workers_id asks; a GPU asked for but absent is a DeviceError. -> 'cuda' or 'cpu'.

    Which GPU a rank uses was fixed before Jittor started (util.runtime.rank_gpu).
    """
    gpu_ids = parse_workers(workers_id)
    want_gpu = bool(jt.has_cuda) if gpu_ids is None else bool(gpu_ids)
    if want_gpu and not jt.has_cuda:
        raise DeviceError(f"--workers_id {workers_id} asks for a GPU, but Jittor found no usable CUDA here; "
                          "pass --workers_id cpu")
    jt.flags.use_cuda = int(want_gpu)
    return "cuda" if want_gpu else "cpu"


def _comm():
    from mpi4py import MPI  # on first use: only under mpirun, where Jittor has already started MPI
    return MPI.COMM_WORLD


# ---- numpy collectives (mpi4py) ----

def sum_arrays(array):
    """Element-wise sum of a same-shaped numpy array over all ranks (float64-safe)."""
    if not in_mpi():
        return array
    out = np.empty_like(array)
    _comm().Allreduce(np.ascontiguousarray(array), out)
    return out


def max_int(value):
    return int(value) if not in_mpi() else max(_comm().allgather(int(value)))


def gather_counts(count):
    """Every rank's `count`, in rank order, on every rank."""
    return [int(count)] if not in_mpi() else [int(c) for c in _comm().allgather(int(count))]


def all_gather_rows(local, counts):
    """Concatenate each rank's rows (rank order) on every rank; counts[r] = rows of rank r."""
    local = np.ascontiguousarray(local)
    if not in_mpi():
        return local
    row = int(np.prod(local.shape[1:], dtype=np.int64))
    out = np.empty((sum(counts), *local.shape[1:]), local.dtype)
    _comm().Allgatherv(local, [out, [c * row for c in counts]])
    return out


def gather_rows_to_main(local, counts):
    """Each rank's rows concatenated in rank order on rank 0 (None elsewhere)."""
    local = np.ascontiguousarray(local)
    if not in_mpi():
        return local
    row = int(np.prod(local.shape[1:], dtype=np.int64))
    out = np.empty((sum(counts), *local.shape[1:]), local.dtype) if is_main() else None
    _comm().Gatherv(local, [out, [c * row for c in counts]] if is_main() else None, root=0)
    return out


def rank_share(total, rank, world):
    """[start, stop) of `rank`'s contiguous part of `total` items (a batch, classes, images); the first
    `total % world` ranks take one more."""
    base, extra = divmod(total, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def batch_share(count):
    """This rank's fraction of the global batch, when it holds `count` of its images."""
    return count / sum(gather_counts(count))


def global_figures(means, share, counts):
    """Per-rank training figures -> the global batch's, alike on every rank.

    means: {name: float} averaged over this rank's images, weighted here by its `share` of
    the batch (or already a part of the global figure, with share 1); counts: {name: number}.
    """
    values = [value * share for value in means.values()] + list(counts.values())
    return dict(zip([*means, *counts], sum_arrays(np.array(values, np.float64)).tolist()))


def check_replicas_identical(named_arrays, what):
    """Raise naming the first rank and array that differ from rank 0's: replicated weights must stay equal.

    Cheap: each rank hashes its arrays and only the hashes travel.
    """
    if not in_mpi():
        return
    names = sorted(named_arrays)
    digests = [zlib.crc32(np.ascontiguousarray(named_arrays[n]).tobytes()) for n in names]
    everyone = _comm().allgather(digests)
    for other, theirs in enumerate(everyone):
        for name, mine, their in zip(names, everyone[0], theirs):
            if mine != their:
                raise RuntimeError(f"{what}: '{name}' on rank {other} differs from rank 0's; the replicas have "
                                   "diverged")


def abort(message):
    """Print `message` tagged with this rank and end the whole job (every rank) with exit status 1."""
    tag = f"[rank {rank()}/{world_size()}] " if in_mpi() else ""
    sys.stderr.write("".join(f"{tag}{line}\n" for line in message.rstrip().splitlines()))
    sys.stderr.flush()
    if in_mpi() and world_size() > 1:
        _comm().Abort(1)  # mpirun then ends every rank: no one waits forever in a collective
    sys.exit(1)


def run_main(main, expected_errors=(), clean_exits=()):
    """Run a script's main(); a failure on any rank ends the whole job, naming the rank.

    `expected_errors` (bad input) print only their message; anything else its traceback.
    `clean_exits`: exceptions that end the job with status 0, rank 0 printing their message.
    """
    try:
        main()
    except clean_exits as e:
        if is_main():
            print(e)
    except expected_errors as e:
        abort(f"error: {e}")
    except BaseException as e:  # a crash on one rank must not leave the others hanging in a collective
        if world_size() == 1 or isinstance(e, SystemExit) and e.code in (None, 0):
            raise
        abort(e.code if isinstance(e, SystemExit) and isinstance(e.code, str) else traceback.format_exc())


# ---- Jittor collectives (in the graph, differentiable) ----

# The one seam for measuring traffic: while `recording_collectives()` is active, every all-reduce the
# project's helpers below issue is listed (what it carries, shape, dtype, whether autodiff adds an equal
# one backward). Jittor's own sync BatchNorm issues its all-reduces itself; the benchmark counts those from
# the model.
_recorded = None


@contextmanager
def recording_collectives():
    """-> the list that fills with (what, shape, dtype, differentiated) for each all-reduce issued meanwhile."""
    global _recorded
    _recorded = []
    try:
        yield _recorded
    finally:
        _recorded = None


def _all_reduce(var, what, differentiated):
    if _recorded is not None:
        _recorded.append((what, tuple(var.shape), var.dtype, differentiated))
    return var.mpi_all_reduce("sum")


def all_reduce_sum(variables, what):
    """Sum each Var over the ranks with one all-reduce of their concatenation; -> the summed Vars.

    For values no gradient flows through (gradients themselves, bookkeeping); `what` says what they are.
    """
    if not in_mpi() or not variables:
        return list(variables)
    flat = _all_reduce(jt.concat([v.reshape(-1) for v in variables]), what, False)
    summed, offset = [], 0
    for v in variables:
        size = v.numel()
        summed.append(flat[offset:offset + size].reshape(v.shape))
        offset += size
    return summed


def all_gather_var(local, counts, what):
    """B_r x D rows of each rank -> the B x D concatenation (rank order) on every rank, differentiably.

    A zero table holding this rank's rows at its offset, summed over the ranks. The
    gradient of a sum is the sum of the gradients, so backward hands each rank the
    gradient of *every* rank's loss with respect to its own rows.
    """
    if not in_mpi():
        return local
    me = rank()
    before, after = sum(counts[:me]), sum(counts[me + 1:])
    parts = [jt.zeros((n, *local.shape[1:]), local.dtype) for n in (before,) if n] + [local] + \
            [jt.zeros((n, *local.shape[1:]), local.dtype) for n in (after,) if n]
    return _all_reduce(jt.concat(parts), what, True)


def broadcast_vars(variables):
    """Overwrite each Var with rank 0's value."""
    if in_mpi():
        for v in variables:
            v.assign(v.mpi_broadcast(0))
        jt.sync(list(variables))
