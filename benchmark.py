#!/usr/bin/env python3
"""Throughput figures (not a test): training and embedding img/s for a net and batch, on CPU or GPU.

    python3 benchmark.py --net IR_50 --batch_size 256 --workers_id 0
    python3 benchmark.py --net MobileFaceNet --batch_size 32 --workers_id cpu --data_root data/demo
    mpirun -np 2 python3 benchmark.py --net IR_50 --num_classes 85742 --batch_size 8 --shard_head

Each figure is the median over timed steps after untimed warm-up steps (Jittor compiles
kernels on first use). Figures measured in the same run are shown side by side so they
can be compared despite machine noise: a training step with the SFace head against the
backbone alone, and the data loader's decode rate against the training rate.

Under mpirun it times the training script's own step (global batch split over the ranks)
and splits it into communication and compute: every all-reduce the step issues is
recorded with its size, then the same collectives are replayed alone and timed; compute
is the rest. It also prints the bytes each rank sends into collectives per step and the
head's memory per rank, from which larger set-ups can be estimated (README: Scaling).
"""
import util.runtime  # noqa: F401  (must precede jittor)

import argparse
import collections
import statistics
import sys
import tempfile
import time

import jittor as jt
import numpy as np

from backbone import build_backbone
from backbone.common import count_parameters
from data.convert import rec_to_images
from data.image_list import ImageListDataset, read_image_list
from data.loader import BatchLoader, rank_share
from head import build_head
from train_SFace_jittor import build_model, train_step
from util import distributed
from util.config import parse_size
from util.optim import SGD


