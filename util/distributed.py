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
