"""IJB-B / IJB-C template verification sets in InsightFace's layout (what arcface_torch's eval_ijbc reads).

    <root>/meta/<set>_face_tid_mid.txt          one line per face: 'image template_id media_id'
    <root>/meta/<set>_name_5pts_score.txt       one line per image: 'image x1 y1 ... x5 y5 score'
                                                (eyes, nose, mouth corners in loose-crop pixels; detector score)
    <root>/meta/<set>_template_pair_label.txt   one line per pair: 'template_id template_id label' (1 same subject)
    <root>/loose_crop/<image>

<set> is `ijbb` or `ijbc`. Everything is checked when the set is read, before any embedding:
a malformed line is reported as `file:line`, and so is a face whose image is missing (the
evaluation stops rather than scoring templates with faces left out).
"""
import os
from dataclasses import dataclass

import numpy as np

from .alignment import ALIGNED_SIZE, align_face
from .images import decode_image, fit_input_size, undecodable
from .text import DataError, text_lines
from .verification_sets import check_pair_kinds

IJB_SETS = ("IJBB", "IJBC")
META_DIR, IMAGES_DIR = "meta", "loose_crop"
FACES_FILE, LANDMARKS_FILE, PAIRS_FILE = "{}_face_tid_mid.txt", "{}_name_5pts_score.txt", "{}_template_pair_label.txt"


@dataclass
class IJBSet:
    name: str  # IJBB or IJBC
    images: list  # image path of each face (a line of the faces file)
    sources: list  # 'landmarks file:line' of each face, for messages
    landmarks: np.ndarray  # F x 5 x 2, (x, y) in the image
    scores: np.ndarray  # F detector scores
    templates: np.ndarray  # F template ids
    medias: np.ndarray  # F media ids
    pairs: np.ndarray  # P x 2 template ids
    issame: np.ndarray  # P bools

    def aligned(self, index, input_size):
        """Face `index` aligned to the 112x112 template (cut to 112x96 for such a network): H x W x 3 uint8 RGB."""
        where = f"{self.images[index]} ({self.sources[index]})"
        try:
            with open(self.images[index], "rb") as f:
                data = f.read()
        except OSError as e:
            raise DataError(f"{where}: cannot read: {e.strerror}") from None
        image = decode_image(data)
        if image is None:
            raise DataError(f"{where}: {undecodable(data)}")
        try:
            face = align_face(image, self.landmarks[index])
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        face, problem = fit_input_size(face, input_size)
        if problem is not None:
            raise DataError(f"{where}: faces are aligned to {ALIGNED_SIZE[0]}x{ALIGNED_SIZE[1]}, which the network "
                            f"cannot take ({problem})")
        return face


def meta_path(root, set_name, pattern):
    return os.path.join(root, META_DIR, pattern.format(set_name.lower()))


def infer_set(root):
    """The one IJB set whose faces file `root/meta` holds."""
    present = [s for s in IJB_SETS if os.path.isfile(meta_path(root, s, FACES_FILE))]
    if len(present) != 1:
        expected = " or ".join(meta_path(root, s, FACES_FILE) for s in IJB_SETS)
        raise DataError(f"{root}: expected one of {expected}" if not present else
                        f"{root}: holds both IJB-B and IJB-C meta files; say which with --ijb_set")
    return present[0]


def meta_lines(path, fields, form):
    """(line number, fields) of each non-empty line, each with `fields` fields."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    lines = []
    for n, line in text_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != fields:
            raise DataError(f"{path}:{n}: expected '{form}', got '{line.strip()}'")
        lines.append((n, parts))
    if not lines:
        raise DataError(f"{path}: empty")
    return lines


def integers(path, n, values, what):
    try:
        return [int(v) for v in values]
    except ValueError:
        raise DataError(f"{path}:{n}: {what} must be integers, got '{' '.join(values)}'") from None


def read_landmarks(path):
    """-> {image: (line, 5 x 2 landmarks, score)}."""
    entries = {}
    for n, parts in meta_lines(path, 12, "image x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 score"):
        try:
            values = np.array([float(v) for v in parts[1:]])
        except ValueError:
            values = np.array([np.nan])
        if not np.all(np.isfinite(values)):
            raise DataError(f"{path}:{n}: landmarks and score must be finite numbers, got '{' '.join(parts[1:])}'")
        if parts[0] in entries:
            raise DataError(f"{path}:{n}: image {parts[0]} is listed again (first at line {entries[parts[0]][0]})")
        entries[parts[0]] = (n, values[:10].reshape(5, 2), values[10])
    return entries


def load_ijb(root, set_name=None):
    """An IJB-B or IJB-C folder (`set_name` IJBB / IJBC, or None: the one its meta/ holds) -> IJBSet."""
    set_name = (set_name or infer_set(root)).upper()
    faces_file, landmarks_file, pairs_file = (meta_path(root, set_name, p)
                                              for p in (FACES_FILE, LANDMARKS_FILE, PAIRS_FILE))
    landmarks = read_landmarks(landmarks_file)
    images, sources, points, scores, templates, medias = [], [], [], [], [], []
    for n, (image, *ids) in meta_lines(faces_file, 3, "image template_id media_id"):
        template, media = integers(faces_file, n, ids, "template and media ids")
        if image not in landmarks:
            raise DataError(f"{faces_file}:{n}: image {image} has no line in {landmarks_file}")
        line, face_points, score = landmarks[image]
        images.append(os.path.join(root, IMAGES_DIR, image))
        sources.append(f"{landmarks_file}:{line}")
        points.append(face_points)
        scores.append(score)
        templates.append(template)
        medias.append(media)
    known = set(templates)
    pairs, issame = [], []
    for n, parts in meta_lines(pairs_file, 3, "template_id template_id label"):
        first, second, label = integers(pairs_file, n, parts, "template ids and label")
        for template in (first, second):
            if template not in known:
                raise DataError(f"{pairs_file}:{n}: template {template} has no faces in {faces_file}")
        if label not in (0, 1):
            raise DataError(f"{pairs_file}:{n}: label must be 1 (same subject) or 0, got {label}")
        pairs.append((first, second))
        issame.append(label == 1)
    check_pair_kinds(issame, pairs_file)
    missing = [i for i, path in enumerate(images) if not os.path.isfile(path)]
    if missing:
        raise DataError(f"{len(missing)} of the {len(images)} face images are missing, e.g. {images[missing[0]]} "
                        f"({sources[missing[0]]})")
    return IJBSet(set_name, images, sources, np.array(points), np.array(scores), np.array(templates, np.int64),
                  np.array(medias, np.int64), np.array(pairs, np.int64), np.array(issame, bool))
