"""An identity-disjoint training and test protocol cut from LFW, for experiments that need both from real faces.

LFW's View 2 protocol (pairs.txt: 10 folds of same and different pairs) is disjoint by person across folds.
The protocol holds out the pairs of the test folds as a verification target and trains on every other
person with at least `min_images` images. The people left out of both (too few images, in no test fold)
form the open-set pool that `--label_noise_open` draws outsiders from. Written into one data root:

    imgs.txt, property, label_map.txt   the training set (paths train/<Name>/<file>), labels by name
    open_set.txt                        the pool: one path open_set/<Name>/<file> per line
    lfw_test/pairs.txt, lfw_test/images the test folds' pairs (a verification target named lfw_test)
    protocol.json                       how it was made: source, folds, minimum, counts

Image files are copied byte for byte.
"""
import hashlib
import os
import shutil
from dataclasses import dataclass

from util.files import make_outdir, write_atomically, write_json

from .convert import LABEL_MAP_NAME, is_image_file
from .image_list import LIST_NAME, PROPERTY_NAME, write_list, write_property
from .images import decode_image
from .label_noise import OPEN_SET_LIST
from .text import DataError
from .verification_sets import IMAGES_DIR, PAIRS_NAME, parse_pairs_txt

FOLDS = 10
TEST_TARGET = "lfw_test"
TRAIN_DIR, OPEN_SET_DIR = "train", "open_set"
RECORD_NAME = "protocol.json"


@dataclass
class Protocol:
    train: dict  # {person: [image file names]}
    open_set: dict  # {person: [image file names]}
    test_entries: list  # the test folds' pairs, as parse_pairs_txt reads them
    per_fold: int  # same (and different) pairs per fold

    def test_images(self):
        """{person: sorted image file names} the test pairs use."""
        images = {}
        for _, name1, n1, name2, n2, _ in self.test_entries:
            for name, number in ((name1, n1), (name2, n2)):
                images.setdefault(name, set()).add(f"{name}_{number:04d}.jpg")
        return {name: sorted(files) for name, files in sorted(images.items())}


def person_images(lfw):
    """{person: sorted image file names} of `lfw`/images/<Name>/."""
    folder = os.path.join(lfw, IMAGES_DIR)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such folder (an LFW copy holds images/<Name>/<Name>_NNNN.jpg and pairs.txt)")
    people = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            files = sorted(f.name for f in os.scandir(entry.path) if f.is_file() and is_image_file(f.name))
            if files:
                people[entry.name] = files
    if not people:
        raise DataError(f"{folder}: holds no person's images")
    return people


def fold_lines(pairs_file):
    """The pairs.txt lines of each of its 10 folds, checked against its header `10 N` (N same + N different)."""
    with open(pairs_file, encoding="utf-8", errors="replace") as f:
        header = f.readline().split()
    if len(header) != 2 or not all(v.isdigit() for v in header) or int(header[0]) != FOLDS:
        raise DataError(f"{pairs_file}:1: expected the View 2 header '{FOLDS} N' ({FOLDS} folds of N same and N "
                        f"different pairs), got '{' '.join(header)}'")
    entries = parse_pairs_txt(pairs_file)  # checks every line and the count the header promises
    per_fold = 2 * int(header[1])
    return [entries[k * per_fold:(k + 1) * per_fold] for k in range(FOLDS)], int(header[1])


def cut_protocol(lfw, test_folds, min_images):
    """Who trains, who is held out for testing, and who is left for the open-set pool."""
    pairs_file = os.path.join(lfw, PAIRS_NAME)
    if not os.path.isfile(pairs_file):
        raise DataError(f"{pairs_file}: no such file (an LFW copy holds images/<Name>/<Name>_NNNN.jpg and pairs.txt)")
    folds, per_fold = fold_lines(pairs_file)
    people = person_images(lfw)
    test_entries = [entry for k in test_folds for entry in folds[k - 1]]
    test_people = {name for entry in test_entries for name in (entry[1], entry[3])}
    for line, name1, n1, name2, n2, _ in test_entries:
        for name, number in ((name1, n1), (name2, n2)):
            if f"{name}_{number:04d}.jpg" not in people.get(name, ()):
                raise DataError(f"{pairs_file}:{line}: image {name}/{name}_{number:04d}.jpg is not in "
                                f"{os.path.join(lfw, IMAGES_DIR)}")
    train = {p: files for p, files in people.items() if p not in test_people and len(files) >= min_images}
    open_set = {p: files for p, files in people.items() if p not in test_people and p not in train}
    held_out = {p.casefold() for p in test_people}
    overlap = sorted(p for p in train if p.casefold() in held_out)
    if overlap:  # one person under two spellings would meet their own test pairs in training
        raise DataError(f"{lfw}: {overlap[0]} would be in training and in the test folds (as "
                        f"{next(p for p in test_people if p.casefold() == overlap[0].casefold())})")
    if len(train) < 2:
        raise DataError(f"{lfw}: {len(train)} people outside the test folds have {min_images} or more images; "
                        "training needs 2 at least")
    return Protocol(train, open_set, test_entries, per_fold)


