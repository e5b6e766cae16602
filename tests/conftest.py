"""Shared fixtures. Tests run on the CPU; `util.runtime` must be imported before jittor (pytest.ini puts the
repository on the import path)."""
import util.runtime  # noqa: F401

import os
import shutil
import struct
import zlib

import cv2
import numpy as np
import pytest

from data.scenes import paste, placement, smooth_background
from util.files import REPO_ROOT

SHARED_DATA = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data"))
DEMO_ROOT = os.path.join(REPO_ROOT, "data", "demo")


def shared_path(*parts):
    """A path under ../shared/data, or a skip saying it is absent (the project never needs it)."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent: this check needs the shared real-data folder")
    return path


def write_image_list(root, entries, property_line=None):
    """entries: [(relative path, label)] -> root/imgs.txt (+ property)."""
    with open(os.path.join(root, "imgs.txt"), "w") as f:
        f.writelines(f"{path} {label}\n" for path, label in entries)
    if property_line is not None:
        with open(os.path.join(root, "property"), "w") as f:
            f.write(property_line)


def oversized_png(height=40000, width=40000):
    """A PNG whose header claims more pixels than OpenCV decodes (CV_IO_MAX_IMAGE_PIXELS, 2^30), with a tiny IDAT."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


def copy_demo_faces(root, classes=4, per_class=4):
    """`classes` identities x `per_class` real faces copied from the embedded demo set into `root`."""
    entries = []
    with open(os.path.join(DEMO_ROOT, "imgs.txt")) as f:
        demo = [line.split() for line in f]
    by_label = {}
    for path, label in demo:
        by_label.setdefault(int(label), []).append(path)
    for new_label, label in enumerate(sorted(by_label)[:classes]):
        for path in by_label[label][:per_class]:
            os.makedirs(root / os.path.dirname(path), exist_ok=True)
            shutil.copyfile(os.path.join(DEMO_ROOT, path), root / path)
            entries.append((path, new_label))
    write_image_list(root, entries, f"{classes},112,112\n")
    return root, entries


@pytest.fixture
def tiny_face_set(tmp_path):
    """`classes` identities x `per_class` real faces copied from the embedded demo set."""
    return lambda classes=4, per_class=4: copy_demo_faces(tmp_path, classes, per_class)


def small_pairs_folder(root, per_fold=1):
    """`per_fold` same + different pairs per fold, cut from the embedded demo pairs."""
    source = os.path.join(DEMO_ROOT, "lfw_demo")
    with open(os.path.join(source, "pairs.txt")) as f:
        lines = f.read().splitlines()[1:]
    fold = len(lines) // 10
    half = fold // 2
    chosen = [line for k in range(10) for line in lines[k * fold: k * fold + per_fold]
              + lines[k * fold + half: k * fold + half + per_fold]]
    os.makedirs(root)
    with open(os.path.join(root, "pairs.txt"), "w") as f:
        f.write(f"10\t{per_fold}\n" + "\n".join(chosen) + "\n")
    for line in chosen:
        fields = line.split()
        names = [(fields[0], fields[1]), (fields[0], fields[2])] if len(fields) == 3 else \
            [(fields[0], fields[1]), (fields[2], fields[3])]
        for name, number in names:
            rel = os.path.join("images", name, f"{name}_{int(number):04d}.jpg")
            os.makedirs(os.path.join(root, "images", name), exist_ok=True)
            shutil.copyfile(os.path.join(source, rel), os.path.join(root, rel))
    return root


def photo_file(path, faces, seed, hw=(480, 640)):
    """A JPEG photo of aligned face crops (H x W x 3 RGB) on a smooth random background, each turned, scaled
    and moved at random, the first the largest and leftmost."""
    rng = np.random.default_rng(seed)
    photo = smooth_background(rng, hw)
    for k, face in enumerate(faces):
        centre = (hw[1] * (0.3 + 0.4 * k) + rng.uniform(-20, 20), hw[0] / 2 + rng.uniform(-20, 20))
        photo = paste(photo, face, placement(face.shape[:2], rng.uniform(-15, 15), 1.6 - 0.6 * k, centre))
    cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return str(path)


def assert_same_angles(a, b):
    """Two records' angle fields: the same counts and unpulled share, percentiles within float32 rounding."""
    assert a.keys() == b.keys()
    for key in ("theta_target", "theta_other"):
        assert a[key]["count"] == b[key]["count"] and sum(a[key]["histogram"]) == a[key]["count"]
        for p in ("p5", "p25", "p50", "p75", "p95"):
            assert b[key][p] == pytest.approx(a[key][p], rel=1e-4), (key, p)
    assert a.get("unpulled") == b.get("unpulled")
