"""Which GPU each MPI rank is given, on one machine and across several, for each launcher's environment."""
import os

import pytest

import util.runtime as runtime

# launcher: (its global rank variable, its node-local rank variable)
LAUNCHERS = {"Open MPI": ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
             "MPICH / Intel MPI": ("PMI_RANK", "MPI_LOCALRANKID"),
             "PMI": ("PMI_RANK", "PMI_LOCAL_RANK"),
             "PMIx": ("PMIX_RANK", "PMIX_LOCAL_RANK"),
             "srun": ("PMI_RANK", "SLURM_LOCALID")}
# 2 machines x 2 ranks: machine -> the global ranks it runs, in local-rank order
LAYOUTS = {"by slot": {"a": [0, 1], "b": [2, 3]}, "by node": {"a": [0, 2], "b": [1, 3]}}


def gpu_of(monkeypatch, tmp_path, environment, workers_id="0,1"):
    """CUDA_VISIBLE_DEVICES as util.runtime sets it for a process started with `environment` (a GPU build)."""
    with monkeypatch.context() as m:
        for key in {v for pair in LAUNCHERS.values() for v in pair} | {"CUDA_VISIBLE_DEVICES", "nvcc_path"}:
            m.delenv(key, raising=False)
        for key, value in environment.items():
            m.setenv(key, str(value))
        m.setenv("SFACE_CUDA", "1")
        m.setattr(runtime.apply_cuda_settings, "__defaults__", (str(tmp_path / "absent.json"),))
        runtime.configure_jittor_env(["train_SFace_jittor.py", "--workers_id", workers_id])
        return os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_ranks_of_each_machine_get_distinct_gpus(monkeypatch, tmp_path, launcher, layout):
    global_variable, local_variable = LAUNCHERS[launcher]
    for machine, ranks in LAYOUTS[layout].items():
        environments = [{global_variable: rank, local_variable: local} for local, rank in enumerate(ranks)]
        if launcher != "srun":  # an mpirun inside a Slurm job passes on the job step's SLURM_LOCALID
            environments = [dict(environment, SLURM_LOCALID=0) for environment in environments]
        assert [gpu_of(monkeypatch, tmp_path, e) for e in environments] == ["0", "1"], machine


def test_without_a_local_rank_the_global_rank_picks_the_gpu(monkeypatch, tmp_path):
    """Right on one machine, the only layout a launcher that names no local rank is trusted with."""
    assert [gpu_of(monkeypatch, tmp_path, {"PMI_RANK": rank}) for rank in range(4)] == ["0", "1", "0", "1"]
    assert runtime.gpu_rank({"PMIX_RANK": "3"}) == 3
    assert runtime.gpu_rank({"PMIX_RANK": "3", "PMIX_LOCAL_RANK": "1"}) == 1


def test_a_process_outside_mpi_is_rank_0_whatever_slurm_says(monkeypatch, tmp_path):
    assert runtime.gpu_rank({"SLURM_LOCALID": "1"}) is None
    assert gpu_of(monkeypatch, tmp_path, {"SLURM_LOCALID": 1}, workers_id="1,0") == "1"
