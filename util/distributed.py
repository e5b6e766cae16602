"""Process-group helpers that also work in a single process (no mpirun).

Jittor itself all-reduces gradients and BatchNorm statistics; these helpers carry the
numpy-side traffic (embedding tables, agreement on when to stop) through mpi4py on the
MPI world Jittor has already initialised.
"""
import numpy as np
import jittor as jt


def in_mpi():
    return bool(jt.in_mpi)


def rank():
    return jt.rank if jt.in_mpi else 0


def world_size():
    return jt.world_size if jt.in_mpi else 1


def is_main():
    return rank() == 0


def select_device(gpu_ids, workers_id):
    """--workers_id: [] = CPU, GPU ids, or None ('auto': CUDA when Jittor has it). -> 'cuda' or 'cpu'."""
    want_gpu = bool(jt.has_cuda) if gpu_ids is None else bool(gpu_ids)
    if want_gpu and not jt.has_cuda:
        raise SystemExit(f"--workers_id {workers_id} asks for a GPU, but Jittor found no usable CUDA here; "
                         "pass --workers_id cpu")
    jt.flags.use_cuda = int(want_gpu)
    return "cuda" if want_gpu else "cpu"


def _comm():
    from mpi4py import MPI  # imported after jittor, which owns MPI_Init/Finalize
    return MPI.COMM_WORLD


def sum_arrays(array):
    """Element-wise sum of a same-shaped numpy array over all ranks (float64-safe)."""
    if not in_mpi():
        return array
    out = np.empty_like(array)
    _comm().Allreduce(np.ascontiguousarray(array), out)
    return out


def max_int(value):
    if not in_mpi():
        return int(value)
    from mpi4py import MPI
    return int(_comm().allreduce(int(value), op=MPI.MAX))


def barrier():
    if in_mpi():
        _comm().Barrier()
