"""Synthetic closed-set label noise (`--label_noise P`): a fraction of the training images get another
class's label, drawn from the seed alone, so a resumed run (and a diagnostic tool) finds the same flips.

Exactly round(P * N) of the N labelled images are flipped, each to a class drawn uniformly from the
other C - 1 (never its own). The flipped images are listed in `<outdir>/label_noise.txt`.
"""
import numpy as np

from util.files import write_atomically

from .text import DataError

NOISE_FILE = "label_noise.txt"
NOISE_DRAW = 11  # the generator stream of the flips, apart from the data order's and the weights'


def other_classes(labels, num_classes, rng):
    """One class per label drawn uniformly from the other num_classes - 1 (never the label itself)."""
    labels = np.asarray(labels, np.int64)
    return (labels + 1 + rng.integers(0, num_classes - 1, len(labels))) % num_classes


def flip_labels(labels, num_classes, fraction, seed):
    """-> (noisy labels, sorted indices of the flipped images). Unlabelled images (label < 0) are never chosen."""
    labels = np.asarray(labels, np.int64)
    candidates = np.flatnonzero(labels >= 0)
    count = int(round(fraction * len(candidates)))
    if count and num_classes < 2:
        raise ValueError(f"--label_noise needs at least 2 classes to flip a label to another, the data has "
                         f"{num_classes}")
    rng = np.random.default_rng([seed, NOISE_DRAW])
    flipped = np.sort(rng.permutation(candidates)[:count])
    noisy = labels.copy()
    noisy[flipped] = other_classes(labels[flipped], num_classes, rng)
    return noisy, flipped


def apply_label_noise(dataset, fraction, seed):
    """Flip the labels of `dataset` (an ImageListDataset or RecDataset) in place; -> (flipped indices, their
    original labels)."""
    try:
        noisy, flipped = flip_labels(dataset.labels, dataset.num_classes, fraction, seed)
    except ValueError as e:
        raise DataError(f"{dataset.source}: {e}") from None
    original = dataset.labels[flipped].copy()
    dataset.labels[:] = noisy  # the array the dataset's `load` reads
    return flipped, original


def write_noise_list(path, dataset, flipped, original):
    """One line per flipped image: `<index> <original label> <training label> <image>` (index in the list's order)."""
    lines = [f"{index} {label} {dataset.labels[index]} {dataset.describe(index)}\n"
             for index, label in zip(flipped, original)]
    write_atomically(path, "# index original_label training_label image\n" + "".join(lines), "label-noise list")
