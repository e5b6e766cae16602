"""Check an imgs.txt training list image by image, before a long run meets its problems one skip at a time.

Every image is read and decoded as training would: missing, unreadable, undecodable
(truncated JPEGs included) and wrong-size images and repeated paths are reported with their
`imgs.txt:LINE`, class sizes are summarised, and a list without the bad lines can be written.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .image_list import ImageListDataset, read_image_list, write_list
from .images import decode_image, fit_input_size, undecodable

KINDS = ("missing", "unreadable", "undecodable", "wrong size", "duplicate")
MISSING, UNREADABLE, UNDECODABLE, WRONG_SIZE, DUPLICATE = KINDS
CHUNK = 256  # images per thread task


@dataclass
class ListCheck:
    dataset: ImageListDataset  # the list, read at the expected image size
    problems: list  # (index, kind, reason), in line order
    usable: np.ndarray  # per entry: decodes at the expected size and is not a repeat

    def counts(self):
        kinds = [kind for _, kind, _ in self.problems]
        return {kind: kinds.count(kind) for kind in KINDS}

    def class_sizes(self):
        """Usable images per class that has any, in label order (the list's other classes have none).

        Counted over the labels present: a `property` may declare far more classes than memory could count one by
        one."""
        return np.unique(self.dataset.labels[self.usable], return_counts=True)[1]


def image_problem(dataset, index):
    """-> None when image `index` is fit for training, else (kind, reason)."""
    try:
        data = dataset.read_bytes(index)
    except OSError as e:
        return (MISSING if isinstance(e, FileNotFoundError) else UNREADABLE), f"cannot read: {e.strerror}"
    image = decode_image(data)
    if image is None:
        return UNDECODABLE, undecodable(data)
    _, problem = fit_input_size(image, dataset.input_size)
    return None if problem is None else (WRONG_SIZE, problem)


def repeated_paths(paths):
    """{index: index of the first entry naming the same file} for every later entry."""
    first, repeats = {}, {}
    for index, path in enumerate(paths):
        key = os.path.normpath(path)
        if key in first:
            repeats[index] = first[key]
        else:
            first[key] = index
    return repeats


def check_list(root, input_size=(112, 112), num_workers=4):
    """Read every image of `root`/imgs.txt; the expected size is `property`'s when there is one."""
    image_list = read_image_list(root)
    dataset = ImageListDataset(image_list, image_list.image_size or input_size)
    labels, lines = image_list.labels, image_list.line_numbers
    found = {}
    for index, first in repeated_paths(image_list.paths).items():
        other_label = f" (there with label {labels[first]})" if labels[first] != labels[index] else ""
        found[index] = DUPLICATE, f"same file as line {lines[first]}{other_label}"
    pending = [i for i in range(len(dataset)) if i not in found]
    chunks = [pending[i:i + CHUNK] for i in range(0, len(pending), CHUNK)]
    bar = tqdm(total=len(pending), unit="img", dynamic_ncols=True, disable=None)  # None: off when not a TTY
    with ThreadPoolExecutor(max(1, num_workers)) as pool:  # OpenCV decodes without holding the GIL
        for chunk, results in zip(chunks, pool.map(lambda c: [image_problem(dataset, i) for i in c], chunks)):
            found.update((index, result) for index, result in zip(chunk, results) if result)
            bar.update(len(chunk))
    bar.close()
    usable = np.ones(len(dataset), dtype=bool)
    usable[list(found)] = False
    return ListCheck(dataset, [(index, *found[index]) for index in sorted(found)], usable)


def size_histogram(sizes):
    """[(low, high, classes)] over power-of-two bins of class size (1, 2-3, 4-7, ...), classes with images only."""
    bins = np.bincount(np.log2(sizes[sizes > 0]).astype(np.int64))
    return [(2 ** b, 2 ** (b + 1) - 1, int(count)) for b, count in enumerate(bins) if count]


def write_clean_list(check, path):
    """The list without its bad lines and repeated paths."""
    image_list = check.dataset.image_list
    write_list(path, [(image_list.paths[i], image_list.labels[i]) for i in np.flatnonzero(check.usable)])
