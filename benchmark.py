#!/usr/bin/env python3
"""Throughput and peak-memory figures (not a test): training and embedding for a net and batch, on CPU or GPU.

    python3 benchmark.py --net IR_50 --batch_size 256 --workers_id 0
    python3 benchmark.py --net MobileFaceNet --batch_size 32 --workers_id cpu --data_root data/demo
    python3 benchmark.py --net MobileFaceNet --batch_size 64 --workers_id cpu --compare_reference --rounds 3
    mpirun -np 2 python3 benchmark.py --net IR_50 --num_classes 85742 --batch_size 8 --shard_head

Each figure is the median over timed steps after untimed warm-up steps (Jittor compiles
kernels on first use), measured in a process of its own, so that the process's peak
memory is that figure's: peak RSS on CPU, the device memory Jittor's allocator holds on a
GPU. The processes of one run are interleaved over `--rounds` rounds and each figure is
the median over the rounds, so figures of one run can be compared despite machine noise:
a training step with the SFace head against the backbone alone, the data loader's decode
rate against the training rate, and (`--compare_reference`) the training script's step
against a plain step of Jittor's own jt.optim.SGD on the same model and batch, as ratios.

Under mpirun it times the training script's own step (global batch split over the ranks)
and splits it into communication and compute: every all-reduce the step issues is
recorded with its size, then the same collectives are replayed alone and timed; compute
is the rest. It also prints the bytes each rank sends into collectives per step, the
head's memory per rank, and the largest rank's peak memory, from which larger set-ups
can be estimated (docs/multi-gpu.md).
"""
import util.runtime  # noqa: F401  (must precede jittor)

import argparse
import collections
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import jittor as jt
import numpy as np
from jittor import nn

from backbone import build_backbone_from_config, check_backbone, cpu_layers
from backbone.layers import count_parameters
from data.align_photos import align_identity_folders
from data.convert import rec_to_images
from data.image_list import ImageListDataset, read_image_list
from data.images import parse_size
from data.loader import BatchLoader
from data.photos import read_photo
from data.rec import IDX_NAME, REC_NAME
from data.scenes import random_scene, smooth_background
from train.config import SFACE, check_ranges, configure
from train.optim import SGD, batchnorm_parameter_names, named_parameters
from train.steps import sface_step
from train.training_model import build_model
from util import distributed
from util.files import REPO_ROOT
from util.timing import median_seconds


def training_config(args):
    """The training config of the benchmark's model, resolved as training resolves it (an SFace head, as
    training's default; seed 0, learning rate 0.01)."""
    argv = ["--data_mode", "casia", "--net", args.net, "--input_size", args.input_size, "--embedding_size",
            str(args.embedding_size), "--workers_id", args.workers_id, "--target", "none", "--seed", "0", "--lr",
            "0.01"] + [f"--{flag}" for flag in ("local_bn", "shard_head", "amp") if getattr(args, flag)]
    return configure(SFACE, argv).cfg


def reference_sgd(modules, lr, momentum, weight_decay):
    """Jittor's own jt.optim.SGD over the same parameters with the same decay rule (none on BatchNorm
    weights): the plain step the training step is measured against."""
    no_decay = batchnorm_parameter_names(modules)
    params = named_parameters(modules)
    return jt.optim.SGD([{"params": [p for n, p in params.items() if n not in no_decay]},
                         {"params": [p for n, p in params.items() if n in no_decay], "weight_decay": 0.0}],
                        lr, momentum, weight_decay)


def random_batch(args, size, seed):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 255, (size, 3, *args.input_hw)).astype(np.float32),
            rng.integers(0, args.num_classes, size))


def peak_memory_bytes(children=False):
    """This process's peak memory: the device memory Jittor's allocator holds (its cache, which only
    grows, included) on a GPU, else its peak resident set size; with `children`, that of its largest
    child process too (not for Jittor steps: their children are compilers)."""
    if jt.flags.use_cuda:
        return jt.get_mem_info().total_cuda_used
    who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) if children else (resource.RUSAGE_SELF,)
    return 1024 * max(resource.getrusage(w).ru_maxrss for w in who)


