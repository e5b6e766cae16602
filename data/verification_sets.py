"""Verification pair sets: InsightFace `.bin` files and LFW-style `pairs.txt` + image folders.

Both become a `PairSet`: the distinct encoded images (a pair set names many images
twice; each is embedded once), the pairs as indices into them, and the labels.
"""
import io
import os
import pickle
from dataclasses import dataclass

import numpy as np

from util.restricted_pickle import LOAD_ERRORS, RestrictedUnpickler

from .images import prepare_image
from .text import DataError, text_lines

PAIRS_NAME = "pairs.txt"
PROTOCOL_FOLDS = 10  # the standard protocol's cross-validation folds (evaluation/protocol.py)
IMAGES_DIR = "images"


@dataclass
class PairSet:
    name: str
    encoded: list  # distinct encoded images (bytes)
    sources: list  # where each image came from, for messages
    pairs: np.ndarray  # P x 2 indices into `encoded`
    issame: np.ndarray  # P bools

    def decode(self, index, input_size):
        """Image `index` as H x W x 3 uint8 RGB of the network's input size."""
        image, problem = prepare_image(self.encoded[index], input_size)
        if problem is not None:
            raise DataError(f"{self.sources[index]}: {problem}")
        return image


def check_pair_kinds(issame, path):
    """A DataError naming `path` unless the pair labels `issame` hold same and different pairs: with one kind
    only there is no ROC, so no TAR@FAR, AUC or EER (they would read 1.0 or nan)."""
    same = int(np.count_nonzero(issame))
    different = len(issame) - same
    if not same or not different:
        raise DataError(f"{path}: {same} same and {different} different pairs; verification is scored on pairs of "
                        "both kinds")


class _Distinct:
    """Collects distinct images by key, remembering the first source of each."""

    def __init__(self):
        self.index, self.encoded, self.sources = {}, [], []

    def add(self, key, read, source):
        if key not in self.index:
            self.index[key] = len(self.encoded)
            self.encoded.append(read())
            self.sources.append(source)
        return self.index[key]


def parse_pairs_txt(path):
    """LFW View 2 `pairs.txt` -> [(line, name1, n1, name2, n2, same)], checked against its header."""
    lines = [(n, line.split()) for n, line in text_lines(path) if line.strip()]
    if not lines:
        raise DataError(f"{path}: empty pairs file")
    expected = None
    first_fields = lines[0][1]
    if len(first_fields) == 2 and all(v.isdigit() for v in first_fields):
        folds, per_fold = (int(v) for v in first_fields)
        expected = 2 * folds * per_fold
        lines = lines[1:]
    entries = []
    for n, fields in lines:
        try:
            if len(fields) == 3:
                entries.append((n, fields[0], int(fields[1]), fields[0], int(fields[2]), True))
            elif len(fields) == 4:
                entries.append((n, fields[0], int(fields[1]), fields[2], int(fields[3]), False))
            else:
                raise ValueError
        except ValueError:
            raise DataError(f"{path}:{n}: expected 'name i j' or 'name1 i name2 j', got '{' '.join(fields)}'") from None
    if expected is not None and len(entries) != expected:
        raise DataError(f"{path}:1: header promises {expected} pairs, the file has {len(entries)}")
    return entries


def load_pairs_folder(folder, name=None):
    """`folder/pairs.txt` + `folder/images/<Name>/<Name>_<NNNN>.jpg` (the LFW layout)."""
    pairs_file = os.path.join(folder, PAIRS_NAME)
    distinct = _Distinct()
    pairs, issame = [], []
    for line, name1, n1, name2, n2, same in parse_pairs_txt(pairs_file):
        pair = []
        for person, number in ((name1, n1), (name2, n2)):
            path = os.path.join(folder, IMAGES_DIR, person, f"{person}_{number:04d}.jpg")
            if not os.path.isfile(path):
                raise DataError(f"{pairs_file}:{line}: image {path} does not exist")
            pair.append(distinct.add(path, lambda p=path: open(p, "rb").read(), path))
        pairs.append(pair)
        issame.append(same)
    return PairSet(name or os.path.basename(os.path.normpath(folder)), distinct.encoded, distinct.sources,
                   np.array(pairs, dtype=np.int64), np.array(issame, dtype=bool))


def latin1_bytes(text, encoding):
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"it encodes bytes as '{encoding}', not 'latin1'")
    return text.encode("latin1")


# A verification .bin holds tuples, lists, bytes and bools; the one global it may name is the one
# Python 3 writes for bytes in pickle protocols 0-2 (`_codecs.encode(text, 'latin1')`).
BIN_GLOBALS = {("_codecs", "encode"): latin1_bytes}


def read_bin_pickle(path):
    """(bins, issame_list) of an InsightFace .bin, checked to be a list of bytes and a list of bools.

    encoding='bytes' reads the byte strings of Python-2 pickles as bytes (a Python 3 pickle has none).
    """
    try:
        with open(path, "rb") as f:
            stream = io.BytesIO(f.read())
        content = RestrictedUnpickler(stream, BIN_GLOBALS, "a verification .bin", encoding="bytes").load()
    except LOAD_ERRORS as e:
        raise DataError(f"{path}: not a readable verification .bin ({e})") from None
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise DataError(f"{path}: expected a pickled (bins, issame_list) pair")
    bins, issame_list = content
    if not (isinstance(bins, list) and all(isinstance(b, bytes) for b in bins)):
        raise DataError(f"{path}: bins must be a list of encoded images (bytes)")
    if not (isinstance(issame_list, list) and all(isinstance(s, bool) for s in issame_list)):
        raise DataError(f"{path}: issame_list must be a list of booleans")
    return bins, issame_list


def load_bin(path, name=None):
    """InsightFace verification .bin: pair i is images 2i and 2i+1."""
    bins, issame_list = read_bin_pickle(path)
    if len(bins) != 2 * len(issame_list):
        raise DataError(f"{path}: {len(bins)} images for {len(issame_list)} pairs (need twice as many)")
    distinct = _Distinct()
    indices = [distinct.add(data, lambda d=data: d, f"{path} image {i}") for i, data in enumerate(bins)]
    name = name or os.path.splitext(os.path.basename(path))[0]
    return PairSet(name, distinct.encoded, distinct.sources,
                   np.array(indices, dtype=np.int64).reshape(-1, 2), np.array(issame_list, dtype=bool))


def load_target(target, eval_root):
    """A target to score, by path (a .bin or a pairs folder) or by name under `eval_root`, with pairs of both kinds."""
    name = os.path.splitext(os.path.basename(os.path.normpath(target)))[0]
    candidates = [target, os.path.join(eval_root, target + ".bin"), os.path.join(eval_root, target)]
    for path in candidates:
        if os.path.isfile(path) and path.endswith(".bin"):
            pair_set, source = load_bin(path, name), path
        elif os.path.isfile(os.path.join(path, PAIRS_NAME)):
            pair_set, source = load_pairs_folder(path, name), os.path.join(path, PAIRS_NAME)
        else:
            continue
        check_pair_kinds(pair_set.issame, source)
        if len(pair_set.issame) < PROTOCOL_FOLDS:
            raise DataError(f"{source}: {len(pair_set.issame)} pairs; the verification protocol scores "
                            f"{PROTOCOL_FOLDS} folds of them, so it needs at least {PROTOCOL_FOLDS}")
        return pair_set
    raise DataError(f"verification target '{target}' not found: looked for "
                    + ", ".join([candidates[1], os.path.join(candidates[2], PAIRS_NAME)]))
