"""Mixed precision and non-finite steps, on the CPU as far as it goes: the loss-scale rule, skipped steps
that change nothing, the float16 backbone with a float32 head, the scale in checkpoints, the CPU refusal."""
import os
import subprocess
import sys

import jittor as jt
import numpy as np
import pytest

from conftest import REPO_ROOT
from model.checkpoint import CheckpointError, load_checkpoint
from train.amp import LossScale
from train.config import SFACE, configure
from train.optim import SGD
from train.run_state import restore_state, save_state
from train.steps import NonFiniteError, sface_step
from train.training_model import build_model


def test_loss_scale_halves_on_overflow_and_doubles_after_a_run_of_good_steps():
    scale = LossScale(1024.0, growth_interval=3)
    for _ in range(2):
        scale.update(True)
    assert (scale.scale, scale.good_steps) == (1024.0, 2)
    scale.update(False)
    assert (scale.scale, scale.good_steps) == (512.0, 0)
    for _ in range(3):
        scale.update(True)
    assert (scale.scale, scale.good_steps) == (1024.0, 0)
    restored = LossScale()
    restored.load_state(dict(scale.state(), good_steps=2))
    assert (restored.scale, restored.good_steps) == (1024.0, 2)
    tiny = LossScale(1.0)
    tiny.update(False)
    assert tiny.scale == 1.0  # never below 1


class Linear(jt.nn.Module):
    def __init__(self, weight):
        self.weight = jt.array(weight)

    def execute(self, x):
        return jt.matmul(x, self.weight)


def one_step(loss_scale, x):
    module = Linear(np.arange(6, dtype=np.float32).reshape(3, 2) / 7)
    optimizer = SGD({"backbone": module}, 0.1, 0.9, 5e-4, loss_scale=loss_scale)
    applied = optimizer.step((module(jt.array(x)) ** 2).mean())
    return applied, module.weight.numpy(), optimizer


def test_a_scaled_step_is_the_unscaled_step_exactly():
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    assert one_step(None, x)[0] and one_step(LossScale(2.0 ** 16), x)[0]
    assert np.array_equal(one_step(None, x)[1], one_step(LossScale(2.0 ** 16), x)[1])


def test_a_non_finite_gradient_skips_the_step_under_a_loss_scale():
    x = np.full((4, 3), np.inf, np.float32)
    before = np.arange(6, dtype=np.float32).reshape(3, 2) / 7
    applied, weight, optimizer = one_step(LossScale(1024.0), x)
    assert not applied and np.array_equal(weight, before)
    assert optimizer.steps == 0 and optimizer.loss_scale.scale == 512.0
    assert not optimizer.state_arrays()["backbone/weight/momentum"].any()


def tiny_config(amp=False):
    """A resolved CPU config; with `amp` a copy that asks for mixed precision anyway (resolving refuses --amp on the
    CPU, where Jittor's float16 still runs: these tests check its arithmetic, not its speed)."""
    cfg = configure(SFACE, ["--net", "MobileFaceNet", "--workers_id", "cpu", "--target", "none",
                            "--batch_size", "4", "--lr", "0.01"]).cfg
    return dict(cfg, amp=True) if amp else cfg


def built(cfg):
    """A model whose initial weights are drawn now, as a run's start does (Jittor draws them lazily)."""
    model = build_model(cfg, 10)
    jt.sync(list(model.optimizer.params.values()))
    model.backbone.train()
    return model


def test_the_float16_backbone_feeds_a_float32_head_and_the_weights_stay_float32():
    cfg = tiny_config(amp=True)
    model = built(cfg)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 3, 112, 112)).astype(np.float32)
    labels = np.arange(4)
    with jt.flag_scope(auto_mixed_precision_level=5):
        assert model.backbone(jt.array(images)).dtype == "float16"
    before = {n: p.numpy().copy() for n, p in model.optimizer.params.items()}
    stats = sface_step(model, cfg["seed"], images, labels, 0, amp=True)
    assert np.isfinite(stats["loss"])
    assert all(p.dtype == "float32" for p in model.optimizer.params.values())
    assert model.head(model.backbone(jt.array(images)), jt.array(labels)).loss.dtype == "float32"
    reference = built(tiny_config())
    full = sface_step(reference, cfg["seed"], images, labels, 0)
    assert stats["loss"] == pytest.approx(full["loss"], rel=2e-2)  # the same step, in half precision
    # 2^16 times this loss overflows float16 here: that step was skipped and halved the scale. The next
    # step with a scale that fits updates the weights.
    assert stats["loss_scale"] == 2.0 ** 15 and model.optimizer.steps == 0
    model.optimizer.loss_scale.load_state({"scale": 2.0 ** 8, "good_steps": 0})
    sface_step(model, cfg["seed"], images, labels, 1, amp=True)
    assert model.optimizer.steps == 1 and model.optimizer.loss_scale.good_steps == 1
    assert any(not np.array_equal(p.numpy(), before[n]) for n, p in model.optimizer.params.items())
    assert all(np.isfinite(p.numpy()).all() for p in model.optimizer.params.values())


def test_a_nan_loss_stops_the_run_naming_the_step_and_no_checkpoint_takes_the_weights(tmp_path):
    cfg = tiny_config()
    model = built(cfg)
    modules = {"backbone": model.backbone, "head": model.head}
    save_state(str(tmp_path / "last.npz"), {"config": cfg}, modules, model.optimizer)
    good = load_checkpoint(str(tmp_path / "last.npz"))
    # A diverged model: NaN class centres. (NaN pixels are no test: Jittor's -Ofast kernels may turn
    # them into finite values before the loss.)
    model.head.weight.assign(np.full(model.head.weight.shape, np.nan, np.float32))
    images = np.random.default_rng(0).uniform(0, 255, (4, 3, 112, 112)).astype(np.float32)
    with pytest.raises(NonFiniteError, match="training step 6: the loss is nan"):
        sface_step(model, cfg["seed"], images, np.arange(4), 5)
    with pytest.raises(CheckpointError, match="not written, the weights .* are not finite"):
        save_state(str(tmp_path / "last.npz"), {"config": cfg}, modules, model.optimizer)
    kept = load_checkpoint(str(tmp_path / "last.npz"))
    assert all(np.array_equal(kept["backbone"][n], a) for n, a in good["backbone"].items())


def test_the_loss_scale_is_saved_and_resumed(tmp_path):
    cfg = tiny_config(amp=True)
    model = built(cfg)
    model.optimizer.loss_scale.load_state({"scale": 256.0, "good_steps": 7})
    modules = {"backbone": model.backbone, "head": model.head}
    save_state(str(tmp_path / "last.npz"), {"config": cfg}, modules, model.optimizer)
    checkpoint = load_checkpoint(str(tmp_path / "last.npz"))
    resumed = build_model(cfg, 10)
    restore_state(checkpoint, "last.npz", {"backbone": resumed.backbone, "head": resumed.head}, resumed.optimizer)
    assert resumed.optimizer.loss_scale.state() == {"scale": 256.0, "good_steps": 7}


def test_amp_is_refused_on_the_cpu_before_the_data_is_read(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "train_SFace_jittor.py"), "--amp",
                           "--workers_id", "cpu", "--data_root", str(tmp_path / "absent"), "--target", "none",
                           "--outdir", str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=600)
    assert done.returncode == 2 and "--amp is mixed precision for the GPU" in done.stderr, done.stderr[-2000:]
    assert not os.path.exists(tmp_path / "run")