def memory_kind():
    return "device memory" if jt.flags.use_cuda else "RSS"


def training_model(args):
    model = build_model(training_config(args), args.num_classes)
    model.backbone.train()
    return model, random_batch(args, args.batch_size, 0)


def train_step(args):
    """The training script's step; each call returns its figures."""
    model, (images, labels) = training_model(args)

    def step():
        stats = sface_step(model, 0, images, labels, 0, amp=args.amp)
        jt.sync_all(True)
        return stats
    return step


def reference_step(args):
    """A plain step of Jittor's own SGD on the same model, batch and hyper-parameters (BatchNorm weights
    without weight decay, as in training), reading the loss as a training loop would."""
    model, (images, labels) = training_model(args)
    cfg = training_config(args)
    optimizer = reference_sgd({"backbone": model.backbone, "head": model.head}, cfg["lr"], cfg["momentum"],
                              cfg["weight_decay"])

    def step():
        out = model.head(model.backbone(jt.array(images)), jt.array(labels), 0)
        optimizer.step(out.loss)
        out.loss.item()
        jt.sync_all(True)
    return step


def jittors_layers_step(args):
    """The training script's step with Jittor's own BatchNorm and PReLU in place of backbone.cpu_layers'
    (in this process only): what their CPU kernels save."""
    cpu_layers.use_cpu_kernel = lambda *vars: False
    return train_step(args)


def backbone_step(args):
    """A step of the backbone alone on a plain loss."""
    model, (images, _) = training_model(args)
    alone = SGD({"backbone": model.backbone}, 0.01, 0.9, 5e-4)
    # A held Var with a gradient path through the backbone keeps its activations allocated (see
    # train.steps.embed): the batch is a constant, the output a temporary.
    batch = jt.array(images).stop_grad()

    def step():
        alone.step(model.backbone(batch).sqr().mean())
        jt.sync_all(True)
    return step


def embed_step(args):
    backbone = build_model(training_config(args), args.num_classes).backbone
    backbone.eval()
    images = jt.array(np.random.default_rng(1).uniform(0, 255, (args.batch_size, 3, *args.input_hw))
                      .astype(np.float32))

    def step():
        with jt.no_grad():
            backbone(images).sync()
        jt.sync_all(True)
    return step


def loader_seconds(args):
    """Seconds per batch of the image-list loader (its threads decoding)."""
    dataset = ImageListDataset(read_image_list(args.data_root), args.input_hw)
    loader = BatchLoader(dataset, args.batch_size, seed=0, num_workers=args.num_workers)
    batches = min(len(loader), args.steps + args.warmup)
    start, count = time.perf_counter(), 0
    for i, (images, _) in enumerate(loader.epoch(0)):
        count += len(images)
        if i + 1 == batches:
            break
    return (time.perf_counter() - start) * args.batch_size / count


def rec_seconds(args):
    """Seconds per batch-sized share of converting train.rec to JPEG files (into a temporary folder)."""
    with tempfile.TemporaryDirectory() as out:
        report = rec_to_images(args.rec, out, args.processes)
    return report.seconds * args.batch_size / report.images


DEMO_IMAGES = os.path.join(REPO_ROOT, "data", "demo", "images")
PHOTO_HW = (480, 640)


