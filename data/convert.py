"""Conversions between data formats, none needing mxnet.

- `rec_to_images`: InsightFace train.rec/.idx -> `<label>/<key>.jpg` + imgs.txt + property, each
  image's bytes written as stored; parallel over processes, resumable, every record accounted for.
- `folder_to_list`: a folder per identity -> imgs.txt + property + label_map.txt.
- `pairs_folder_to_bin` / `bin_to_pairs_folder`: LFW-style pairs folders <-> InsightFace `.bin` files.
"""
import multiprocessing
import os
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
from tqdm import tqdm

from util.files import make_outdir, remove_leftovers, write_atomically

from .image_list import LIST_NAME, PROPERTY_NAME, read_property, write_list, write_property
from .images import decode_image
from .rec import IDX_NAME, REC_NAME, RecordError, image_records, read_image_record, record_name
from .text import DataError
from .verification_sets import IMAGES_DIR, PAIRS_NAME, load_bin, load_pairs_folder

CONVERTED, EXISTING = "converted", "existing"
BAD_RECORDS_NAME = "bad_records.txt"
LABEL_MAP_NAME = "label_map.txt"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
CHUNK = 1000  # records per task: large enough to amortise a task, small enough for a smooth progress bar


@dataclass
class RecConversion:
    images: int  # image records in the .rec
    converted: int  # written by this run
    existing: int  # already on disk, whole, from an earlier run
    bad: list  # (key, offset, reason) of the records that could not be converted
    num_classes: int
    image_size: tuple
    seconds: float


def file_size(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return -1


def image_path(label, key):
    return os.path.join(str(label), f"{key}.jpg")


def convert_records(rec_path, out, records):
    """Write the images of `records` [(key, offset)] under `out` -> [(key, label, size, outcome)].

    `outcome` is CONVERTED, EXISTING (a file of the image's exact size is already there) or
    the reason the record is bad (label and size None). Runs in a worker process.
    """
    results, folders = [], set()
    fd = os.open(rec_path, os.O_RDONLY)
    try:
        for key, offset in records:
            try:
                label, image = read_image_record(fd, offset)
            except RecordError as e:
                results.append((key, None, None, str(e)))
                continue
            path = os.path.join(out, image_path(label, key))
            if file_size(path) == len(image):
                results.append((key, label, len(image), EXISTING))
                continue
            if label not in folders:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                folders.add(label)
            write_atomically(path, image)
            results.append((key, label, len(image), CONVERTED))
    finally:
        os.close(fd)
    return results


def run_chunks(task, chunks, processes, total):
    """task(chunk) over `chunks` in order, on `processes` processes (1: in this one), with a progress bar."""
    # fork: a worker needs only the record reader, and starts at once even when the caller
    # imported jittor (spawn would import the calling script again in every worker)
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) if processes > 1 else None
    bar = tqdm(total=total, unit="img", dynamic_ncols=True, disable=None)  # None: off when not a TTY
    results = []
    try:
        for result in (pool.map if pool else map)(task, chunks):
            results.extend(result)
            bar.update(len(result))
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    return results


def first_image_size(paths):
    """(height, width) of the first decodable image among `paths`."""
    for path in paths:
        with open(path, "rb") as f:
            image = decode_image(f.read())
        if image is not None:
            return image.shape[:2]
    raise DataError(f"none of the {len(paths)} images decodes (first: {paths[0]})")


def verify_output(out, written):
    """Every converted image on disk at its size, and no other file in the label folders."""
    for key, label, size in written:
        path = os.path.join(out, image_path(label, key))
        if file_size(path) != size:
            raise DataError(f"{path}: {file_size(path)} bytes on disk after conversion, the record holds {size}")
    folders = {os.path.join(out, str(label)) for _, label, _ in written}
    on_disk = sum(len(os.listdir(folder)) for folder in folders)
    if on_disk != len(written):
        raise DataError(f"{out}: {on_disk} files in the label folders for {len(written)} converted images "
                        f"(files left from another conversion?)")


def output_class_count(rec_root, labels):
    """The .rec folder's `property` count when it has one (every label below it), else the largest label + 1."""
    property_file = os.path.join(rec_root, PROPERTY_NAME)
    if not os.path.isfile(property_file):
        return max(labels) + 1
    num_classes, _ = read_property(property_file)
    if max(labels) >= num_classes:
        raise DataError(f"{property_file}: {num_classes} classes, but the records hold label {max(labels)}")
    return num_classes


