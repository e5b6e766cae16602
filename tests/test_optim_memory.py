"""The training step frees every activation after its last use, as a plain jt.optim.SGD step does.

Measured with Jittor's memory profiler, which is exact and deterministic where RSS is neither: the
live Var memory at the allocator's highest use. Each step is profiled in a process of its own (run
as `python3 tests/test_optim_memory.py STEP`), holding one model and one optimizer, so that no other
optimizer's buffers count. Sizes and speed themselves are the benchmark's (`--compare_reference`).
"""
import os
import subprocess
import sys

from util.files import REPO_ROOT

BATCH = 8
CLASSES = 10


def profiled_peak(kind):
    """Bytes of live Vars at the peak of one step of `kind` (after an unprofiled warm-up step)."""
    import jittor as jt
    import numpy as np

    from benchmark import live_peak_bytes, reference_sgd
    from train.config import SFACE, configure
    from train.steps import sface_step
    from train.training_model import build_model

    cfg = configure(SFACE, ["--net", "MobileFaceNet", "--workers_id", "cpu", "--target", "none",
                               "--batch_size", str(BATCH), "--lr", "0.01"]).cfg
    model = build_model(cfg, CLASSES)
    model.backbone.train()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (BATCH, 3, 112, 112)).astype(np.float32)
    labels = rng.integers(0, CLASSES, BATCH)

    if kind == "plain":
        plain = reference_sgd({"backbone": model.backbone, "head": model.head}, cfg["lr"], cfg["momentum"],
                              cfg["weight_decay"])
        model = model._replace(optimizer=None)  # only jt.optim.SGD's buffers exist

        def step():
            out = model.head(model.backbone(jt.array(images)), jt.array(labels), 0)
            plain.step(out.loss)
            out.loss.item()
    elif kind == "ours":
        def step():
            sface_step(model, cfg["seed"], images, labels, 0)
    else:
        def step():
            """What the training step did before: a Python name held the backbone output across the step."""
            embeddings = model.backbone(jt.array(images))
            out = model.head(embeddings, jt.array(labels), 0)
            model.optimizer.step(out.loss)
            out.loss.item()
    def synced_step():
        step()
        jt.sync_all(True)
    synced_step()
    return live_peak_bytes(synced_step)


def peak_in_new_process(kind):
    result = subprocess.run([sys.executable, os.path.abspath(__file__), kind], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.split()[-1])


def test_the_training_step_peaks_no_higher_than_a_plain_jittor_sgd_step():
    plain, ours, holding = (peak_in_new_process(kind) for kind in ("plain", "ours", "holding"))
    assert plain > 10 * BATCH * 128 * 56 * 56 * 4  # ten of MobileFaceNet's widest maps: it did measure
    assert ours <= plain
    assert holding > 1.3 * plain  # what this test guards against would fail it


if __name__ == "__main__":
    import util.runtime  # noqa: F401  (must precede jittor)
    print(profiled_peak(sys.argv[1]))
