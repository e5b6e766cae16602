#!/usr/bin/env python3
"""Cut the embedded demo (data/demo) out of an aligned 112x112 LFW copy.

Training set: the identities with the most images (at most --max_per_identity each).
Evaluation: the first --pairs_per_fold same and different pairs of each of the 10 official
View 2 folds whose people are all absent from the training set. JPEG files are copied
byte for byte. The result is part of the repository.

    python3 data/demo/make_lfw_demo.py --lfw data/lfw --out data/demo
"""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data.verification_sets import parse_pairs_txt  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lfw", required=True, help="folder with images/<Name>/<Name>_NNNN.jpg and pairs.txt")
    p.add_argument("--out", required=True)
    p.add_argument("--identities", type=int, default=100, help="training identities")
    p.add_argument("--max_per_identity", type=int, default=20)
    p.add_argument("--pairs_per_fold", type=int, default=30, help="same (and as many different) pairs per fold")
    args = p.parse_args()

    images_dir = os.path.join(args.lfw, "images")
    pairs = parse_pairs_txt(os.path.join(args.lfw, "pairs.txt"))
    folds = [pairs[i:i + len(pairs) // 10] for i in range(0, len(pairs), len(pairs) // 10)]

    counts = {name: len(os.listdir(os.path.join(images_dir, name))) for name in os.listdir(images_dir)}
    train_people = sorted(counts, key=lambda n: (-counts[n], n))[:args.identities]
    excluded = set(train_people)

    chosen = []
    for fold in folds:
        for same in (True, False):
            usable = [e for e in fold if e[5] == same and e[1] not in excluded and e[3] not in excluded]
            if len(usable) < args.pairs_per_fold:
                sys.exit(f"a fold has only {len(usable)} usable {'same' if same else 'different'} pairs")
            chosen.append(usable[:args.pairs_per_fold])

    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    train_lines = []
    for label, name in enumerate(sorted(train_people)):
        for file in sorted(os.listdir(os.path.join(images_dir, name)))[:args.max_per_identity]:
            rel = os.path.join("images", name, file)
            os.makedirs(os.path.join(args.out, "images", name), exist_ok=True)
            shutil.copyfile(os.path.join(images_dir, name, file), os.path.join(args.out, rel))
            train_lines.append(f"{rel} {label}\n")
    with open(os.path.join(args.out, "imgs.txt"), "w") as f:
        f.writelines(train_lines)
    with open(os.path.join(args.out, "property"), "w") as f:
        f.write(f"{len(train_people)},112,112\n")

    eval_dir = os.path.join(args.out, "lfw_demo")
    os.makedirs(eval_dir)
    with open(os.path.join(eval_dir, "pairs.txt"), "w") as f:
        f.write(f"10\t{args.pairs_per_fold}\n")
        for block in chosen:
            for _, name1, n1, name2, n2, same in block:
                f.write(f"{name1}\t{n1}\t{n2}\n" if same else f"{name1}\t{n1}\t{name2}\t{n2}\n")
                for name, n in ((name1, n1), (name2, n2)):
                    file = f"{name}_{n:04d}.jpg"
                    os.makedirs(os.path.join(eval_dir, "images", name), exist_ok=True)
                    shutil.copyfile(os.path.join(images_dir, name, file), os.path.join(eval_dir, "images", name, file))
    print(f"{len(train_lines)} training images of {len(train_people)} identities; "
          f"{sum(len(b) for b in chosen)} evaluation pairs")


if __name__ == "__main__":
    main()
