"""Data tools: folder per identity -> imgs.txt, the list checker, .bin <-> pairs folder, photos -> aligned faces,
the command line."""
import os
import pickle
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import DEMO_ROOT, REPO_ROOT, oversized_png, photo_file, small_pairs_folder, write_image_list
from data.align_photos import BAD_PHOTOS_NAME, align_identity_folders, align_pairs_folder
from data.check import check_list, size_histogram, write_clean_list
from data.convert import bin_to_pairs_folder, folder_to_list, pairs_folder_to_bin, pairs_header
from data.image_list import ImageListDataset, read_image_list
from data.images import decode_image
from data.photos import read_photo
from data.text import DataError
from data.verification_sets import PairSet, load_pairs_folder, parse_pairs_txt

TOOLS = os.path.join(REPO_ROOT, "tools", "data_tools.py")


def run_tool(*args):
    return subprocess.run([sys.executable, TOOLS, *map(str, args)], capture_output=True, text=True)


def demo_faces(identities=3, per_identity=3):
    """{identity name: [demo image paths]} of real LFW faces."""
    people = sorted(os.listdir(os.path.join(DEMO_ROOT, "images")))[:identities]
    return {name: sorted(os.listdir(os.path.join(DEMO_ROOT, "images", name)))[:per_identity] for name in people}


def identity_folders(root, faces):
    """root/<identity>/<image> copies of the demo faces, plus things that are not training images."""
    for name, files in faces.items():
        os.makedirs(root / name)
        for file in files:
            shutil.copyfile(os.path.join(DEMO_ROOT, "images", name, file), root / name / file)
    os.makedirs(root / "Empty_Person")
    os.makedirs(root / ".cache")
    (root / ".cache" / "x.jpg").write_bytes(b"not a face")
    (root / "notes.txt").write_text("not an identity")
    first = next(iter(faces))
    (root / first / "readme.txt").write_text("not an image")
    (root / first / "EXTRA.JPG").write_bytes((root / first / faces[first][0]).read_bytes())  # case of the extension


# ---- folder per identity -> imgs.txt ----

def test_folder_per_identity_becomes_a_labelled_list(tmp_path):
    faces = demo_faces()
    identity_folders(tmp_path, faces)
    entries, names, empty = folder_to_list(str(tmp_path))
    assert names == sorted(faces) and empty == ["Empty_Person"]
    first = names[0]
    assert entries[:4] == [(f"{first}/{f}", 0) for f in sorted(faces[first] + ["EXTRA.JPG"])]
    assert (tmp_path / "label_map.txt").read_text().splitlines() == [f"{i} {n}" for i, n in enumerate(names)]
    assert (tmp_path / "property").read_text() == "3,112,112\n"
    image_list = read_image_list(str(tmp_path))
    assert list(zip(image_list.paths, image_list.labels.tolist())) == entries and image_list.num_classes == 3


def test_a_folder_without_identities_is_refused(tmp_path):
    (tmp_path / "loose.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no identity folder holds images"):
        folder_to_list(str(tmp_path))


def test_folder_to_list_to_training_end_to_end(tmp_path):
    import train_SFace_jittor
    identity_folders(tmp_path / "faces", demo_faces(identities=3, per_identity=4))
    assert run_tool("folder-to-list", "--root", tmp_path / "faces").returncode == 0
    assert run_tool("check-list", "--root", tmp_path / "faces").returncode == 0
    outdir = tmp_path / "run"
    train_SFace_jittor.main(["--data_root", str(tmp_path / "faces"), "--outdir", str(outdir), "--net",
                             "MobileFaceNet", "--batch_size", "4", "--workers_id", "cpu", "--num_workers", "2",
                             "--target", "none", "--max_steps", "2", "--log_freq", "1"])
    log = (outdir / "train.log").read_text()
    assert "imgs.txt: 13 images, 3 classes (3 with images), 3 batches of 4 per epoch" in log
    assert "done at step 2" in log


# ---- the list checker ----