def rec_to_images(rec_root, out, processes=os.cpu_count()):
    """`rec_root`/train.rec + train.idx -> `out`/<label>/<key>.jpg, imgs.txt (by key), property.

    Images are written whole or not at all (util.files), a file already holding an image's exact
    size is kept and the temporaries of a killed run are removed, so a re-run after an
    interruption finishes the job. The list
    and property are written last, once the files on disk match the records converted.
    Unreadable records are skipped and returned (and listed in `out`/bad_records.txt).
    """
    start = time.perf_counter()
    rec_path = os.path.join(rec_root, REC_NAME)
    keys, offsets = image_records(rec_path, os.path.join(rec_root, IDX_NAME))
    make_outdir(out, "--out")
    remove_leftovers(out, "*/*")
    records = list(zip(keys.tolist(), offsets.tolist()))
    chunks = [records[i:i + CHUNK] for i in range(0, len(records), CHUNK)]
    results = run_chunks(partial(convert_records, rec_path, out), chunks, processes, len(records))
    offset_of = dict(records)
    bad = [(key, offset_of[key], outcome) for key, _, _, outcome in results if outcome not in (CONVERTED, EXISTING)]
    written = [(key, label, size) for key, label, size, outcome in results if outcome in (CONVERTED, EXISTING)]
    if not written:
        raise DataError(f"{rec_path}: no record could be converted ({record_name(rec_path, *bad[0][:2])}: {bad[0][2]})")
    verify_output(out, written)

    bad_file = os.path.join(out, BAD_RECORDS_NAME)
    if bad:
        write_atomically(bad_file, "".join(f"{record_name(rec_path, key, offset)}: {reason}\n"
                                           for key, offset, reason in bad).encode())
    elif os.path.exists(bad_file):
        os.remove(bad_file)  # from an earlier run over a damaged copy
    labels = [label for _, label, _ in written]
    num_classes = output_class_count(rec_root, labels)
    image_size = first_image_size([os.path.join(out, image_path(label, key)) for key, label, _ in written])
    write_list(os.path.join(out, LIST_NAME), [(image_path(label, key), label) for key, label, _ in written])
    write_property(os.path.join(out, PROPERTY_NAME), num_classes, image_size)
    converted = sum(outcome == CONVERTED for *_, outcome in results)
    return RecConversion(len(records), converted, len(written) - converted, bad, num_classes, image_size,
                         time.perf_counter() - start)


def is_image_file(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def folder_to_list(root):
    """`root`/<identity>/<image> -> `root`/imgs.txt, property and label_map.txt (`<label> <identity>`).

    Identities are labelled in name order; hidden entries and identity folders without images
    are left out. -> (entries [(path, label)], identity names, empty identity folders).
    """
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    entries, names, empty = [], [], []
    for name in folders:
        files = sorted(e.name for e in os.scandir(os.path.join(root, name))
                       if e.is_file() and not e.name.startswith(".") and is_image_file(e.name))
        if not files:
            empty.append(name)
            continue
        entries.extend((f"{name}/{file}", len(names)) for file in files)
        names.append(name)
    if not entries:
        raise DataError(f"{root}: no identity folder holds images ({', '.join(IMAGE_EXTENSIONS)})")
    image_size = first_image_size([os.path.join(root, path) for path, _ in entries])
    write_list(os.path.join(root, LIST_NAME), entries)
    write_property(os.path.join(root, PROPERTY_NAME), len(names), image_size)
    write_atomically(os.path.join(root, LABEL_MAP_NAME),
                     "".join(f"{label} {name}\n" for label, name in enumerate(names)).encode("utf-8"))
    return entries, names, empty


def pairs_folder_to_bin(folder, out):
    """A pairs.txt + images/ folder -> an InsightFace .bin: each pair's two images as their file bytes."""
    pair_set = load_pairs_folder(folder)
    bins = [pair_set.encoded[i] for i in pair_set.pairs.ravel()]
    write_atomically(out, pickle.dumps((bins, pair_set.issame.tolist()), protocol=4))
    return pair_set


def pairs_header(issame):
    """LFW's `folds<TAB>per_fold` first line when the pairs fit one (each fold half same), else None."""
    for folds in (10, 1):
        if len(issame) % (2 * folds) == 0 and all(2 * fold.sum() == len(fold) for fold in np.split(issame, folds)):
            return f"{folds}\t{len(issame) // (2 * folds)}"
    return None


def bin_to_pairs_folder(bin_path, out):
    """An InsightFace .bin -> `out`/pairs.txt + `out`/images/ in the LFW layout, image bytes as stored.

    Each pair gets identities of its own: pair k same -> `pairKKKKK` images 1 and 2,
    different -> `pairKKKKKa` 1 and `pairKKKKKb` 1.
    """
    pair_set = load_bin(bin_path)
    if not len(pair_set.issame):
        raise DataError(f"{bin_path}: holds no pairs")
    lines = []
    for k, ((first, second), same) in enumerate(zip(pair_set.pairs.tolist(), pair_set.issame)):
        name = f"pair{k:05d}"
        slots = [(name, 1, first), (name, 2, second)] if same else [(name + "a", 1, first), (name + "b", 1, second)]
        for person, number, index in slots:
            folder = os.path.join(out, IMAGES_DIR, person)
            os.makedirs(folder, exist_ok=True)
            write_atomically(os.path.join(folder, f"{person}_{number:04d}.jpg"), pair_set.encoded[index])
        lines.append(f"{name}\t1\t2" if same else f"{name}a\t1\t{name}b\t1")
    header = pairs_header(pair_set.issame)
    text = "\n".join(([header] if header else []) + lines) + "\n"
    write_atomically(os.path.join(out, PAIRS_NAME), text.encode())
    return pair_set
