#!/usr/bin/env python3
"""Prove the GPU path in one command: prints a table of checks and exits non-zero if any fails.

    python3 install/gpu_check.py             # with a GPU: IR_50 at batch 256, MobileFaceNet at 512
    python3 install/gpu_check.py --small     # small sizes (what the test suite runs on the CPU)

With a GPU, every Jittor op is run on it and compared with the same op on the CPU. Without one,
the checks run on the CPU and compare with numpy (float64): forward values, and gradients through
directional derivatives (<grad, d> against the central difference of the numpy function along a
random direction d), so no numpy backward pass is needed. The SFace head is checked the same way
against the formula of head/sface.py with its r-weights held constant (they are gradient-blocked).
Then: training img/s of our own step (also with --amp, on a GPU), embedding img/s, `mpirun -np 2` on one device giving the
weights of one process, and an interrupted-then-resumed run giving the weights of an uninterrupted
one (both on the embedded demo data).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import util.runtime  # noqa: E402  (must precede jittor)

import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402

import benchmark  # noqa: E402
from head import build_head  # noqa: E402
from model.checkpoint import load_checkpoint  # noqa: E402
from util.files import REPO_ROOT  # noqa: E402
from util.timing import median_seconds  # noqa: E402

DEMO = os.path.join(REPO_ROOT, "data", "demo")
TRAIN_SCRIPT = os.path.join(REPO_ROOT, "train_SFace_jittor.py")


# ---- op checks: the device against a reference ----

def conv_np(x, w, stride, padding, groups):
    """Direct grouped convolution (NCHW, OIHW) in numpy."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, c, _, _ = x.shape
    o, cg, kh, kw = w.shape
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    windows = windows.reshape(n, groups, c // groups, *windows.shape[2:])
    w = w.reshape(groups, o // groups, cg, kh, kw)
    return np.einsum("ngchwij,gocij->ngohw", windows, w).reshape(n, o, *windows.shape[3:5])


def batchnorm_np(x, weight, bias, eps=1e-5):
    mean, var = x.mean((0, 2, 3), keepdims=True), x.var((0, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


def batchnorm_jt(x, weight, bias):
    """Jittor's BatchNorm in training mode (batch statistics), with weight and bias as inputs."""
    bn = jt.nn.BatchNorm(x.shape[1], sync=False)
    bn.weight, bn.bias = weight, bias
    return bn(x)


def softmax_np(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def op_cases(rng):
    """(name, Jittor function, numpy function, inputs, differentiable)."""
    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    return [
        ("conv 3x3 (stride 1, pad 1)", lambda a, b: jt.nn.conv2d(a, b, None, 1, 1),
         lambda a, b: conv_np(a, b, 1, 1, 1), [x, rng.standard_normal((16, 8, 3, 3)).astype(np.float32)], True),
        ("conv 3x3 (stride 2, pad 1)", lambda a, b: jt.nn.conv2d(a, b, None, 2, 1),
         lambda a, b: conv_np(a, b, 2, 1, 1), [x, rng.standard_normal((16, 8, 3, 3)).astype(np.float32)], True),
        ("depthwise conv 3x3 (groups = channels)", lambda a, b: jt.nn.conv2d(a, b, None, 1, 1, 1, 8),
         lambda a, b: conv_np(a, b, 1, 1, 8), [x, rng.standard_normal((8, 1, 3, 3)).astype(np.float32)], True),
        ("matmul", lambda a, b: jt.matmul(a, b), lambda a, b: a @ b,
         [rng.standard_normal((32, 64)).astype(np.float32), rng.standard_normal((64, 48)).astype(np.float32)], True),
        ("batchnorm (batch statistics)", batchnorm_jt, batchnorm_np, [x, rng.uniform(0.5, 1.5, 8).astype(np.float32), rng.standard_normal(8).astype(np.float32)],
         True),
        ("softmax", lambda a: jt.nn.softmax(a, dim=1), softmax_np,
         [rng.standard_normal((16, 1000)).astype(np.float32)], True),
        ("reductions (sum, max)", lambda a: a.sum(1) + a.max(1), lambda a: a.sum(1) + a.max(1),
         [rng.standard_normal((16, 300)).astype(np.float32)], True),
        ("argsort", lambda a: jt.argsort(a, dim=1)[0], lambda a: np.argsort(a, axis=1, kind="stable"),
         [rng.permutation(4096).reshape(8, 512).astype(np.float32)], False),
    ]


def run_jittor(fn, inputs, out_grad, on_gpu):
    """(output, [gradient of sum(output * out_grad) per input]) of fn on the GPU or the CPU."""
    with jt.flag_scope(use_cuda=int(on_gpu)):
        variables = [jt.array(a) for a in inputs]
        out = fn(*variables)
        if out_grad is None:
            return out.numpy(), []
        grads = jt.grad((out * jt.array(out_grad)).sum(), variables)
        return out.numpy(), [g.numpy() for g in grads]


def directional_errors(np_fn, inputs, out_grad, grads, rng, eps=1e-3):
    """Relative error of <grad_i, d> against the central difference of sum(np_fn * out_grad) along d."""
    base = [a.astype(np.float64) for a in inputs]
    errors = []
    for i, grad in enumerate(grads):
        d = rng.standard_normal(base[i].shape)
        shifted = [[b + s * eps * d if j == i else b for j, b in enumerate(base)] for s in (1, -1)]
        numeric = ((np_fn(*shifted[0]) - np_fn(*shifted[1])) * out_grad).sum() / (2 * eps)
        errors.append(abs(float((grad * d).sum()) - numeric) / max(abs(numeric), 1e-6))
    return errors


def relative_error(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def check_op(on_gpu, name, jt_fn, np_fn, inputs, differentiable, rng, tolerance=1e-4):
    out_shape = np_fn(*inputs).shape
    out_grad = rng.standard_normal(out_shape).astype(np.float32) if differentiable else None
    out, grads = run_jittor(jt_fn, inputs, out_grad, on_gpu)
    if on_gpu:
        ref_out, ref_grads = run_jittor(jt_fn, inputs, out_grad, False)
        errors = [relative_error(out, ref_out)] + [relative_error(g, r) for g, r in zip(grads, ref_grads)]
        against = "CPU"
    else:
        errors = [relative_error(out, np_fn(*[a.astype(np.float64) for a in inputs]))]
        errors += directional_errors(np_fn, inputs, out_grad, grads, rng) if differentiable else []
        against = "numpy"
    worst = max(errors)
    return worst <= (1e-3 if len(errors) > 1 and not on_gpu else tolerance), \
        f"{name}: max relative error {worst:.1e} vs {against} (forward{' + gradients' if differentiable else ''})"


# ---- the SFace head against its formula ----

def sface_np(x, w, labels, s, k, a, b, r_weights=None):
    """The SFace loss with its r-weights given (held constant) or computed from x and w."""
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    mask = np.zeros_like(cos)
    mask[np.arange(len(labels)), labels] = 1
    if r_weights is None:
        theta = np.arccos(np.clip(cos, -1, 1))
        r_weights = mask * -1 / (1 + np.exp(-k * (theta - a))) + (1 - mask) / (1 + np.exp(k * (theta - b)))
    return (r_weights * s * cos).sum() / len(labels), r_weights


def check_sface_head(on_gpu, rng):
    batch, classes, dim = 16, 40, 32
    params = dict(s=64.0, k=80.0, a=0.87, b=1.2)
    head = build_head("SFaceLoss", dim, classes, seed=3, **params)
    x = rng.standard_normal((batch, dim)).astype(np.float32)
    labels = rng.integers(0, classes, batch)
    with jt.flag_scope(use_cuda=int(on_gpu)):
        xv = jt.array(x)
        out = head(xv, jt.array(labels))
        grad_x, grad_w = jt.grad(out.loss, [xv, head.weight])
        loss, grads = float(out.loss.item()), [grad_x.numpy(), grad_w.numpy()]
    w = head.weight.numpy()
    ref_loss, r_weights = sface_np(x.astype(np.float64), w.astype(np.float64), labels, **params)
    errors = [abs(loss - ref_loss) / abs(ref_loss)]
    errors += directional_errors(lambda xx, ww: np.asarray(sface_np(xx, ww, labels, **params, r_weights=r_weights)[0]),
                                 [x, w], np.float64(1.0), grads, rng)
    worst = max(errors)
    return worst <= 1e-3, f"SFace head: loss {loss:.4f} vs formula {ref_loss:.4f}; loss and gradients within {worst:.1e}"


# ---- throughput of our training step and of embedding ----

def training_throughput(net, batch, workers_id, steps, warmup, amp=False):
    """The benchmark's training and embedding steps (an SFace head of CASIA's 10,572 classes, random images)."""
    args = benchmark.parse_args(["--net", net, "--batch_size", str(batch), "--workers_id", workers_id,
                                 "--num_classes", "10572"] + (["--amp"] if amp else []))
    train = benchmark.train_step(args)
    losses = []
    rate = batch / median_seconds(lambda: losses.append(train()["loss"]), warmup, steps)
    embed = batch / median_seconds(benchmark.embed_step(args), warmup, steps)
    kind = f"{net} train batch {batch}{' --amp' if amp else ''}"
    return np.isfinite(losses[-1]), f"{kind}: {rate:.1f} img/s (median of {steps} steps); embedding {embed:.1f} img/s"


# ---- whole runs: mpirun against one process, resume against no interruption ----

def train_run(outdir, workers_id, max_steps, ranks=1, resume=False):
    command = [sys.executable, TRAIN_SCRIPT, "--data_root", DEMO, "--net", "MobileFaceNet", "--batch_size", "8", "--lr", "0.01",
               "--target", "none", "--num_workers", "2", "--workers_id", workers_id, "--max_steps", str(max_steps),
               "--outdir", outdir] + (["--resume", outdir] if resume else [])
    if ranks > 1:
        command = ["mpirun", "-np", str(ranks), "--oversubscribe"] + command
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return load_checkpoint(os.path.join(outdir, "last.npz"))


def weight_difference(a, b):
    """Largest relative L2 distance of a part's weights (all its arrays together; single arrays such as
    BatchNorm biases are sums with heavy cancellation and keep few digits in float32)."""
    def norm(arrays):
        return np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in arrays))
    return max(norm(a[part][n] - b[part][n] for n in a[part]) / norm(b[part].values()) for part in ("backbone", "head"))


def check_mpirun(workers_id, scratch, tolerance=1e-3):
    one = train_run(os.path.join(scratch, "one"), workers_id, 3)
    two = train_run(os.path.join(scratch, "two"), workers_id.split(",")[0], 3, ranks=2)
    diff = weight_difference(two, one)
    return diff <= tolerance, f"mpirun -np 2 on one device vs one process, 3 steps: weights within {diff:.1e}"


def check_resume(workers_id, scratch, tolerance):
    straight = train_run(os.path.join(scratch, "straight"), workers_id, 4)
    train_run(os.path.join(scratch, "resumed"), workers_id, 2)
    resumed = train_run(os.path.join(scratch, "resumed"), workers_id, 4, resume=True)
    diff = weight_difference(resumed, straight)
    return diff <= tolerance, f"stop at step 2, resume to 4 vs 4 straight: weights within {diff:.1e}"


def environment(on_gpu):
    settings = {}
    if os.path.exists(util.runtime.CUDA_SETTINGS):
        with open(util.runtime.CUDA_SETTINGS) as f:
            settings = json.load(f)
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip() if shutil.which("nvidia-smi") else ""
    return (f"Jittor {jt.__version__}, {'CUDA' if on_gpu else 'CPU'}; GPU: {gpu or 'none'}; CUDA toolkit "
            f"{settings.get('cuda', '-')}, cuDNN {settings.get('cudnn') or '-'}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="small sizes (always so without a GPU)")
    parser.add_argument("--skip_runs", action="store_true", help="leave out the mpirun and resume runs")
    args = parser.parse_args(argv)
    on_gpu = bool(jt.has_cuda)
    small = args.small or not on_gpu
    workers_id = "0" if on_gpu else "cpu"
    rng = np.random.default_rng(0)
    checks = [lambda case=case: check_op(on_gpu, *case, rng) for case in op_cases(rng)]
    checks.append(lambda: check_sface_head(on_gpu, rng))
    sizes = [("MobileFaceNet", 8), ("IR_18", 4)] if small else [("IR_50", 256), ("MobileFaceNet", 512)]
    # --amp is for the GPU only (refused on the CPU): its rows run where there is one.
    checks += [lambda net=net, batch=batch, amp=amp: training_throughput(net, batch, workers_id, 3 if small else 10,
                                                                         1 if small else 3, amp)
               for amp in ((False, True) if on_gpu else (False,)) for net, batch in sizes]
    scratch = tempfile.mkdtemp(prefix="gpu_check_")
    resume_tolerance = 1e-5 if on_gpu else 0.0  # exact on the CPU; GPU kernels may sum in another order
    if not args.skip_runs:
        checks += [lambda: check_mpirun(workers_id, scratch),
                   lambda: check_resume(workers_id, scratch, resume_tolerance)]
    print(environment(on_gpu))
    failures = 0
    for check in checks:
        start = time.time()
        try:
            ok, detail = check()
        except Exception as e:  # a check that crashes is a failed check; the others still run
            ok, detail = False, f"{type(e).__name__}: {e}"
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {detail}  ({time.time() - start:.0f} s)", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"{len(checks) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