def jpeg(height=112, width=112, value=100):
    return cv2.imencode(".jpg", np.full((height, width, 3), value, np.uint8))[1].tobytes()


def flawed_list(root):
    """A list with one problem of each kind, on lines 2, 4, 5, 6, 8 and 9."""
    for name, data in (("a.jpg", jpeg()), ("b.jpg", jpeg(value=50)), ("c.jpg", jpeg(value=20)),
                       ("garbage.jpg", b"not an image"), ("cut.jpg", jpeg()[:200]), ("small.jpg", jpeg(100, 100))):
        (root / name).write_bytes(data)
    os.makedirs(root / "folder.jpg")
    write_image_list(root, [("a.jpg", 0), ("missing.jpg", 0), ("b.jpg", 1), ("garbage.jpg", 1), ("cut.jpg", 1),
                            ("small.jpg", 2), ("c.jpg", 3), ("./a.jpg", 0), ("b.jpg", 2), ("folder.jpg", 3)],
                     "5,112,112\n")


def test_checker_reports_every_problem_with_its_line(tmp_path):
    flawed_list(tmp_path)
    check = check_list(str(tmp_path), num_workers=2)
    found = [(check.dataset.image_list.line_numbers[i], kind, reason) for i, kind, reason in check.problems]
    assert found == [(2, "missing", "cannot read: No such file or directory"),
                     (4, "undecodable", "not a decodable image"),
                     (5, "undecodable", "not a decodable image"),
                     (6, "wrong size", "size 100x100, expected 112x112"),
                     (8, "duplicate", "same file as line 1"),
                     (9, "duplicate", "same file as line 3 (there with label 1)"),
                     (10, "unreadable", "cannot read: Is a directory")]
    assert check.counts() == {"missing": 1, "unreadable": 1, "undecodable": 2, "wrong size": 1, "duplicate": 2}
    sizes = check.class_sizes()
    assert sizes.tolist() == [1, 1, 1]  # classes 0, 1 and 3; 2 and 4 have no usable image
    assert size_histogram(sizes) == [(1, 1, 3)]
    write_clean_list(check, str(tmp_path / "clean.txt"))
    assert (tmp_path / "clean.txt").read_text() == "a.jpg 0\nb.jpg 1\nc.jpg 3\n"
    os.replace(tmp_path / "clean.txt", tmp_path / "imgs.txt")
    assert check_list(str(tmp_path)).problems == []


def test_checker_uses_the_input_size_without_property(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    write_image_list(tmp_path, [("a.jpg", 0)])
    assert check_list(str(tmp_path), (112, 96)).problems == []  # cut to 112x96 as training does
    assert check_list(str(tmp_path), (96, 96)).problems[0][2] == "size 112x96, expected 96x96"


def test_an_empty_image_file_is_a_bad_image_everywhere_not_a_crash(tmp_path):
    """A zero-byte file is undecodable for the list checker, training, folder-to-list and evaluation alike."""
    (tmp_path / "a.jpg").write_bytes(jpeg())
    (tmp_path / "empty.jpg").write_bytes(b"")
    write_image_list(tmp_path, [("empty.jpg", 0), ("a.jpg", 0)])
    check = check_list(str(tmp_path), num_workers=1)
    assert [(i, kind, reason) for i, kind, reason in check.problems] == \
        [(0, "undecodable", "not a decodable image (an empty file)")]
    assert ImageListDataset(read_image_list(str(tmp_path))).load(0)[2] == "not a decodable image (an empty file)"
    os.makedirs(tmp_path / "faces" / "A")
    (tmp_path / "faces" / "A" / "0.jpg").write_bytes(b"")  # the first image, where the size is read
    (tmp_path / "faces" / "A" / "1.jpg").write_bytes(jpeg())
    assert folder_to_list(str(tmp_path / "faces"))[0] == [("A/0.jpg", 0), ("A/1.jpg", 0)]
    pairs = PairSet("x", [b""], ["x.bin image 0"], np.zeros((1, 2), np.int64), np.ones(1, bool))
    with pytest.raises(DataError, match="x.bin image 0: not a decodable image"):
        pairs.decode(0, (112, 112))


def test_an_image_opencv_refuses_to_decode_is_reported_by_check_list(tmp_path, capsys):
    from tools import data_tools
    (tmp_path / "a.jpg").write_bytes(jpeg())
    (tmp_path / "huge.png").write_bytes(oversized_png())  # its header claims 40000x40000 pixels
    write_image_list(tmp_path, [("a.jpg", 0), ("huge.png", 0)])
    assert data_tools.main(["check-list", "--root", str(tmp_path), "--num_workers", "1"]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'imgs.txt'}:2 (huge.png): not a decodable image" in out
    assert "2 lines, 1 usable images of 112x112; 0 missing, 0 unreadable, 1 undecodable" in out


def test_a_jpeg_is_judged_by_decoding_not_by_its_last_bytes():
    """Bytes after the end-of-image marker (appended metadata, padding) are harmless; a cut file is not."""
    for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 2]):
        data = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (112, 112, 3), np.uint8), params)[1]
        data = data.tobytes()
        assert decode_image(data + b"trailing \xff\xd8 bytes").shape == (112, 112, 3)
        assert decode_image(data + b"\x00" * 7) is not None
        assert all(decode_image(data[:cut]) is None for cut in range(3, len(data) - 1, 97)), params


