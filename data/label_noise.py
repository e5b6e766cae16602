"""Synthetic label noise, drawn from the seed alone, so a resumed run (and a diagnostic tool) finds the same noise.

- closed set (`--label_noise P`): exactly round(P * N) of the N labelled images are flipped, each to a class
  drawn uniformly from the other C - 1 (never its own); listed in `<outdir>/label_noise.txt`;
- open set (`--label_noise_open P`): exactly round(P * N) images are replaced by images of people outside the
  training classes, each keeping the label of the image it replaces (the data root's `open_set.txt` lists the
  outsiders' images, e.g. as tools/data_tools.py lfw-protocol writes it); listed in
  `<outdir>/label_noise_open.txt`.
With both, the outsiders are put in first and the flips drawn over every image.
"""
import os
from dataclasses import dataclass

import numpy as np

from util.files import write_atomically

from .text import DataError, text_lines

NOISE_FILE, OPEN_NOISE_FILE = "label_noise.txt", "label_noise_open.txt"
OPEN_SET_LIST = "open_set.txt"  # in a data root: images of people outside its classes, one path per line
NOISE_DRAW, OPEN_NOISE_DRAW = 11, 13  # the generator streams of the noise, apart from the data order's and the weights'


@dataclass
class Noise:
    """What a run trains with other than its list says: flipped labels and replaced images, by sample index."""
    flipped: np.ndarray
    original_labels: np.ndarray
    replaced: np.ndarray
    original_images: list


def other_classes(labels, num_classes, rng):
    """One class per label drawn uniformly from the other num_classes - 1 (never the label itself)."""
    labels = np.asarray(labels, np.int64)
    return (labels + 1 + rng.integers(0, num_classes - 1, len(labels))) % num_classes


def chosen_samples(labels, fraction, rng):
    """Sorted indices of exactly round(fraction * N) of the N labelled samples (label < 0: never chosen)."""
    candidates = np.flatnonzero(np.asarray(labels) >= 0)
    return np.sort(rng.permutation(candidates)[:int(round(fraction * len(candidates)))])


def flip_labels(labels, num_classes, fraction, seed):
    """-> (noisy labels, sorted indices of the flipped images)."""
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng([seed, NOISE_DRAW])
    flipped = chosen_samples(labels, fraction, rng)
    if len(flipped) and num_classes < 2:
        raise ValueError(f"--label_noise needs at least 2 classes to flip a label to another, the data has "
                         f"{num_classes}")
    noisy = labels.copy()
    noisy[flipped] = other_classes(labels[flipped], num_classes, rng)
    return noisy, flipped


def read_open_set(root):
    """The outsiders' image paths (relative to `root`) listed in `root`/open_set.txt, each checked to exist."""
    path = os.path.join(root, OPEN_SET_LIST)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file; --label_noise_open draws outsiders' images from it (a data root made "
                        "by tools/data_tools.py lfw-protocol has one)")
    images = []
    for number, line in text_lines(path):
        image = line.strip()
        if image:
            if not os.path.isfile(os.path.join(root, image)):
                raise DataError(f"{path}:{number}: image {os.path.join(root, image)} does not exist")
            images.append(image)
    return images


def replace_with_outsiders(dataset, fraction, seed):
    """Put outsiders' images (the data root's open_set.txt) in place of round(fraction * N) of `dataset`'s images,
    their labels kept.

    -> (sorted replaced indices, the images they held). Only an image list (imgs.txt) can be changed so."""
    image_list = getattr(dataset, "image_list", None)
    if image_list is None:
        raise DataError(f"{dataset.source}: --label_noise_open replaces images of an imgs.txt list, not of a .rec")
    rng = np.random.default_rng([seed, OPEN_NOISE_DRAW])
    replaced = chosen_samples(dataset.labels, fraction, rng)
    pool = read_open_set(image_list.root) if len(replaced) else []
    if len(replaced) > len(pool):
        raise DataError(f"{os.path.join(image_list.root, OPEN_SET_LIST)}: {len(pool)} outsiders' images, fewer than "
                        f"the {len(replaced)} that --label_noise_open {fraction:g} replaces")
    original = [image_list.paths[i] for i in replaced]
    for index, outsider in zip(replaced, rng.permutation(len(pool))[:len(replaced)]):
        image_list.paths[index] = pool[outsider]  # the list the dataset's `load` reads
    return replaced, original


def apply_noise(dataset, closed, open_set, seed):
    """The run's noise (fractions `closed` and `open_set` of its images) put into `dataset` in place -> Noise."""
    replaced, original_images = replace_with_outsiders(dataset, open_set, seed) if open_set else (np.zeros(0, int), [])
    flipped = np.zeros(0, int)
    if closed:
        try:
            noisy, flipped = flip_labels(dataset.labels, dataset.num_classes, closed, seed)
        except ValueError as e:
            raise DataError(f"{dataset.source}: {e}") from None
    original_labels = dataset.labels[flipped].copy()
    if closed:
        dataset.labels[:] = noisy  # the array the dataset's `load` reads
    return Noise(flipped, original_labels, replaced, original_images)


def write_noise_lists(outdir, dataset, noise):
    """The flipped images to `<outdir>/label_noise.txt`, the replaced ones to `<outdir>/label_noise_open.txt`
    (indices in the list's order) -> the paths written."""
    written = []
    if len(noise.flipped):
        lines = [f"{index} {label} {dataset.labels[index]} {dataset.describe(index)}\n"
                 for index, label in zip(noise.flipped, noise.original_labels)]
        written.append(os.path.join(outdir, NOISE_FILE))
        write_atomically(written[-1], "# index original_label training_label image\n" + "".join(lines),
                         "label-noise list")
    if len(noise.replaced):
        lines = [f"{index} {dataset.labels[index]} {dataset.image_list.paths[index]} {original}\n"
                 for index, original in zip(noise.replaced, noise.original_images)]
        written.append(os.path.join(outdir, OPEN_NOISE_FILE))
        write_atomically(written[-1], "# index label image_trained_with image_listed\n" + "".join(lines),
                         "open-set noise list")
    return written
