#!/usr/bin/env python3
"""LFW rebuilt as photos and scored through the photo pipeline: a measurement, not a test.

LFW's own photos are 250x250 scenes with the face in the middle; the shared data holds only the
aligned crops. Each photo pairs.txt names is rebuilt from its crop: pasted into a 250x250 canvas of
smooth random texture at a random angle (+-20 degrees), scale (1.2-1.8x) and offset (+-20 px from
the middle), seeded per photo, and saved as a JPEG in the LFW layout. Then the commands a user runs:
`tools/data_tools.py align` (MTCNN, the ArcFace template) and `eval_SFace_jittor.py` (the 10-fold
protocol) score the model on the 6000 pairs.

    python3 experiments/lfw_scenes.py --lfw ../shared/data/lfw --checkpoint /tmp/insightface_mfn.npz \\
        --work /tmp/lfw_scenes
"""
import argparse
import os
import subprocess
import sys
import time
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from data.align_photos import BAD_PHOTOS_NAME  # noqa: E402
from data.convert import run_chunks  # noqa: E402
from data.photos import read_photo  # noqa: E402
from data.scenes import random_scene, smooth_background  # noqa: E402
from data.verification_sets import IMAGES_DIR, PAIRS_NAME, parse_pairs_txt  # noqa: E402
from evaluation.results_file import read_results  # noqa: E402
from util.files import REPO_ROOT, write_atomically  # noqa: E402
from util.options import random_seed  # noqa: E402

SCENE_HW = (250, 250)
CHUNK = 200


def pair_slots(lfw):
    """The image of each pair's first and second slot, in pairs.txt order -> [images/<Name>/<Name>_NNNN.jpg]."""
    return [os.path.join(IMAGES_DIR, name, f"{name}_{number:04d}.jpg")
            for _, name1, n1, name2, n2, _ in parse_pairs_txt(os.path.join(lfw, PAIRS_NAME))
            for name, number in ((name1, n1), (name2, n2))]


def write_scenes(lfw, scenes, seed, indexed_images):
    """Each (index, image) crop of `lfw` as a 250x250 scene under `scenes`, from a generator seeded by (seed, index)."""
    for index, relative in indexed_images:
        rng = np.random.default_rng([seed, index])
        photo, _ = random_scene(read_photo(os.path.join(lfw, relative)), rng, SCENE_HW,
                                background=smooth_background(rng, SCENE_HW))
        os.makedirs(os.path.dirname(os.path.join(scenes, relative)), exist_ok=True)
        cv2.imwrite(os.path.join(scenes, relative), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
    return [None] * len(indexed_images)


def run(command):
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lfw", required=True, help="aligned LFW: pairs.txt + images/<Name>/<Name>_NNNN.jpg")
    p.add_argument("--checkpoint", required=True, help="the model to score (a .npz of this project)")
    p.add_argument("--work", required=True, help="folder for the scenes, their aligned faces and the evaluation")
    p.add_argument("--seed", type=random_seed, default=0)
    p.add_argument("--processes", type=int, default=os.cpu_count())
    args = p.parse_args(argv)
    scenes, aligned, outdir = (os.path.join(args.work, name) for name in ("scenes", "aligned", "eval"))
    start = time.perf_counter()

    slots = pair_slots(args.lfw)
    images = list(dict.fromkeys(slots))  # each photo once, as LFW holds it
    os.makedirs(scenes, exist_ok=True)
    with open(os.path.join(args.lfw, PAIRS_NAME), "rb") as f:
        write_atomically(os.path.join(scenes, PAIRS_NAME), f.read())
    indexed = list(enumerate(images))
    run_chunks(partial(write_scenes, args.lfw, scenes, args.seed), [indexed[i:i + CHUNK] for i in
                                                                    range(0, len(indexed), CHUNK)],
               args.processes, len(indexed))
    print(f"{len(images)} scenes of {SCENE_HW[0]}x{SCENE_HW[1]} in {time.perf_counter() - start:.0f} s", flush=True)

    run([sys.executable, os.path.join(REPO_ROOT, "tools", "data_tools.py"), "align", "--in", scenes, "--out", aligned,
         "--processes", str(args.processes)])
    run([sys.executable, os.path.join(REPO_ROOT, "eval_SFace_jittor.py"), "--checkpoint", args.checkpoint, "--target",
         aligned, "--workers_id", "cpu", "--outdir", outdir])

    _, rows = read_results(os.path.join(outdir, "results.json"))
    row = next(iter(rows.values()))
    bad_file = os.path.join(aligned, BAD_PHOTOS_NAME)
    with open(bad_file) if os.path.exists(bad_file) else open(os.devnull) as f:  # lines '<photo>: <reason>'
        missed = {os.path.relpath(line.split(": ", 1)[0], scenes) for line in f}
    print(f"LFW scenes (seed {args.seed}): accuracy {100 * row['accuracy']:.2f} % +- {100 * row['accuracy_std']:.2f} "
          f"over {row['pairs']} pairs; faces missed: {len(missed)} of {len(images)} photos "
          f"({sum(slot in missed for slot in slots)} of {len(slots)} pair slots); "
          f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