def test_class_size_histogram_bins():
    sizes = np.array([0, 1, 1, 2, 3, 4, 9, 0])
    assert size_histogram(sizes) == [(1, 1, 2), (2, 3, 2), (4, 7, 1), (8, 15, 1)]


def test_check_list_command(tmp_path):
    flawed_list(tmp_path)
    result = run_tool("check-list", "--root", tmp_path, "--write_clean", tmp_path / "clean.txt")
    assert result.returncode == 1
    assert f"{tmp_path / 'imgs.txt'}:6 (small.jpg): size 100x100, expected 112x112" in result.stdout
    assert ("10 lines, 3 usable images of 112x112; 1 missing, 1 unreadable, 2 undecodable, 1 wrong size, "
            "2 duplicate") in result.stdout
    assert "min 1, median 1, max 1; 3 classes with one image, 2 of 5 with none" in result.stdout
    assert (tmp_path / "clean.txt").read_text().count("\n") == 3
    (tmp_path / "property").write_text(f"{10**12},112,112\n")  # classes counted by label present, not one by one
    result = run_tool("check-list", "--root", tmp_path)
    assert result.returncode == 1 and "3 classes with one image, 999999999997 of 1000000000000 with none" in \
        result.stdout
    (tmp_path / "imgs.txt").write_text("a.jpg 0\nb.jpg x\n")
    result = run_tool("check-list", "--root", tmp_path)
    assert result.returncode == 1 and "error: " in result.stderr and "imgs.txt:2: label 'x'" in result.stderr


