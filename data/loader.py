"""Deterministic, resumable batches decoded by a pool of threads (OpenCV releases the GIL).

Epoch `e` visits the samples in a permutation drawn from (seed, e), with random
horizontal flips drawn from the same generator, so a run resumed at batch k of an
epoch sees exactly the images (and flips) an uninterrupted run would have seen.
Each global batch is split into contiguous per-rank shares; the first
`batch_size % world_size` ranks take one sample more.
"""
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from util.distributed import rank_share

from .text import DataError

log = logging.getLogger("sface")
MAX_SKIP_WARNINGS = 20


def epoch_order(num_samples, seed, epoch):
    """(permutation, flips) of one epoch."""
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(num_samples), rng.random(num_samples) < 0.5


class BatchLoader:
    def __init__(self, dataset, batch_size, seed, flip=True, rank=0, world_size=1,
                 num_workers=4, strict=False, prefetch=2):
        if batch_size < world_size:
            raise ValueError(f"batch size {batch_size} is smaller than the {world_size} processes sharing it")
        if len(dataset) < batch_size:
            raise DataError(f"{dataset.source}: {len(dataset)} images, fewer than one batch of {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.flip = flip
        self.share = rank_share(batch_size, rank, world_size)
        self.strict = strict
        self.prefetch = prefetch
        self.pool = ThreadPoolExecutor(max(1, num_workers))
        self.skipped = 0

    def __len__(self):
        """Batches per epoch; the incomplete last batch is dropped (BatchNorm wants full ones)."""
        return len(self.dataset) // self.batch_size

    def epoch(self, epoch, start_batch=0):
        """Yield (images N x 3 x H x W float32, labels N int64) for batches start_batch.. of `epoch`."""
        order, flips = epoch_order(len(self.dataset), self.seed, epoch)
        lo, hi = self.share
        jobs = [order[b * self.batch_size + lo: b * self.batch_size + hi] for b in range(start_batch, len(self))]
        ready = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for indices in jobs:
                    if stop.is_set():
                        return
                    ready.put(self._assemble(indices, flips[indices] & self.flip))
            except BaseException as e:  # handed to the consumer, which re-raises it
                ready.put(e)
            ready.put(None)

        threading.Thread(target=produce, daemon=True).start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # the consumer may stop early: let the producer finish its put and exit
            stop.set()
            while not ready.empty():
                ready.get_nowait()

    def _assemble(self, indices, flips):
        results = list(self.pool.map(self.dataset.load, indices, flips))
        images, labels = [], []
        for index, (image, label, problem) in zip(indices, results):
            if problem is None:
                images.append(image)
                labels.append(label)
            else:
                self._bad_sample(index, problem)
        if not images:
            raise DataError(f"every image of a batch failed to load (e.g. {self.dataset.describe(indices[0])})")
        return np.stack(images), np.asarray(labels, dtype=np.int64)

    def _bad_sample(self, index, problem):
        message = f"{self.dataset.describe(index)}: {problem}"
        if self.strict:
            raise DataError(message)
        self.skipped += 1
        if self.skipped <= MAX_SKIP_WARNINGS:
            log.warning("skipped %s", message)
        if self.skipped == MAX_SKIP_WARNINGS:
            log.warning("further skipped images are counted but not listed")
