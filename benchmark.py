#!/usr/bin/env python3
"""Throughput figures (not a test): training and embedding img/s for a net and batch, on CPU or GPU.

    python3 benchmark.py --net IR_50 --batch_size 256 --workers_id 0
    python3 benchmark.py --net MobileFaceNet --batch_size 32 --workers_id cpu --data_root data/demo

Each figure is the median over timed steps after untimed warm-up steps (Jittor compiles
kernels on first use). Figures measured in the same run are shown side by side so they
can be compared despite machine noise: a training step with the SFace head against the
backbone alone, and the data loader's decode rate against the training rate.
"""
import util.runtime  # noqa: F401  (must precede jittor)

import argparse
import statistics
import tempfile
import time

import jittor as jt
import numpy as np

from backbone import build_backbone
from backbone.common import count_parameters
from data.convert import rec_to_images
from data.image_list import ImageListDataset, read_image_list
from data.loader import BatchLoader
from head import build_head
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
    args = p.parse_args()
    args.input_hw = parse_size(args.input_size)
    jt.flags.use_cuda = int(jt.has_cuda and args.workers_id != "cpu")
    device = "cuda" if jt.flags.use_cuda else "cpu"

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
