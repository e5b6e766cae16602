"""InsightFace RecordIO training sets (`train.rec` + `train.idx`), read without mxnet.

`train.idx` holds `key<TAB>offset` lines. `train.rec` holds records, each
[magic 0xced7230a][uint32: top 3 bits a continuation flag, low 29 bits a length][payload
padded to 4 bytes]; mxnet splits a payload wherever the magic word sits at a 4-byte
boundary inside it, and the reader joins the parts with the magic word again. A payload is
the header `<IfQQ` (flag, label, id, id2), then `flag` float32 labels when flag > 0 (the
class label is the first), then the encoded image.

In the InsightFace data zoo files, record 0 is an identity-range header (flag > 0, labels
(id_start, id_end), no image): images are records 1..id_start-1 and the records after them
describe identities. Without that header every record is an image.
"""
import math
import os
import struct

import numpy as np

from .image_list import PROPERTY_NAME, read_property, samples_fingerprint
from .images import network_input
from .text import DataError, text_lines

REC_NAME, IDX_NAME = "train.rec", "train.idx"
MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
FRAME = struct.Struct("<II")  # magic, continuation flag << 29 | length
LENGTH_MASK = (1 << 29) - 1
WHOLE, FIRST, MIDDLE, LAST = range(4)  # continuation flags
HEADER = struct.Struct("<IfQQ")
LABEL_PREFIX = FRAME.size + HEADER.size + 4  # frame, header and the first float label


class RecordError(ValueError):
    """One record cannot be read; the message is the reason, the caller names the record."""


def read_idx(path):
    """`key<TAB>offset` lines -> (keys int64, offsets uint64) arrays sorted by key.

    An offset is any 64-bit unsigned value, as mxnet writes it; one past the end of train.rec
    is a bad record, reported when read. (Take elements out with int() or tolist() before
    arithmetic: under numpy 1.x a uint64 plus a Python int is a float.)
    """
    keys, offsets = [], []
    for line_number, line in text_lines(path):
        fields = line.split()
        if not fields:
            continue
        try:
            key, offset = (int(v) for v in fields)
            if not (0 <= key < 2 ** 63 and 0 <= offset < 2 ** 64):
                raise ValueError
        except ValueError:
            raise DataError(f"{path}:{line_number}: expected '<key><TAB><offset>' (two non-negative 64-bit "
                            f"integers), got '{line.strip()}'") from None
        keys.append(key)
        offsets.append(offset)
    if not keys:
        raise DataError(f"{path}: the index holds no records")
    keys, offsets = np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    keys, offsets = keys[order], offsets[order]
    repeated = np.flatnonzero(keys[1:] == keys[:-1])
    if repeated.size:
        raise DataError(f"{path}: key {keys[repeated[0]]} is listed more than once ({repeated.size} repeated keys)")
    return keys, offsets


def record_name(rec_path, key, offset):
    return f"{rec_path} record {key} (offset {offset})"


def read_record(fd, offset):
    """The payload of the record at `offset`, its parts joined; RecordError when it is not a whole record.

    os.pread has no shared file position, so threads may read one descriptor at once.
    """
    size = os.fstat(fd).st_size
    if offset >= size:  # an index offset no pread can take (2^63 and more) included
        raise RecordError(f"the offset is beyond the last byte of the file ({size} bytes)")
    parts, position = [], offset
    while True:
        frame = os.pread(fd, FRAME.size, position)
        if len(frame) < FRAME.size:
            raise RecordError(f"the file ends at byte {position + len(frame)}, inside the record")
        magic, word = FRAME.unpack(frame)
        if magic != MAGIC:
            raise RecordError(f"bad magic 0x{magic:08x} at byte {position} (expected 0x{MAGIC:08x})")
        flag, length = word >> 29, word & LENGTH_MASK
        if flag not in ((WHOLE, FIRST) if not parts else (MIDDLE, LAST)):
            raise RecordError(f"continuation flag {flag} at byte {position} out of sequence")
        available = size - position - FRAME.size  # before reading: a corrupt length can be huge
        if available < length:
            raise RecordError(f"truncated: {available} of {length} payload bytes before the end of the file")
        parts.append(os.pread(fd, length, position + FRAME.size))
        if flag in (WHOLE, LAST):
            return MAGIC_BYTES.join(parts)
        position += FRAME.size + (length + 3) // 4 * 4


def class_label(value):
    """A float label -> int; RecordError unless it is a non-negative integer."""
    if not (math.isfinite(value) and value >= 0 and value.is_integer()):
        raise RecordError(f"label {value} is not a non-negative integer")
    return int(value)


def unpack_header(payload):
    """-> (flag, label) of a payload's header."""
    if len(payload) < HEADER.size:
        raise RecordError(f"{len(payload)}-byte payload, shorter than the {HEADER.size}-byte header")
    return HEADER.unpack_from(payload)[:2]


def record_label(payload):
    """Class label of a record from its payload, or only its first 28 bytes: the first label."""
    flag, label = unpack_header(payload)
    if flag > 0:
        if len(payload) < HEADER.size + 4:
            raise RecordError(f"the header announces {flag} labels, the payload holds none")
        label = struct.unpack_from("<f", payload, HEADER.size)[0]
    return class_label(label)


