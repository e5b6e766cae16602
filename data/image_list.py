"""The image-list training set: `imgs.txt` (`<relative path> <label>` per line) + optional `property`.

Everything a list can get wrong is found when it is read (before training starts) and
reported as `file:line: problem`. Images themselves are decoded lazily; one that is
missing or cannot be decoded is reported by `ImageListDataset.load` instead. The data tools
write lists and property files through `write_list` / `write_property`, atomically.
"""
import hashlib
import os
from dataclasses import dataclass

import numpy as np

from util.files import write_atomically

from .images import network_input
from .text import DataError, text_lines

LIST_NAME = "imgs.txt"
PROPERTY_NAME = "property"


@dataclass
class ImageList:
    root: str
    list_file: str
    paths: list  # relative to root, as written in the list
    labels: np.ndarray  # int64, in [0, num_classes)
    line_numbers: np.ndarray  # 1-based line of each sample in list_file
    num_classes: int
    image_size: tuple = None  # (height, width) from `property`, None without one


def read_property(path):
    """`NUM_CLASS,H,W` -> (num_classes, (H, W))."""
    text = "".join(line for _, line in text_lines(path)).strip()
    fields = text.split(",")
    try:
        num_classes, height, width = (int(v) for v in fields)
    except ValueError:
        raise DataError(f"{path}:1: expected 'NUM_CLASS,HEIGHT,WIDTH', got '{text}'") from None
    if num_classes <= 0:
        raise DataError(f"{path}:1: class count must be positive, got {num_classes}")
    if height <= 0 or width <= 0:
        raise DataError(f"{path}:1: image size must be positive, got {height}x{width}")
    return num_classes, (height, width)


LINE_FORMAT = "'<relative path> <label>' (the label is the last field; the path may contain spaces)"


def parse_list_line(line, list_file, line_number):
    """`path label` -> (path, label): the label is the last field, the path all before it."""
    fields = line.rsplit(maxsplit=1)
    if len(fields) != 2:
        raise DataError(f"{list_file}:{line_number}: expected {LINE_FORMAT}, got '{line}'")
    path, label_text = fields
    try:
        label = int(label_text)
    except ValueError:
        raise DataError(f"{list_file}:{line_number}: label '{label_text}' is not an integer") from None
    if label < 0:
        raise DataError(f"{list_file}:{line_number}: label {label} is negative")
    return path, label


def check_spaced_path(root, path, where, line):
    """A path with spaces that does not exist, though its first word names a file, means a field too many."""
    first = path.split(maxsplit=1)[0]
    if first != path and os.path.isfile(os.path.join(root, first)) and not os.path.exists(os.path.join(root, path)):
        raise DataError(f"{where}: expected {LINE_FORMAT}, got '{line}': read so, the path is '{path}', which does "
                        f"not exist, while '{first}' does: a field too many?")


def read_image_list(root, list_name=LIST_NAME):
    list_file = os.path.join(root, list_name)
    if not os.path.isfile(list_file):
        raise DataError(f"{list_file}: no such file (the data root must hold '{list_name}')")
    paths, labels, line_numbers = [], [], []
    for line_number, line in text_lines(list_file):
        line = line.strip()
        if not line:
            continue
        path, label = parse_list_line(line, list_file, line_number)
        check_spaced_path(root, path, f"{list_file}:{line_number}", line)
        paths.append(path)
        labels.append(label)
        line_numbers.append(line_number)
    if not paths:
        raise DataError(f"{list_file}: the list holds no images")
    labels = np.asarray(labels, dtype=np.int64)
    line_numbers = np.asarray(line_numbers, dtype=np.int64)

    property_file = os.path.join(root, PROPERTY_NAME)
    if os.path.isfile(property_file):
        num_classes, image_size = read_property(property_file)
        bad = np.flatnonzero(labels >= num_classes)
        if bad.size:
            i = bad[0]
            raise DataError(f"{list_file}:{line_numbers[i]}: label {labels[i]} is outside [0, {num_classes}) "
                            f"set by {property_file} ({bad.size} such lines)")
    else:
        num_classes, image_size = int(labels.max()) + 1, None
    return ImageList(root, list_file, paths, labels, line_numbers, num_classes, image_size)


def write_list(path, entries):
    """[(relative path, label)] -> an imgs.txt-format list."""
    write_atomically(path, "".join(f"{p} {label}\n" for p, label in entries).encode("utf-8"))


def write_property(path, num_classes, image_size):
    write_atomically(path, f"{num_classes},{image_size[0]},{image_size[1]}\n".encode())


def samples_fingerprint(names, labels):
    """A short digest of a training set's sample names (bytes) and labels: equal for the same data in another place."""
    return hashlib.sha256(names + np.asarray(labels, "<i8").tobytes()).hexdigest()[:16]


class ImageListDataset:
    """Decodes one sample of an `ImageList` to a 3 x H x W float32 RGB array (0..255).

    `load` returns None, with the reason, for an image that is missing, undecodable or of
    the wrong size, so the loader can skip and count it (or stop, if asked to).
    """

    def __init__(self, image_list, input_size=(112, 112)):
        self.image_list = image_list
        self.source = image_list.list_file
        self.input_size = tuple(input_size)
        self.num_classes = image_list.num_classes
        self.labels = image_list.labels

    def __len__(self):
        return len(self.image_list.paths)

    def describe(self, index):
        """`imgs.txt:LINE (path)` for messages about one sample."""
        il = self.image_list
        return f"{il.list_file}:{il.line_numbers[index]} ({il.paths[index]})"

    def fingerprint(self):
        return samples_fingerprint("\n".join(self.image_list.paths).encode("utf-8"), self.labels)

    def read_bytes(self, index):
        with open(os.path.join(self.image_list.root, self.image_list.paths[index]), "rb") as f:
            return f.read()

    def load(self, index, flip=False):
        """-> (3 x H x W float32 image, label, None) or (None, label, reason)."""
        label = int(self.image_list.labels[index])
        try:
            data = self.read_bytes(index)
        except OSError as e:
            return None, label, f"cannot read: {e.strerror}"
        image, problem = network_input(data, self.input_size, flip)
        return image, label, problem