def pair_line(entry):
    _, name1, n1, name2, n2, same = entry
    return f"{name1}\t{n1}\t{n2}" if same else f"{name1}\t{n1}\t{name2}\t{n2}"


def copy_images(lfw, out, folder, people):
    """Copy each person's images to `out`/`folder`/<Name>/ -> their paths relative to `out`."""
    paths = []
    for person, files in people.items():
        os.makedirs(os.path.join(out, folder, person), exist_ok=True)
        for name in files:
            shutil.copyfile(os.path.join(lfw, IMAGES_DIR, person, name), os.path.join(out, folder, person, name))
            paths.append(f"{folder}/{person}/{name}")
    return paths


def first_image_size(lfw, people):
    person, files = next(iter(people.items()))
    path = os.path.join(lfw, IMAGES_DIR, person, files[0])
    with open(path, "rb") as f:
        image = decode_image(f.read())
    if image is None:
        raise DataError(f"{path}: not a decodable image")
    return image.shape[:2]


def write_protocol(lfw, out, test_folds, min_images):
    """Cut the protocol from `lfw` and write its data root `out` (which must be empty or new) -> the record."""
    test_folds = sorted(set(test_folds))
    if not test_folds or not all(1 <= k <= FOLDS for k in test_folds):
        raise DataError(f"test folds must be numbers from 1 to {FOLDS}, got {test_folds}")
    if len(test_folds) == FOLDS:
        raise DataError("every fold is a test fold: no person is left to train on")
    protocol = cut_protocol(lfw, test_folds, min_images)
    make_outdir(out, "--out")
    if os.listdir(out):
        raise DataError(f"{out}: not empty; the protocol is written into a new or empty folder")
    names = sorted(protocol.train)
    labels = {name: label for label, name in enumerate(names)}
    train_paths = copy_images(lfw, out, TRAIN_DIR, {name: protocol.train[name] for name in names})
    write_list(os.path.join(out, LIST_NAME), [(p, labels[p.split("/")[1]]) for p in train_paths])
    write_property(os.path.join(out, PROPERTY_NAME), len(names), first_image_size(lfw, protocol.train))
    write_atomically(os.path.join(out, LABEL_MAP_NAME), "".join(f"{labels[n]} {n}\n" for n in names))
    open_paths = copy_images(lfw, out, OPEN_SET_DIR, protocol.open_set)
    write_atomically(os.path.join(out, OPEN_SET_LIST), "".join(f"{p}\n" for p in open_paths))
    test_root = os.path.join(out, TEST_TARGET)
    test_images = protocol.test_images()
    copy_images(lfw, test_root, IMAGES_DIR, test_images)
    lines = [f"{len(test_folds)}\t{protocol.per_fold}"] + [pair_line(entry) for entry in protocol.test_entries]
    write_atomically(os.path.join(test_root, PAIRS_NAME), "".join(f"{line}\n" for line in lines))
    with open(os.path.join(lfw, PAIRS_NAME), "rb") as f:
        source_digest = hashlib.sha256(f.read()).hexdigest()[:16]
    record = {"source": os.path.abspath(lfw), "pairs_sha256": source_digest, "test_folds": test_folds,
              "min_images": min_images, "train_people": len(names), "train_images": len(train_paths),
              "test_pairs": len(protocol.test_entries), "test_people": len(test_images),
              "open_set_people": len(protocol.open_set), "open_set_images": len(open_paths)}
    write_json(os.path.join(out, RECORD_NAME), record, "protocol record")
    return record