def synthetic_photos(raw, count, seed=0):
    """`count` 640x480 JPEG photos under raw/<identity>/: a demo face each (turned up to 20 degrees, scaled
    1.2-1.8x, anywhere within 100 px of the middle) on a smooth random background."""
    rng = np.random.default_rng(seed)
    identities = sorted(os.listdir(DEMO_IMAGES))
    for i in range(count):
        identity = identities[i % len(identities)]
        files = sorted(os.listdir(os.path.join(DEMO_IMAGES, identity)))
        crop = read_photo(os.path.join(DEMO_IMAGES, identity, files[i // len(identities) % len(files)]))
        photo, _ = random_scene(crop, rng, PHOTO_HW, offset=100, background=smooth_background(rng, PHOTO_HW))
        os.makedirs(os.path.join(raw, identity), exist_ok=True)
        cv2.imwrite(os.path.join(raw, identity, f"{i}.jpg"), photo[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])


def align_seconds(args):
    """Seconds per batch-sized share of aligning synthetic 640x480 photos into a training data root (reading,
    face detection, alignment, writing; --processes processes)."""
    with tempfile.TemporaryDirectory() as work:
        synthetic_photos(os.path.join(work, "raw"), args.align_photos)
        report, _, _ = align_identity_folders(os.path.join(work, "raw"), os.path.join(work, "out"),
                                              processes=args.processes)
    return report.seconds * args.batch_size / report.photos


# What one process measures (--measure): a step over a batch of args.batch_size images, timed and
# profiled here, or seconds per batch-sized share of a data job.
STEPS = {"train": train_step, "reference": reference_step, "jittors_layers": jittors_layers_step,
         "backbone": backbone_step, "embed": embed_step}
DATA_JOBS = {"loader": loader_seconds, "rec": rec_seconds, "align": align_seconds}
RESULT = "benchmark result: "


def live_peak_bytes(step):
    """The bytes of live Vars at the allocator's highest use during one more `step()`, by Jittor's memory
    profiler: exact and repeatable, where peak RSS also holds the allocator's cache and varies between
    processes by several per cent."""
    with jt.flag_scope(profile_memory_enable=1):
        step()
        return int(jt.get_max_memory_info().split("[!@#div1!@#]")[0])


def measure(args):
    """This process's figure: seconds per batch, peak memory and, for a step, its live memory."""
    if args.measure in DATA_JOBS:
        children = args.measure in ("rec", "align")  # their work runs in processes of their own
        return {"seconds": DATA_JOBS[args.measure](args), "peak_bytes": peak_memory_bytes(children),
                "live_bytes": None}
    step = STEPS[args.measure](args)
    seconds = median_seconds(step, args.warmup, args.steps)
    peak = peak_memory_bytes()  # before the profiled step, whose bookkeeping is not the step's
    return {"seconds": seconds, "peak_bytes": peak, "live_bytes": live_peak_bytes(step)}


def measured(what, rounds, argv):
    """{what: [(seconds, peak bytes, live bytes or None) per round]}, each figure in a new process of this
    script (given this one's `argv`), interleaved."""
    results = {w: [] for w in what}
    command = [sys.executable, os.path.abspath(__file__), *argv]
    for _ in range(rounds):
        for w in what:
            out = subprocess.run(command + ["--measure", w], capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT)]
            if out.returncode or not lines:
                sys.exit(f"benchmark: measuring '{w}' failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            result = json.loads(lines[-1][len(RESULT):])
            results[w].append((result["seconds"], result["peak_bytes"], result["live_bytes"]))
    return results


def step_all_reduces(step, backbone):
    """Run `step()` once; -> every all-reduce it issues, [(what, shape, dtype)], backward ones included: the
    project's (util.distributed records them) and those of Jittor's sync BatchNorm (each synchronised layer
    all-reduces its batch mean and mean square, and their gradients backward)."""
    with distributed.recording_collectives() as recorded:
        step()
    batchnorm = [("BatchNorm batch statistics", (m.num_features,), "float32", True) for m in backbone.modules()
                 if isinstance(m, nn.BatchNorm) and m.sync for _ in ("mean", "mean square")]
    return [(what, shape, dtype) for what, shape, dtype, differentiated in recorded + batchnorm
            for _ in range(2 if differentiated else 1)]


def replay_seconds(issued, warmup, steps):
    """The recorded collectives alone, on zero buffers of the same sizes, in one graph as in a step."""
    buffers = [jt.zeros(shape, dtype) for _, shape, dtype in issued]
    jt.sync(buffers)
    return median_seconds(lambda: jt.sync([b.mpi_all_reduce("sum") for b in buffers]), warmup, steps)


def distributed_report(args):
    """The training step under mpirun, split into compute and communication, with bytes per rank."""
    rank, world = distributed.rank(), distributed.world_size()
    model = build_model(training_config(args), args.num_classes)
    start, stop = distributed.rank_share(args.batch_size, rank, world)
    images, labels = random_batch(args, stop - start, rank)
    model.backbone.train()

    def step():
        sface_step(model, 0, images, labels, 0, amp=args.amp)
        jt.sync_all(True)
    issued = step_all_reduces(step, model.backbone)
    seconds = median_seconds(step, args.warmup, args.steps)
    communication = replay_seconds(issued, args.warmup, args.steps)
    peak = distributed.max_int(peak_memory_bytes())
    if not distributed.is_main():
        return
    per_kind = collections.defaultdict(lambda: [0, 0])
    for kind, shape, dtype in issued:
        per_kind[kind][0] += 1
        per_kind[kind][1] += int(np.prod(shape, dtype=np.int64)) * np.dtype(str(dtype)).itemsize
    head_rows = model.head.weight.shape[0]
    split = "+".join(str(hi - lo) for lo, hi in (distributed.rank_share(args.batch_size, r, world)
                                                 for r in range(world)))
    print(f"{args.net} {args.input_size} {args.embedding_size}-d, SFace head {args.num_classes} classes "
          f"{'sharded' if model.head.sharded else 'replicated'}, BatchNorm {'per rank' if args.local_bn else 'synchronised'}"
          f"; global batch {args.batch_size} over {world} ranks ({split}); "
          f"{'cuda' if jt.flags.use_cuda else 'cpu'}; median of {args.steps} steps after {args.warmup} warm-up")
    print(f"  {'training step':<48}{seconds * 1e3:10.1f} ms  ({args.batch_size / seconds:.1f} img/s in all)")
    print(f"  {'communication (its all-reduces replayed alone)':<48}{communication * 1e3:10.1f} ms")
    print(f"  {'compute and the rest (step - communication)':<48}{(seconds - communication) * 1e3:10.1f} ms")
    print(f"  {'peak ' + memory_kind() + ', largest rank':<48}{peak / 2 ** 20:10.0f} MB")
    print("  all-reduced per step by each rank (payload; a ring all-reduce sends about 2(N-1)/N of it):")
    for kind, (calls, size) in per_kind.items():
        print(f"    {kind:<52}{calls:5d} calls {size / 1e6:12.3f} MB")
    total = sum(size for _, size in per_kind.values())
    print(f"    {'total':<52}{len(issued):5d} calls {total / 1e6:12.3f} MB")
    print(f"  head per rank: {head_rows:,} class centres x {args.embedding_size}, weights + momentum + gradient "
          f"{3 * head_rows * args.embedding_size * 4 / 1e6:.1f} MB")


def parse_args(argv=None):
    """The benchmark's options, checked before any work (install/gpu_check.py measures through them too)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", default="IR_50")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--input_size", default="112x112")
    p.add_argument("--embedding_size", type=int, default=512)
    p.add_argument("--num_classes", type=int, default=10572, help="class centres in the SFace head (CASIA: 10572)")
    p.add_argument("--workers_id", type=distributed.workers_id, default="auto",
                   help=f"{distributed.WORKERS_ID_HELP} (default: auto)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--data_root", default="", help="also time the image-list loader on this folder")
    p.add_argument("--num_workers", type=int, default=4, help="image-decoding threads of the loader")
    p.add_argument("--rec", default="",
                   help="also time converting this train.rec/.idx folder to JPEG files (all of it, into a temp folder)")
    p.add_argument("--processes", type=int, default=os.cpu_count(), help="converter processes (default: one per "
                                                                           "CPU core)")
    p.add_argument("--align_photos", type=int, default=0, metavar="N",
                   help="also time aligning N synthetic 640x480 photos (demo faces) into a training data root, with "
                        "--processes processes")
    p.add_argument("--shard_head", action="store_true", help="under mpirun: split the class centres over the ranks")
    p.add_argument("--local_bn", action="store_true", help="under mpirun: BatchNorm statistics per rank")
    p.add_argument("--amp", action="store_true", help="the training step in mixed precision (GPU only)")
    p.add_argument("--compare_reference", action="store_true",
                   help="also measure a plain jt.optim.SGD step on the same model and batch; print the ratios")
    p.add_argument("--compare_jittors_layers", action="store_true",
                   help="also measure the training step with Jittor's own BatchNorm and PReLU instead of "
                        "backbone.cpu_layers' (CPU); print the ratios")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds of the measuring processes; each "
                                                         "figure is the median over them (default: 1)")
    p.add_argument("--measure", choices=sorted([*STEPS, *DATA_JOBS]), help=argparse.SUPPRESS)  # one figure, in this process
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # what each measuring process is given
    try:  # before any work
        args.input_hw = parse_size(args.input_size)
        check_backbone(args.net, args.input_hw)
        check_ranges(vars(args), ("batch_size", "embedding_size", "num_classes", "steps", "rounds", "num_workers",
                                  "processes"), ("warmup", "align_photos"))
        if args.data_root:
            read_image_list(args.data_root)  # the loader's list, whole, before the steps are timed
        missing = [n for n in (REC_NAME, IDX_NAME) if args.rec and not os.path.isfile(os.path.join(args.rec, n))]
        if missing:
            raise ValueError(f"--rec {args.rec}: holds no {' or '.join(missing)}")
        args.device = distributed.select_device(args.workers_id)
        if args.amp and args.device == "cpu":
            raise ValueError("--amp is mixed precision for the GPU; on the CPU leave it out")
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None):
    args = parse_args(argv)
    if distributed.world_size() > 1:
        distributed_report(args)
        return

    if args.measure:
        print(RESULT + json.dumps(measure(args)))
        return
    report(args)


def report(args):
    labels = {"train": f"train step, SFace head ({args.num_classes} classes)",
              "reference": "reference: jt.optim.SGD step, same model",
              "jittors_layers": "train step, Jittor's BatchNorm and PReLU",
              "backbone": "train step, backbone only", "embed": "embedding (eval, no grad)",
              "loader": f"image-list loader, {args.num_workers} threads",
              "rec": f".rec -> JPEG conversion, {args.processes} processes",
              "align": f"photo alignment 640x480, {args.processes} processes"}
    compared = [w for w, flag in (("reference", args.compare_reference),
                                  ("jittors_layers", args.compare_jittors_layers)) if flag]
    what = ["train", *compared, "backbone", "embed",
            *(["loader"] if args.data_root else []), *(["rec"] if args.rec else []),
            *(["align"] if args.align_photos else [])]
    results = measured(what, args.rounds, args.argv)
    seconds, peak, live = ({w: statistics.median(r[i] for r in rs) if rs[0][i] is not None else None
                            for w, rs in results.items()} for i in range(3))
    b = args.batch_size
    backbone = build_backbone_from_config(training_config(args))
    print(f"{args.net} {args.input_size} {args.embedding_size}-d ({count_parameters(backbone):,} parameters), "
          f"batch {b}, {args.device}; each figure in its own process: median of {args.steps} steps after {args.warmup} "
          f"warm-up, median over {args.rounds} interleaved round(s); peak {memory_kind()} of that process; live: "
          f"Vars alive at the step's peak (Jittor's memory profiler, exact)")
    for w in what:
        print(f"  {labels[w]:<44} {b / seconds[w]:9.1f} img/s  ({seconds[w] * 1e3:7.0f} ms per batch)  "
              f"peak {peak[w] / 2 ** 20:7.0f} MB" + (f"  live {live[w] / 2 ** 20:7.0f} MB" if live[w] else ""))
    ratio_labels = {"reference": "train step / reference step",
                    "jittors_layers": "train step / step with Jittor's layers"}
    for other in compared:
        per_round = [(t / ot, m / om) for (t, m, _), (ot, om, _) in zip(results["train"], results[other])]
        print(f"  {ratio_labels[other]:<44} time {seconds['train'] / seconds[other]:.2f}x, "
              f"peak memory {peak['train'] / peak[other]:.2f}x, live memory {live['train'] / live[other]:.2f}x"
              "  (time / peak per round: " + ", ".join(f"{t:.2f}x / {m:.2f}x" for t, m in per_round) + ")")


if __name__ == "__main__":
    main()
