#!/usr/bin/env python3
"""Training and verification data tools; none needs mxnet or jittor.

    # InsightFace train.rec/train.idx -> <label>/<key>.jpg + imgs.txt + property (resumable)
    python3 tools/data_tools.py rec-to-images --rec data/faces_emore --out data/faces_emore_images
    # a folder per identity -> imgs.txt + property + label_map.txt in that folder
    python3 tools/data_tools.py folder-to-list --root data/my_faces
    # decode every image of an imgs.txt list; report bad lines, class sizes; optionally a clean list
    python3 tools/data_tools.py check-list --root data/my_faces --write_clean data/my_faces/imgs_clean.txt
    # LFW-style pairs folder <-> InsightFace .bin
    python3 tools/data_tools.py pairs-to-bin --pairs_folder data/lfw --out data/lfw.bin
    python3 tools/data_tools.py bin-to-pairs --bin data/agedb_30.bin --out data/agedb_30
    # an identity-disjoint training set and test target from an aligned LFW (folds 1-2 held out)
    python3 tools/data_tools.py lfw-protocol --lfw data/lfw --out data/lfw_protocol --test_folds 1,2 --min_images 3
    # photos -> aligned faces: RAW/<identity>/<photo> -> a training data root (resumable), or a pairs folder
    python3 tools/data_tools.py align --in data/my_photos --out data/my_faces
    python3 tools/data_tools.py align --in data/lfw_original --out data/lfw_aligned

Each prints a summary; bad input stops with `error: <file>: <problem>` and exit status 1.
rec-to-images and check-list also exit with status 1 when they found bad records or images,
align when an image a pairs folder needs could not be written.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from data.align_photos import (BAD_PHOTOS_NAME, align_identity_folders, align_pairs_folder,  # noqa: E402
                                is_pairs_folder)
from data.alignment import template_for  # noqa: E402
from data.check import KINDS, check_list, size_histogram, write_clean_list  # noqa: E402
from data.convert import (BAD_RECORDS_NAME, LABEL_MAP_NAME, bin_to_pairs_folder, folder_to_list,  # noqa: E402
                          pairs_folder_to_bin, rec_to_images)
from data.image_list import LIST_NAME  # noqa: E402
from data.images import parse_size  # noqa: E402
from data.label_noise import OPEN_SET_LIST  # noqa: E402
from data.lfw_protocol import FOLDS, TEST_TARGET, write_protocol  # noqa: E402
from data.rec import REC_NAME, record_name  # noqa: E402
from util.errors import InputError  # noqa: E402
from util.options import positive_int  # noqa: E402

LISTED_BAD_RECORDS = 20


def rec_to_images_command(args):
    r = rec_to_images(args.rec, args.out, args.processes)
    print(f"{args.out}: {r.images} image records: {r.converted} converted, {r.existing} already there, "
          f"{len(r.bad)} bad; {r.num_classes} classes, {r.image_size[0]}x{r.image_size[1]}; "
          f"{r.images / r.seconds:.0f} images/s")
    rec_path = os.path.join(args.rec, REC_NAME)
    for key, offset, reason in r.bad[:LISTED_BAD_RECORDS]:
        print(f"bad record: {record_name(rec_path, key, offset)}: {reason}", file=sys.stderr)
    if r.bad:
        print(f"{len(r.bad)} bad records skipped, all listed in {os.path.join(args.out, BAD_RECORDS_NAME)}",
              file=sys.stderr)
    return 1 if r.bad else 0


def folder_to_list_command(args):
    entries, names, empty = folder_to_list(args.root)
    print(f"{os.path.join(args.root, LIST_NAME)}: {len(entries)} images of {len(names)} identities "
          f"(labels by name, in {LABEL_MAP_NAME}), property written")
    if empty:
        print(f"left out {len(empty)} identity folders without images: {', '.join(empty)}")
    return 0


def check_list_command(args):
    check = check_list(args.root, args.input_size, args.num_workers)
    dataset = check.dataset
    for index, _, reason in check.problems:
        print(f"{dataset.describe(index)}: {reason}")
    counts = check.counts()
    height, width = dataset.input_size
    print(f"{dataset.source}: {len(dataset)} lines, {check.usable.sum()} usable images of {height}x{width}; "
          + ", ".join(f"{counts[kind]} {kind}" for kind in KINDS))
    sizes = check.class_sizes()
    if sizes.size:
        print(f"usable images per class: min {sizes.min()}, median {np.median(sizes):g}, max {sizes.max()}; "
              f"{np.sum(sizes == 1)} classes with one image, {dataset.num_classes - sizes.size} of "
              f"{dataset.num_classes} with none")
        print("class sizes: " + ", ".join(f"{low}-{high}: {n}" if high > low else f"{low}: {n}"
                                          for low, high, n in size_histogram(sizes)))
    if args.write_clean:
        write_clean_list(check, args.write_clean)
        print(f"{args.write_clean}: {check.usable.sum()} lines without the {len(check.problems)} bad ones")
    return 1 if check.problems else 0


def pairs_to_bin_command(args):
    pair_set = pairs_folder_to_bin(args.pairs_folder, args.out)
    print(f"{args.out}: {len(pair_set.issame)} pairs ({pair_set.issame.sum()} same), "
          f"{2 * len(pair_set.issame)} images ({len(pair_set.encoded)} distinct)")
    return 0


def bin_to_pairs_command(args):
    pair_set = bin_to_pairs_folder(args.bin, args.out)
    print(f"{os.path.join(args.out, 'pairs.txt')}: {len(pair_set.issame)} pairs ({pair_set.issame.sum()} same), "
          f"images under {os.path.join(args.out, 'images')}")
    return 0


def lfw_protocol_command(args):
    r = write_protocol(args.lfw, args.out, args.test_folds, args.min_images)
    print(f"{args.out}: {r['train_images']} training images of {r['train_people']} people with {args.min_images} or "
          f"more images outside folds {', '.join(map(str, r['test_folds']))}; test target "
          f"{os.path.join(args.out, TEST_TARGET)}: {r['test_pairs']} pairs of {r['test_people']} people; open-set pool "
          f"{r['open_set_images']} images of {r['open_set_people']} other people ({OPEN_SET_LIST})")
    return 0


def fold_numbers(text):
    """--test_folds' type: comma-separated fold numbers."""
    try:
        folds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        folds = []
    if not folds or not all(1 <= k <= FOLDS for k in folds):
        raise argparse.ArgumentTypeError(f"must be comma-separated fold numbers (1 to {FOLDS}), got '{text}'")
    return folds