@pytest.mark.parametrize("argv, message", [
    (["rec-to-images", "--rec", "r", "--out", "o", "--processes", "0"],
     "argument --processes: must be positive, got 0"),
    (["rec-to-images", "--rec", "r", "--out", "o", "--processes=-1"], "argument --processes: must be positive, got -1"),
    (["check-list", "--root", "r", "--num_workers", "0"], "argument --num_workers: must be positive, got 0"),
])
def test_a_count_of_workers_below_one_is_a_usage_error(argv, message, capsys):
    from tools import data_tools
    with pytest.raises(SystemExit) as stopped:
        data_tools.main(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


# ---- .bin <-> pairs folder ----

def test_pairs_folder_to_bin_keeps_each_slot_bytes(tmp_path):
    folder = small_pairs_folder(str(tmp_path / "pairs"))
    pairs_folder_to_bin(folder, str(tmp_path / "x.bin"))
    with open(tmp_path / "x.bin", "rb") as f:
        bins, issame = pickle.load(f)
    entries = parse_pairs_txt(os.path.join(folder, "pairs.txt"))
    assert issame == [e[5] for e in entries] and len(bins) == 2 * len(entries) == 40
    for k, (_, name1, n1, name2, n2, _) in enumerate(entries):
        for slot, (name, n) in enumerate(((name1, n1), (name2, n2))):
            path = os.path.join(folder, "images", name, f"{name}_{n:04d}.jpg")
            assert bins[2 * k + slot] == open(path, "rb").read()


def test_bin_to_pairs_folder_and_back_is_exact(tmp_path):
    folder = small_pairs_folder(str(tmp_path / "pairs"))
    pairs_folder_to_bin(folder, str(tmp_path / "a.bin"))
    bin_to_pairs_folder(str(tmp_path / "a.bin"), str(tmp_path / "unpacked"))
    assert (tmp_path / "unpacked" / "pairs.txt").read_text().splitlines()[:3] == \
        ["10\t1", "pair00000\t1\t2", "pair00001a\t1\tpair00001b\t1"]
    pairs_folder_to_bin(str(tmp_path / "unpacked"), str(tmp_path / "b.bin"))
    with open(tmp_path / "a.bin", "rb") as a, open(tmp_path / "b.bin", "rb") as b:
        assert pickle.load(b) == pickle.load(a)  # every slot's bytes and every label


def test_any_pair_count_unpacks_to_a_readable_folder(tmp_path):
    images = [jpeg(value=v) for v in range(10, 80, 10)]
    with open(tmp_path / "odd.bin", "wb") as f:
        pickle.dump((images[:6], [True, True, False]), f, protocol=2)
    bin_to_pairs_folder(str(tmp_path / "odd.bin"), str(tmp_path / "odd"))
    assert (tmp_path / "odd" / "pairs.txt").read_text().splitlines()[0] == "pair00000\t1\t2"  # no header fits
    pair_set = load_pairs_folder(str(tmp_path / "odd"))
    assert pair_set.issame.tolist() == [True, True, False]
    assert [pair_set.encoded[i] for i in pair_set.pairs.ravel()] == images[:6]
    assert pairs_header(np.array([True, False])) == "1\t1"
    assert pairs_header(np.array([True, True, False, False])) == "1\t2"
    assert pairs_header(np.array([True, False, True, True])) is None


def test_bin_commands(tmp_path):
    folder = small_pairs_folder(str(tmp_path / "pairs"))
    result = run_tool("pairs-to-bin", "--pairs_folder", folder, "--out", tmp_path / "x.bin")
    assert result.returncode == 0 and "x.bin: 20 pairs (10 same), 40 images" in result.stdout
    result = run_tool("bin-to-pairs", "--bin", tmp_path / "x.bin", "--out", tmp_path / "back")
    assert result.returncode == 0 and len(load_pairs_folder(str(tmp_path / "back")).issame) == 20
    result = run_tool("bin-to-pairs", "--bin", tmp_path / "nothing.bin", "--out", tmp_path / "back")
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "nothing.bin" in result.stderr


# ---- photos -> aligned faces ----

def demo_crop(name, number=1):
    return read_photo(os.path.join(DEMO_ROOT, "images", name, f"{name}_{number:04d}.jpg"))


def correlation(a, b):
    a, b = (np.asarray(x, float).ravel() - 127.5 for x in (a, b))
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


BAD_PHOTOS = {"blank.jpg": "no face found", "dot.png": "no face found", "huge.png": "not a decodable image",
              "cut.jpg": "not a decodable image", "notes.jpg": "not a decodable image"}


def raw_photos(raw):
    """raw/<identity>/<photo>: Gul in two photos, Toledo in one and, larger, in a photo with Gul, and the
    photos no face can be aligned from -> {(identity, aligned file name): (the crop it shows largest, another)}."""
    gul, toledo = demo_crop("Abdullah_Gul"), demo_crop("Alejandro_Toledo")
    for identity in ("Gul", "Toledo"):
        os.makedirs(raw / identity)
    photo_file(raw / "Gul" / "one.jpg", [gul], 1)
    photo_file(raw / "Gul" / "two.png", [demo_crop("Abdullah_Gul", 2)], 2)
    photo_file(raw / "Toledo" / "alone.jpg", [toledo], 3)
    photo_file(raw / "Toledo" / "with_gul.jpg", [toledo, gul], 4)
    bad = {"blank.jpg": jpeg(480, 640, 128),
           "dot.png": cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes(),
           "huge.png": oversized_png(), "cut.jpg": (raw / "Gul" / "one.jpg").read_bytes()[:4000],
           "notes.jpg": b"not a photo\n"}
    for name, data in bad.items():
        (raw / "Toledo" / name).write_bytes(data)
    (raw / "Toledo" / "notes.txt").write_text("not a photo, and not named as one")
    return {("Gul", "one.jpg"): (gul, toledo), ("Gul", "two.jpg"): (demo_crop("Abdullah_Gul", 2), toledo),
            ("Toledo", "alone.jpg"): (toledo, gul), ("Toledo", "with_gul.jpg"): (toledo, gul)}


def test_align_turns_folders_of_photos_into_a_training_root(tmp_path):
    shown = raw_photos(tmp_path / "raw")
    out = tmp_path / "faces"
    report, names, empty = align_identity_folders(str(tmp_path / "raw"), str(out), processes=1)
    assert (report.photos, report.aligned, report.existing, report.several) == (9, 4, 0, 1)
    assert names == ["Gul", "Toledo"] and empty == []
    bad = {os.path.relpath(path, tmp_path / "raw"): reason for path, reason in report.skipped}
    assert bad == {os.path.join("Toledo", name): reason for name, reason in BAD_PHOTOS.items()}
    listed = (out / BAD_PHOTOS_NAME).read_text().splitlines()
    assert sorted(listed) == sorted(f"{tmp_path / 'raw' / path}: {reason}" for path, reason in bad.items())
    assert (out / "property").read_text() == "2,112,112\n"
    image_list = read_image_list(str(out))
    assert list(zip(image_list.paths, image_list.labels.tolist())) == [
        ("Gul/one.jpg", 0), ("Gul/two.jpg", 0), ("Toledo/alone.jpg", 1), ("Toledo/with_gul.jpg", 1)]
    for (identity, name), (crop, other) in shown.items():
        face = decode_image((out / identity / name).read_bytes())
        assert face.shape == (112, 112, 3)
        # the largest face, aligned: its columns 8:104 are the demo crop's 0:96 (README of the shared data)
        assert correlation(face[:, 8:104], crop[:, :96]) > correlation(face[:, 8:104], other[:, :96]) + 0.1

    skipping = align_identity_folders(str(tmp_path / "raw"), str(tmp_path / "single"), processes=1,
                                      skip_multiple=True)[0]
    assert (skipping.aligned, skipping.several) == (3, 0)
    assert (str(tmp_path / "raw" / "Toledo" / "with_gul.jpg"), "2 faces found, none chosen") in skipping.skipped


def test_align_resumes_and_keeps_what_is_aligned(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "faces"
    raw_photos(raw)
    first = align_identity_folders(str(raw), str(out), processes=2)[0]
    kept = (out / "Gul" / "one.jpg").read_bytes()
    os.remove(out / "Toledo" / "alone.jpg")  # as if interrupted before it was written
    (out / "Toledo" / "alone.jpg.tmp12345").write_bytes(b"half a file, from a killed run")
    for name in BAD_PHOTOS:
        os.remove(raw / "Toledo" / name)
    again = align_identity_folders(str(raw), str(out), processes=2)[0]
    assert (first.aligned, again.aligned, again.existing, again.skipped) == (4, 1, 3, [])
    assert (out / "Gul" / "one.jpg").read_bytes() == kept
    assert decode_image((out / "Toledo" / "alone.jpg").read_bytes()).shape == (112, 112, 3)
    assert not (out / "Toledo" / "alone.jpg.tmp12345").exists()
    assert not (out / BAD_PHOTOS_NAME).exists()  # from the first run: its photos are gone
    assert len(read_image_list(str(out)).paths) == 4


def test_align_keeps_the_layout_of_a_pairs_folder(tmp_path):
    """Photos of the pairs' faces in the LFW layout -> the same layout aligned; a photo without a face becomes its
    middle square, so that every pair can still be scored."""
    raw = small_pairs_folder(str(tmp_path / "raw"))
    images = sorted(os.path.relpath(os.path.join(folder, name), raw)
                    for folder, _, names in os.walk(os.path.join(raw, "images")) for name in names)
    for seed, relative in enumerate(images):
        photo_file(os.path.join(raw, relative), [read_photo(os.path.join(raw, relative))], seed)
    blank = os.path.join(raw, images[0])
    with open(blank, "wb") as f:
        f.write(jpeg(250, 250, 90))
    report = align_pairs_folder(raw, str(tmp_path / "out"), processes=1)
    assert (report.photos, report.aligned, report.skipped) == (len(images), len(images) - 1, [])
    assert report.middle == [(blank, "no face found, middle square written")]
    assert (tmp_path / "out" / "pairs.txt").read_bytes() == open(os.path.join(raw, "pairs.txt"), "rb").read()
    pair_set = load_pairs_folder(str(tmp_path / "out"))
    assert len(pair_set.issame) == 20 and all(pair_set.decode(i, (112, 112)).shape == (112, 112, 3)
                                              for i in range(len(pair_set.encoded)))
    assert np.abs(decode_image((tmp_path / "out" / images[0]).read_bytes()).astype(int) - 90).max() <= 2
    assert BAD_PHOTOS_NAME in os.listdir(tmp_path / "out")


def test_align_command(tmp_path):
    raw_photos(tmp_path / "raw")
    result = run_tool("align", "--in", tmp_path / "raw", "--out", tmp_path / "faces", "--input_size", "112x96",
                      "--processes", "1")
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path / 'faces'}: 9 photos: 4 aligned, 0 already there, 5 skipped (1 with several faces: the " \
           f"largest taken)" in result.stdout and "2 identities, 112x96" in result.stdout
    assert f"skipped: {tmp_path / 'raw' / 'Toledo' / 'huge.png'}: not a decodable image" in result.stderr
    assert f"5 photos listed in {tmp_path / 'faces' / BAD_PHOTOS_NAME}" in result.stderr
    assert (tmp_path / "faces" / "property").read_text() == "2,112,96\n"
    assert decode_image((tmp_path / "faces" / "Gul" / "one.jpg").read_bytes()).shape == (112, 96, 3)
    pairs = small_pairs_folder(str(tmp_path / "pairs"))
    for args, status, message in (
            (["--in", tmp_path / "raw", "--out", tmp_path / "x", "--input_size", "128x128"], 2,
             "--input_size: no 5-point template for 128x128 faces"),
            (["--in", pairs, "--out", tmp_path / "x", "--skip_multiple"], 2,
             f"--skip_multiple: {pairs} is a pairs folder"),
            (["--in", tmp_path / "raw", "--out", tmp_path / "raw" / "faces"], 1,
             f"error: {tmp_path / 'raw' / 'faces'}: the output folder and the photo folder"),
            (["--in", tmp_path / "nowhere", "--out", tmp_path / "x"], 1,
             f"error: {tmp_path / 'nowhere'}: no such folder")):
        result = run_tool("align", *args)
        assert result.returncode == status and message in result.stderr, result.stderr
    first = parse_pairs_txt(os.path.join(pairs, "pairs.txt"))[0]
    with open(os.path.join(pairs, "images", first[1], f"{first[1]}_{first[2]:04d}.jpg"), "wb") as f:
        f.write(b"not a photo")
    result = run_tool("align", "--in", pairs, "--out", tmp_path / "aligned_pairs", "--processes", "1")
    assert result.returncode == 1 and "the pairs cannot be scored until every image" in result.stderr
