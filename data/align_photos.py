"""Folders of photos -> folders of aligned faces: a training data root, or an aligned pairs folder.

- `align_identity_folders`: RAW/<identity>/<photo> -> OUT/<identity>/<photo name>.jpg + imgs.txt,
  property, label_map.txt (data.convert.folder_to_list over OUT).
- `align_pairs_folder`: the LFW layout (pairs.txt + images/<Name>/<Name>_NNNN.jpg) -> the same
  layout under OUT, pairs.txt copied, for evaluation.

Each photo's largest face is aligned to the template of the network input size asked for. Photos
that cannot be read or decoded, show no face, or (when asked) show several, are skipped, counted and
listed in OUT/bad_photos.txt. In a pairs folder every image the protocol names must exist, so a photo
without a face is written as its middle square instead (as InsightFace's LFW alignment does), and
listed. Files are written whole or not at all (util.files), an aligned file already there is kept and
the temporaries of a killed run are removed, so a re-run after an interruption finishes the job; the
work is spread over processes.
"""
import os
import time
from dataclasses import dataclass, field
from functools import partial

import cv2

from util.files import make_outdir, remove_leftovers, write_atomically

from .convert import folder_to_list, is_image_file, run_chunks
from .face_detection import FaceDetector
from .images import fit_width
from .photos import aligned_crop, read_photo
from .text import DataError
from .verification_sets import IMAGES_DIR, PAIRS_NAME, parse_pairs_txt

BAD_PHOTOS_NAME = "bad_photos.txt"
ALIGNED, EXISTING, MIDDLE = "aligned", "existing", "middle square"
JPEG_QUALITY = 95
CHUNK = 16  # photos per task: a task costs far less than 16 detections, and the progress bar stays smooth
MIDDLE_MARGIN = 0.0625  # of the short side, on each side of the middle square (InsightFace's align_lfw.py)

_detector = {}  # one per process, made on first use there: a forked worker must not share its parent's sessions


@dataclass
class PhotoAlignment:
    photos: int
    aligned: int  # written by this run
    existing: int  # already there from an earlier run, kept
    several: int  # photos with more than one face, their largest aligned
    skipped: list  # (photo path, reason), nothing written
    middle: list = field(default_factory=list)  # (photo path, reason): pairs folders only, middle square written
    seconds: float = 0.0


def detector():
    if os.getpid() not in _detector:
        _detector.clear()
        _detector[os.getpid()] = FaceDetector()
    return _detector[os.getpid()]


def middle_square(image, input_hw):
    """The photo's middle square less a margin, resized to 112x112 and cut to the input width: where a face
    is in a photo centred on it, the fallback for a photo in which none was found."""
    height, width = image.shape[:2]
    side = min(height, width)
    margin = round(side * MIDDLE_MARGIN)
    top, left = (height - side) // 2 + margin, (width - side) // 2 + margin
    square = image[top:top + side - 2 * margin, left:left + side - 2 * margin]
    return fit_width(cv2.resize(square, (112, 112), interpolation=cv2.INTER_AREA), input_hw[1])