def unpack_record(payload):
    """Record payload -> (float labels, encoded image bytes): mxnet's recordio.unpack."""
    flag, label = unpack_header(payload)
    start = HEADER.size + 4 * flag
    if start > len(payload):
        raise RecordError(f"the header announces {flag} labels, the {len(payload)}-byte payload has no room for them")
    labels = struct.unpack_from(f"<{flag}f", payload, HEADER.size) if flag else (label,)
    return labels, payload[start:]


def read_image_record(fd, offset):
    """-> (class label, encoded image bytes) of an image record; RecordError otherwise."""
    payload = read_record(fd, offset)
    _, image = unpack_record(payload)
    if not image:
        raise RecordError("the record holds no image bytes")
    return record_label(payload), image


def read_label(fd, offset):
    """The class label of the record at `offset`, reading only its first bytes when they suffice.

    Reading every label of a large set (MS1MV2: 5.8M records, 3.8 GB) this way touches one
    small block per record instead of every image.
    """
    prefix = os.pread(fd, LABEL_PREFIX, offset) if offset < os.fstat(fd).st_size else b""
    if len(prefix) == LABEL_PREFIX:
        magic, word = FRAME.unpack_from(prefix)
        if magic == MAGIC and word & LENGTH_MASK >= LABEL_PREFIX - FRAME.size:
            return record_label(prefix[FRAME.size:])
    return record_label(read_record(fd, offset))  # short, split or bad records: the full reader says why


def image_records(rec_path, idx_path):
    """(keys, offsets) of the image records, by key: 1..id_start-1 after an identity-range header, else all.

    The header is told apart from an image record with several labels by holding no image.
    """
    keys, offsets = read_idx(idx_path)
    if keys[0] != 0:
        return keys, offsets
    fd = os.open(rec_path, os.O_RDONLY)
    try:
        labels, image = unpack_record(read_record(fd, int(offsets[0])))
    except RecordError as e:
        raise DataError(f"{record_name(rec_path, 0, offsets[0])}: {e} (cannot tell whether it is the "
                        f"identity-range header)") from None
    finally:
        os.close(fd)
    if len(labels) < 2 or image:
        return keys, offsets
    if not (labels[0] >= 1 and labels[0].is_integer()):
        raise DataError(f"{record_name(rec_path, 0, offsets[0])}: identity-range header starts at {labels[0]}")
    id_start = int(labels[0])
    if id_start == 1:
        raise DataError(f"{record_name(rec_path, 0, offsets[0])}: the identity-range header lists no images")
    chosen = (keys >= 1) & (keys < id_start)
    if chosen.sum() != id_start - 1:
        raise DataError(f"{idx_path}: the header record promises images 1..{id_start - 1}, the index lists "
                        f"{chosen.sum()} of them")
    return keys[chosen], offsets[chosen]


class RecDataset:
    """Serves the images of `root/train.rec` like `ImageListDataset` serves an imgs.txt list.

    Every record's label is read at start-up (the class count, and a check against
    `property` when the folder has one). A record that cannot be read is kept with label
    -1 and reported by `load`, so the loader skips and counts it like a missing image.
    """

    def __init__(self, root, input_size=(112, 112)):
        self.source = os.path.join(root, REC_NAME)
        self.input_size = tuple(input_size)
        self.keys, self.offsets = image_records(self.source, os.path.join(root, IDX_NAME))
        self.fd = os.open(self.source, os.O_RDONLY)
        self.problems = {}  # index -> why its record cannot be read
        self.labels = np.full(len(self.keys), -1, dtype=np.int64)
        for index, offset in enumerate(self.offsets.tolist()):
            try:
                self.labels[index] = read_label(self.fd, offset)
            except RecordError as e:
                self.problems[index] = str(e)
        if len(self.problems) == len(self.keys):
            raise DataError(f"{self.source}: no readable record ({self.describe(0)}: {self.problems[0]})")
        self.num_classes = self.class_count(os.path.join(root, PROPERTY_NAME))

    def class_count(self, property_file):
        """From `property` when there is one (every label must be below it), else the largest label + 1."""
        if not os.path.isfile(property_file):
            return int(self.labels.max()) + 1
        num_classes, _ = read_property(property_file)
        bad = np.flatnonzero(self.labels >= num_classes)
        if bad.size:
            i = bad[0]
            raise DataError(f"{self.describe(i)}: label {self.labels[i]} is outside [0, {num_classes}) "
                            f"set by {property_file} ({bad.size} such records)")
        return num_classes

    def __len__(self):
        return len(self.keys)

    def fingerprint(self):
        return samples_fingerprint(self.keys.astype("<i8").tobytes(), self.labels)

    def describe(self, index):
        """`train.rec record KEY (offset OFFSET)` for messages about one sample."""
        return record_name(self.source, self.keys[index], self.offsets[index])

    def load(self, index, flip=False):
        """-> (3 x H x W float32 image, label, None) or (None, label, reason)."""
        label = int(self.labels[index])
        if index in self.problems:
            return None, label, self.problems[index]
        try:
            _, data = read_image_record(self.fd, int(self.offsets[index]))
        except RecordError as e:
            return None, label, str(e)
        image, problem = network_input(data, self.input_size, flip)
        return image, label, problem