def timed(step, warmup, steps):
    """Median seconds of `step()` (which must block until its work is done)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_seconds(args, with_head):
    backbone = build_backbone(args.net, args.input_hw, args.embedding_size)
    head = build_head("SFaceLoss", args.embedding_size, args.num_classes)
    modules = {"backbone": backbone, "head": head} if with_head else {"backbone": backbone}
    optimizer = SGD(modules, 0.01, 0.9, 5e-4)
    rng = np.random.default_rng(0)
    images = jt.array(rng.uniform(0, 255, (args.batch_size, 3, *args.input_hw)).astype(np.float32))
    labels = jt.array(rng.integers(0, args.num_classes, args.batch_size))
    backbone.train()

    def step():
        embeddings = backbone(images)
        loss = head(embeddings, labels).loss if with_head else (embeddings * embeddings).mean()
        optimizer.step(loss)
        jt.sync_all(True)
    return timed(step, args.warmup, args.steps), backbone


def embed_seconds(args, backbone):
    backbone.eval()
    images = jt.array(np.random.default_rng(1).uniform(0, 255, (args.batch_size, 3, *args.input_hw))
                      .astype(np.float32))

    def step():
        with jt.no_grad():
            backbone(images).sync()
        jt.sync_all(True)
    return timed(step, args.warmup, args.steps)


def loader_images_per_second(args):
    dataset = ImageListDataset(read_image_list(args.data_root), args.input_hw)
    loader = BatchLoader(dataset, args.batch_size, seed=0, num_workers=args.num_workers)
    batches = min(len(loader), args.steps + args.warmup)
    start, count = time.perf_counter(), 0
    for i, (images, _) in enumerate(loader.epoch(0)):
        count += len(images)
        if i + 1 == batches:
            break
    return count / (time.perf_counter() - start)


def rec_conversion_images_per_second(args):
    """train.rec -> JPEG files into a temporary folder, all records once."""
    with tempfile.TemporaryDirectory() as out:
        report = rec_to_images(args.rec, out, args.rec_workers)
    return report.images / report.seconds


# Who issued an all-reduce (the function that called mpi_all_reduce, or its caller for our
# flat sum) -> what the traffic is, and whether autodiff adds an equal all-reduce backward.
TRAFFIC_KINDS = {
    "step": ("gradients (replicated parameters)", False),
    "all_gather_var": ("embeddings of the global batch (sharded head)", True),
    "execute": ("BatchNorm batch statistics", True),
    "_own_correct": ("train-accuracy bookkeeping (sharded head)", False),
}


def traffic_kind(frame):
    caller = frame.f_back
    if caller.f_code.co_name == "all_reduce_sum":
        caller = caller.f_back
    return TRAFFIC_KINDS.get(caller.f_code.co_name, (caller.f_code.co_name, False))


def recorded_all_reduces(step):
    """Run `step()` once, recording every all-reduce it issues: [(kind, shape, dtype)], backward ones included."""
    issued, original = [], jt.Var.mpi_all_reduce

    def recording(var, *args, **kwargs):
        kind, has_backward = traffic_kind(sys._getframe())
        issued.extend([(kind, tuple(var.shape), var.dtype)] * (2 if has_backward else 1))
        return original(var, *args, **kwargs)
    jt.Var.mpi_all_reduce = recording
    try:
        step()
    finally:
        jt.Var.mpi_all_reduce = original
    return issued


def replay_seconds(issued, warmup, steps):
    """The recorded collectives alone, on zero buffers of the same sizes, in one graph as in a step."""
    buffers = [jt.zeros(shape, dtype) for _, shape, dtype in issued]
    jt.sync(buffers)
    return timed(lambda: jt.sync([b.mpi_all_reduce("sum") for b in buffers]), warmup, steps)


def distributed_report(args):
    """The training step under mpirun, split into compute and communication, with bytes per rank."""
    rank, world = distributed.rank(), distributed.world_size()
    cfg = {"seed": 0, "net": args.net, "input_hw": args.input_hw, "embedding_size": args.embedding_size,
           "local_bn": args.local_bn, "head": "SFaceLoss", "shard_head": args.shard_head, "head_params": {},
           "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
    backbone, head, optimizer = build_model(cfg, args.num_classes)
    start, stop = rank_share(args.batch_size, rank, world)
    rng = np.random.default_rng(rank)
    images = rng.uniform(0, 255, (stop - start, 3, *args.input_hw)).astype(np.float32)
    labels = rng.integers(0, args.num_classes, stop - start)
    backbone.train()

    def step():
        train_step(backbone, head, optimizer, images, labels, seed=0, step=0)
        jt.sync_all(True)
    issued = recorded_all_reduces(step)
    seconds = timed(step, args.warmup, args.steps)
    communication = replay_seconds(issued, args.warmup, args.steps)
    if rank:
        return
    per_kind = collections.defaultdict(lambda: [0, 0])
    for kind, shape, dtype in issued:
        per_kind[kind][0] += 1
        per_kind[kind][1] += int(np.prod(shape, dtype=np.int64)) * np.dtype(str(dtype)).itemsize
    head_rows = head.weight.shape[0]
    split = "+".join(str(hi - lo) for lo, hi in (rank_share(args.batch_size, r, world) for r in range(world)))
    print(f"{args.net} {args.input_size} {args.embedding_size}-d, SFace head {args.num_classes} classes "
          f"{'sharded' if head.sharded else 'replicated'}, BatchNorm {'per rank' if args.local_bn else 'synchronised'}"
          f"; global batch {args.batch_size} over {world} ranks ({split}); "
          f"{'cuda' if jt.flags.use_cuda else 'cpu'}; median of {args.steps} steps after {args.warmup} warm-up")
    print(f"  {'training step':<48}{seconds * 1e3:10.1f} ms  ({args.batch_size / seconds:.1f} img/s in all)")
    print(f"  {'communication (its all-reduces replayed alone)':<48}{communication * 1e3:10.1f} ms")
    print(f"  {'compute and the rest (step - communication)':<48}{(seconds - communication) * 1e3:10.1f} ms")
    print("  all-reduced per step by each rank (payload; a ring all-reduce sends about 2(N-1)/N of it):")
    for kind, (calls, size) in per_kind.items():
        print(f"    {kind:<52}{calls:5d} calls {size / 1e6:12.3f} MB")
    total = sum(size for _, size in per_kind.values())
    print(f"    {'total':<52}{len(issued):5d} calls {total / 1e6:12.3f} MB")
    print(f"  head per rank: {head_rows:,} class centres x {args.embedding_size}, weights + momentum + gradient "
          f"{3 * head_rows * args.embedding_size * 4 / 1e6:.1f} MB")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", default="IR_50")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--input_size", default="112x112")
    p.add_argument("--embedding_size", type=int, default=512)
    p.add_argument("--num_classes", type=int, default=10572, help="class centres in the SFace head (CASIA: 10572)")
    p.add_argument("--workers_id", default="auto", help="'cpu', a GPU id, or 'auto'")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--data_root", default="", help="also time the image-list loader on this folder")
    p.add_argument("--num_workers", type=int, default=4)
    p.add_argument("--rec", default="",
                   help="also time converting this train.rec/.idx folder to JPEG files (all of it, into a temp folder)")
    p.add_argument("--rec_workers", type=int, default=4, help="conversion processes")
    p.add_argument("--shard_head", action="store_true", help="under mpirun: split the class centres over the ranks")
    p.add_argument("--local_bn", action="store_true", help="under mpirun: BatchNorm statistics per rank")
    args = p.parse_args()
    args.input_hw = parse_size(args.input_size)
    jt.flags.use_cuda = int(jt.has_cuda and args.workers_id != "cpu")
    device = "cuda" if jt.flags.use_cuda else "cpu"
    if distributed.world_size() > 1:
        distributed_report(args)
        return

    with_head, backbone = train_seconds(args, with_head=True)
    alone, _ = train_seconds(args, with_head=False)
    embed = embed_seconds(args, backbone)
    b = args.batch_size
    print(f"{args.net} {args.input_size} {args.embedding_size}-d ({count_parameters(backbone):,} parameters), "
          f"batch {b}, {device}, median of {args.steps} steps after {args.warmup} warm-up")
    rows = [(f"train step, SFace head ({args.num_classes} classes)", b / with_head, with_head),
            ("train step, backbone only", b / alone, alone),
            ("embedding (eval, no grad)", b / embed, embed)]
    for label, rate, seconds in rows:
        print(f"  {label:<44} {rate:9.1f} img/s  ({seconds * 1e3:.0f} ms per batch)")
    if args.data_root:
        label = f"image-list loader, {args.num_workers} threads"
        print(f"  {label:<44} {loader_images_per_second(args):9.1f} img/s")
    if args.rec:
        label = f".rec -> JPEG conversion, {args.rec_workers} processes"
        print(f"  {label:<44} {rec_conversion_images_per_second(args):9.1f} img/s")


if __name__ == "__main__":
    main()