def encode_jpeg(face):
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(face, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return data.tobytes()


def align_one(source, target, input_hw, skip_multiple, middle_fallback):
    """Align the photo `source` into `target` -> (outcome, faces found). outcome: ALIGNED, EXISTING, MIDDLE
    (with the reason) or the reason nothing was written."""
    if os.path.exists(target):
        return EXISTING, None
    try:
        image = read_photo(source)
    except DataError as e:
        return str(e).removeprefix(f"{source}: "), None
    faces = detector().detect(image)
    if len(faces) > 1 and skip_multiple:
        return f"{len(faces)} faces found, none chosen", len(faces)
    if faces:
        face, outcome = aligned_crop(image, faces[0].landmarks, input_hw), ALIGNED
    elif middle_fallback:
        face, outcome = middle_square(image, input_hw), MIDDLE
    else:
        return "no face found", 0
    os.makedirs(os.path.dirname(target), exist_ok=True)
    write_atomically(target, encode_jpeg(face))
    return outcome, len(faces)


def align_chunk(input_hw, skip_multiple, middle_fallback, jobs):
    """[(source, target)] -> [(source, outcome, faces found)]; runs in a worker process."""
    return [(source, *align_one(source, target, input_hw, skip_multiple, middle_fallback)) for source, target in jobs]


def run_alignment(jobs, out, input_hw, processes, skip_multiple=False, middle_fallback=False):
    """Align every (source, target) job; write or clear OUT/bad_photos.txt -> PhotoAlignment."""
    start = time.perf_counter()
    make_outdir(out, "--out")
    remove_leftovers(out, os.path.join(IMAGES_DIR, "*", "*") if middle_fallback else os.path.join("*", "*"))
    chunks = [jobs[i:i + CHUNK] for i in range(0, len(jobs), CHUNK)]
    task = partial(align_chunk, tuple(input_hw), skip_multiple, middle_fallback)
    results = run_chunks(task, chunks, processes, len(jobs))
    outcomes = [outcome for _, outcome, _ in results]
    skipped = [(source, outcome) for source, outcome, _ in results if outcome not in (ALIGNED, EXISTING, MIDDLE)]
    middle = [(source, "no face found, middle square written") for source, outcome, _ in results if outcome == MIDDLE]
    bad_file = os.path.join(out, BAD_PHOTOS_NAME)
    if skipped or middle:
        write_atomically(bad_file, "".join(f"{source}: {reason}\n" for source, reason in skipped + middle))
    elif os.path.exists(bad_file):
        os.remove(bad_file)  # from an earlier run over other photos
    return PhotoAlignment(len(jobs), outcomes.count(ALIGNED), outcomes.count(EXISTING),
                          sum(1 for _, outcome, found in results if outcome == ALIGNED and found > 1),
                          skipped, middle, time.perf_counter() - start)


def check_out_folder(raw, out):
    """Neither folder may hold the other: aligned faces written among the photos would be taken for photos, and
    photos inside OUT for an identity of the training set."""
    raw_path, out_path = os.path.realpath(raw), os.path.realpath(out)
    if os.path.commonpath([raw_path, out_path]) in (raw_path, out_path):
        raise DataError(f"{out}: the output folder and the photo folder {raw} must not hold one another")


def identity_jobs(raw, out):
    """RAW/<identity>/<photo> -> [(photo path, OUT/<identity>/<photo name>.jpg)], in name order."""
    if not os.path.isdir(raw):
        raise DataError(f"{raw}: no such folder")
    jobs, targets = [], {}
    for identity in sorted(e.name for e in os.scandir(raw) if e.is_dir() and not e.name.startswith(".")):
        folder = os.path.join(raw, identity)
        for name in sorted(e.name for e in os.scandir(folder)
                           if e.is_file() and not e.name.startswith(".") and is_image_file(e.name)):
            source, target = os.path.join(folder, name), os.path.join(out, identity, os.path.splitext(name)[0] + ".jpg")
            if target in targets:
                raise DataError(f"{targets[target]} and {source} would both be written as {target}; rename one")
            targets[target] = source
            jobs.append((source, target))
    if not jobs:
        raise DataError(f"{raw}: no identity folder holds photos (RAW/<identity>/<photo>, .jpg .jpeg .png .bmp)")
    return jobs


def align_identity_folders(raw, out, input_hw=(112, 112), processes=os.cpu_count(), skip_multiple=False):
    """RAW/<identity>/<photo> -> a training data root OUT: aligned JPEGs, imgs.txt, property, label_map.txt.

    -> (PhotoAlignment, identities listed, identity folders without an aligned face).
    """
    check_out_folder(raw, out)
    jobs = identity_jobs(raw, out)
    report = run_alignment(jobs, out, input_hw, processes, skip_multiple)
    if report.aligned + report.existing == 0:
        raise DataError(f"{raw}: no face could be aligned in any of its {len(jobs)} photos (see "
                        f"{os.path.join(out, BAD_PHOTOS_NAME)})")
    _, names, empty = folder_to_list(out)
    return report, names, empty


def pairs_jobs(raw, out):
    """The images pairs.txt names -> [(RAW/images/<Name>/<file>, OUT/images/<Name>/<file>)], each once."""
    pairs_file = os.path.join(raw, PAIRS_NAME)
    jobs = {}
    for line, name1, n1, name2, n2, _ in parse_pairs_txt(pairs_file):
        for person, number in ((name1, n1), (name2, n2)):
            relative = os.path.join(IMAGES_DIR, person, f"{person}_{number:04d}.jpg")
            if not os.path.isfile(os.path.join(raw, relative)):
                raise DataError(f"{pairs_file}:{line}: image {os.path.join(raw, relative)} does not exist")
            jobs.setdefault(relative, (os.path.join(raw, relative), os.path.join(out, relative)))
    return list(jobs.values())


def align_pairs_folder(raw, out, input_hw=(112, 112), processes=os.cpu_count()):
    """RAW/pairs.txt + RAW/images/ (the LFW layout) -> OUT in the same layout, every image aligned -> PhotoAlignment."""
    check_out_folder(raw, out)
    jobs = pairs_jobs(raw, out)
    report = run_alignment(jobs, out, input_hw, processes, middle_fallback=True)
    with open(os.path.join(raw, PAIRS_NAME), "rb") as f:
        write_atomically(os.path.join(out, PAIRS_NAME), f.read())
    return report


def is_pairs_folder(raw):
    return os.path.isfile(os.path.join(raw, PAIRS_NAME)) and os.path.isdir(os.path.join(raw, IMAGES_DIR))