def align_command(args):
    height, width = args.input_size
    pairs = is_pairs_folder(args.raw)
    if pairs:
        r = align_pairs_folder(args.raw, args.out, args.input_size, args.processes)
        what = f"pairs folder: pairs.txt copied, faces {height}x{width} under {os.path.join(args.out, 'images')}"
    else:
        r, names, empty = align_identity_folders(args.raw, args.out, args.input_size, args.processes,
                                                 args.skip_multiple)
        what = (f"{len(names)} identities, {height}x{width}; {LIST_NAME}, property and {LABEL_MAP_NAME} written"
                + (f"; left out {len(empty)} identity folders without an aligned face" if empty else ""))
    print(f"{args.out}: {r.photos} photos: {r.aligned} aligned, {r.existing} already there, {len(r.skipped)} "
          f"skipped{f', {len(r.middle)} without a face written as their middle square' if r.middle else ''}"
          f"{f' ({r.several} with several faces: the largest taken)' if r.several else ''}; "
          f"{r.photos / r.seconds:.1f} photos/s; {what}")
    listed = [("skipped", *bad) for bad in r.skipped] + [("no face", *bad) for bad in r.middle]
    for kind, source, reason in listed[:LISTED_BAD_RECORDS]:
        print(f"{kind}: {source}: {reason}", file=sys.stderr)
    if r.skipped or r.middle:
        print(f"{len(r.skipped) + len(r.middle)} photos listed in {os.path.join(args.out, BAD_PHOTOS_NAME)}",
              file=sys.stderr)
    if pairs and r.skipped:
        print("the pairs cannot be scored until every image pairs.txt names is there", file=sys.stderr)
        return 1
    return 0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("rec-to-images", help="InsightFace train.rec/.idx -> JPEG files + imgs.txt + property",
                       description="Write each image of train.rec as <out>/<label>/<key>.jpg (its bytes as stored), "
                                   "then <out>/imgs.txt (by key) and <out>/property. Re-running after an "
                                   "interruption keeps whole files and finishes the rest; unreadable records are "
                                   "skipped, counted and listed in <out>/bad_records.txt.")
    s.add_argument("--rec", required=True, help="folder holding train.rec and train.idx (and maybe property)")
    s.add_argument("--out", required=True, help="output folder (the new data root)")
    s.add_argument("--processes", type=positive_int, default=os.cpu_count(),
                   help="converter processes (default: one per CPU core)")
    s.set_defaults(run=rec_to_images_command)
    s = sub.add_parser("folder-to-list", help="a folder per identity -> imgs.txt + property + label_map.txt",
                       description="Label the identity folders of ROOT in name order and write ROOT/imgs.txt, "
                                   "ROOT/property and ROOT/label_map.txt ('<label> <identity>' per line). Only "
                                   ".jpg/.jpeg/.png/.bmp files count; folders without images are left out.")
    s.add_argument("--root", required=True, help="folder holding <identity>/<image> files")
    s.set_defaults(run=folder_to_list_command)
    s = sub.add_parser("check-list", help="decode every image of an imgs.txt list and report what is wrong",
                       description="Report missing, unreadable, undecodable and wrong-size images and repeated "
                                   "paths as imgs.txt:LINE, then the class sizes. Exit status 1 when a problem "
                                   "was found.")
    s.add_argument("--root", required=True, help="folder holding imgs.txt (and maybe property)")
    s.add_argument("--input_size", default="112x112",
                   help="expected image size when there is no property file (112x96: 112x112 images are cut)")
    s.add_argument("--num_workers", type=positive_int, default=4, help="image-decoding threads")
    s.add_argument("--write_clean", metavar="PATH", help="also write the list without the bad and repeated lines")
    s.set_defaults(run=check_list_command)
    s = sub.add_parser("pairs-to-bin", help="pairs.txt + images/ folder -> InsightFace verification .bin",
                       description="Pickle (bins, issame_list) like InsightFace's .bin files: each pair's two "
                                   "images as their exact file bytes, in pairs.txt order.")
    s.add_argument("--pairs_folder", required=True, help="folder holding pairs.txt and images/<Name>/<Name>_NNNN.jpg")
    s.add_argument("--out", required=True, help="the .bin file to write")
    s.set_defaults(run=pairs_to_bin_command)
    s = sub.add_parser("bin-to-pairs", help="InsightFace verification .bin -> pairs.txt + images/ folder",
                       description="Write OUT/pairs.txt and OUT/images/ in the LFW layout (pair k: pairKKKKK 1 2 "
                                   "when same, pairKKKKKa 1 pairKKKKKb 1 when different), image bytes as stored.")
    s.add_argument("--bin", required=True, help="the .bin file to read")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(run=bin_to_pairs_command)
    s = sub.add_parser("lfw-protocol", help="aligned LFW -> an identity-disjoint training set and test target",
                       description="Hold out the pairs of --test_folds (LFW View 2 folds are disjoint by person) as "
                                   "the target OUT/lfw_test, train on every other person with at least --min_images "
                                   "images (OUT/imgs.txt, property, label_map.txt), and list the remaining people's "
                                   "images in OUT/open_set.txt for --label_noise_open; OUT/protocol.json records how.")
    s.add_argument("--lfw", required=True, help="aligned LFW: images/<Name>/<Name>_NNNN.jpg and pairs.txt (View 2)")
    s.add_argument("--out", required=True, help="the new data root (a new or empty folder)")
    s.add_argument("--test_folds", type=fold_numbers, default="1,2", help="held-out folds (default: 1,2)")
    s.add_argument("--min_images", type=positive_int, default=3,
                   help="images a person needs to be a training class (default: 3)")
    s.set_defaults(run=lfw_protocol_command)
    s = sub.add_parser("align", help="photos -> aligned faces: a training data root, or a pairs folder",
                       description="Find the faces in each photo (MTCNN), align the largest to the 5-point template "
                                   "of the input size and write it as a JPEG. RAW/<identity>/<photo> becomes "
                                   "OUT/<identity>/<photo name>.jpg with imgs.txt, property and label_map.txt; a "
                                   "pairs folder (RAW/pairs.txt + RAW/images/<Name>/<Name>_NNNN.jpg) becomes the "
                                   "same layout under OUT, where a photo without a face is written as its middle "
                                   "square so that every pair stays scorable. Photos that cannot be decoded or "
                                   "show no face are skipped and listed in OUT/bad_photos.txt. Re-running keeps "
                                   "the faces already aligned and does the rest.")
    s.add_argument("--in", dest="raw", required=True, metavar="RAW", help="folder of photos (either layout)")
    s.add_argument("--out", required=True, help="output folder (outside RAW)")
    s.add_argument("--input_size", default="112x112",
                   help="the network input the faces are for: 112x112 (ArcFace template) or 112x96 (SphereFace); "
                        "112x112 faces also serve 112x96 models, which cut them (default: %(default)s)")
    s.add_argument("--skip_multiple", action="store_true",
                   help="skip photos showing several faces instead of taking the largest (identity folders only)")
    s.add_argument("--processes", type=positive_int, default=os.cpu_count(),
                   help="aligning processes (default: one per CPU core)")
    s.set_defaults(run=align_command)
    args = p.parse_args(argv)
    if args.command in ("check-list", "align"):
        try:
            args.input_size = parse_size(args.input_size)
        except ValueError as e:
            sub.choices[args.command].error(str(e))
    if args.command == "align":
        try:
            template_for(args.input_size)
        except ValueError as e:
            sub.choices[args.command].error(f"--input_size: {e}")
        if args.skip_multiple and is_pairs_folder(args.raw):
            sub.choices["align"].error(f"--skip_multiple: {args.raw} is a pairs folder, where every image must be "
                                       f"aligned (the largest face is taken)")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        return args.run(args)
    except (InputError, OSError) as e:  # bad input: the message names the file at fault
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    sys.exit(main())
