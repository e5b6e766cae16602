"""The image-list training set: `imgs.txt` (`<relative path> <label>` per line) + optional `property`.

Everything a list can get wrong is found when it is read (before training starts) and
reported as `file:line: problem`. Images themselves are decoded lazily; one that is
missing or cannot be decoded is reported by `ImageListDataset.load` instead. The data tools
write lists and property files through `write_list` / `write_property`, atomically.
"""
import codecs
import hashlib
import os
from dataclasses import dataclass

import cv2
import numpy as np

LIST_NAME = "imgs.txt"
PROPERTY_NAME = "property"
PART_SUFFIX = ".part"  # a file being written; renamed to its final name once whole


class DataError(ValueError):
    """Bad training data, with the file (and line) at fault in the message."""


@dataclass
class ImageList:
    root: str
    list_file: str
    paths: list  # relative to root, as written in the list
    labels: np.ndarray  # int64, in [0, num_classes)
    line_numbers: np.ndarray  # 1-based line of each sample in list_file
    num_classes: int
    image_size: tuple = None  # (height, width) from `property`, None without one


def text_lines(path):
    """(line number, text) of each line of a UTF-8 text file (imgs.txt, property, pairs.txt, train.idx).

    A leading byte-order mark (some Windows editors write one) is dropped; a line that is not
    UTF-8 is refused naming `path:LINE`, instead of a traceback that names no file.
    """
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, 1):
            if line_number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield line_number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{line_number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                f"{e.start + 1}); save the file as UTF-8") from None


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


def write_atomically(path, data):
    """Write bytes under a temporary name, then rename: `path` never holds a partial file."""
    part = path + PART_SUFFIX
    with open(part, "wb") as f:
        f.write(data)
    os.replace(part, path)


def write_list(path, entries):
    """[(relative path, label)] -> an imgs.txt-format list."""
    write_atomically(path, "".join(f"{p} {label}\n" for p, label in entries).encode("utf-8"))


def write_property(path, num_classes, image_size):
    write_atomically(path, f"{num_classes},{image_size[0]},{image_size[1]}\n".encode())


SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7 carry no length field


def entropy_data_end(data, pos):
    """Index of the marker that ends the compressed data starting at `pos`, or -1 if the data runs out first.

    Inside it, 0xFF is followed by 0x00 (a stuffed byte), an RST marker or more 0xFF fill bytes.
    """
    while (pos := data.find(b"\xff", pos)) != -1 and pos + 1 < len(data):
        following = data[pos + 1]
        if following not in (0x00, 0xFF) and following not in STANDALONE_MARKERS:
            return pos
        pos += 1 if following == 0xFF else 2
    return -1


def jpeg_is_whole(data):
    """Whether a JPEG's segments, read in order as a decoder reads them, reach the end-of-image marker.

    A file cut short never gets there (OpenCV would fill the missing part with grey and only
    warn); bytes after the marker are ignored, as decoders ignore them.
    """
    pos = 2
    while (pos := data.find(b"\xff", pos)) != -1 and pos + 1 < len(data):  # bytes before a marker are skipped
        marker = data[pos + 1]
        if marker == EOI:
            return True
        if marker == 0xFF or marker in STANDALONE_MARKERS:
            pos += 1 if marker == 0xFF else 2
            continue
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        pos = entropy_data_end(data, end) if marker == SOS else end
        if pos == -1:
            return False
    return False


def decode_image(data):
    """Encoded bytes -> H x W x 3 uint8 RGB, or None when they are not a whole image OpenCV decodes (an empty
    file and a header OpenCV refuses included).

    The one decoder of training, the data tools and evaluation: validity is decided by decoding,
    and for a JPEG by its segments reaching the end-of-image marker (see jpeg_is_whole).
    """
    if not data or data[:2] == bytes((0xFF, SOI)) and not jpeg_is_whole(data):
        return None
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # a header OpenCV refuses, e.g. one claiming more than CV_IO_MAX_IMAGE_PIXELS pixels
        return None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def undecodable(data):
    """Why `decode_image` returned None for `data`, as messages say it."""
    return "not a decodable image" + ("" if data else " (an empty file)")


def parse_size(text):
    """'112x96' -> (112, 96): a network input size, as every command line writes it."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--input_size must look like 112x112, got '{text}'") from None
    return height, width


def fit_width(image, width):
    """Cut equal margins off both sides: 112x112 aligned faces -> the 112x96 SphereFace crop."""
    margin = (image.shape[1] - width) // 2
    return image[:, margin:margin + width] if margin > 0 else image


def fit_input_size(image, input_size):
    """Decoded image -> (its crop to the network's H x W, None), or (None, reason) when its size does not fit."""
    height, width = input_size
    image = fit_width(image, width)
    if image.shape[:2] != (height, width):
        return None, f"size {image.shape[0]}x{image.shape[1]}, expected {height}x{width}"
    return image, None


def prepare_image(data, input_size):
    """Encoded bytes -> (H x W x 3 uint8 RGB of the network's input size, None) or (None, reason)."""
    image = decode_image(data)
    if image is None:
        return None, undecodable(data)
    return fit_input_size(image, input_size)


def network_input(data, input_size, flip):
    """Encoded bytes -> (3 x H x W float32 RGB array, None) or (None, reason): what training consumes."""
    image, problem = prepare_image(data, input_size)
    if problem is not None:
        return None, problem
    if flip:
        image = image[:, ::-1]
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32), None


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
