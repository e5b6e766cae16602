"""InsightFace .rec/.idx without mxnet: the reader, conversion to JPEG files, and training straight from a .rec.

The files are made by a writer of these tests that follows mxnet's recordio.pack and
dmlc's RecordIOWriter, from real LFW faces of the embedded demo and a few synthetic images.
"""
import os
import shutil
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import DEMO_ROOT, REPO_ROOT
from data.convert import rec_to_images
from data.image_list import ImageListDataset, read_image_list
from data.loader import BatchLoader
from data.rec import MAGIC, RecDataset, RecordError, image_records, read_idx, read_record
from data.text import DataError
from data.training_sets import open_training_set

MAGIC_WORD = struct.pack("<I", MAGIC)


# ---- a writer of .rec/.idx files ----

def pack(labels, image, key=0):
    """mxnet recordio.pack: header <IfQQ; several labels go after it as float32, with flag = their count."""
    if len(labels) == 1:
        return struct.pack("<IfQQ", 0, labels[0], key, 0) + image
    return struct.pack("<IfQQ", len(labels), 0.0, key, 0) + struct.pack(f"<{len(labels)}f", *labels) + image


def frame(payload):
    """dmlc RecordIOWriter::WriteRecord: the payload split where the magic word sits at a 4-byte boundary."""
    parts, start = [], 0
    for i in range(0, len(payload) // 4 * 4, 4):
        if payload[i:i + 4] == MAGIC_WORD:
            parts.append(((1 if start == 0 else 2), payload[start:i]))
            start = i + 4
    parts.append(((3 if start else 0), payload[start:]))
    out = b"".join(struct.pack("<II", MAGIC, flag << 29 | len(data)) + data for flag, data in parts)
    return out + b"\x00" * (-len(payload) % 4)


def write_rec(root, payloads):
    """{key: payload} -> root/train.rec + root/train.idx; -> {key: offset}."""
    os.makedirs(root, exist_ok=True)
    offsets, position = {}, 0
    with open(os.path.join(root, "train.rec"), "wb") as f:
        for key, payload in payloads.items():
            offsets[key] = position
            position += f.write(frame(payload))
    with open(os.path.join(root, "train.idx"), "w") as f:
        f.writelines(f"{key}\t{offset}\n" for key, offset in offsets.items())
    return offsets


def insightface_rec(root, samples, header=True, multi_label=False):
    """samples [(image bytes, label)] -> a .rec like the data zoo's; -> {key: (image, label)} of the images.

    With `header`, record 0 holds (id_start, id_end), images are 1..id_start-1 and one record per
    identity follows; without, images are records 0... `multi_label` gives each image three labels.
    """
    first = 1 if header else 0
    images = {first + i: sample for i, sample in enumerate(samples)}
    payloads = {}
    if header:
        id_start = first + len(samples)
        identities = sorted({label for _, label in samples})
        payloads[0] = pack([id_start, id_start + len(identities)], b"")
    for key, (image, label) in images.items():
        payloads[key] = pack([label, 0.25 * key, 7.0] if multi_label else [label], image, key)
    if header:
        for n, label in enumerate(identities):
            keys = [k for k, (_, lab) in images.items() if lab == label]
            payloads[id_start + n] = pack([min(keys), max(keys) + 1], b"")
    write_rec(root, payloads)
    return images


def synthetic_jpeg(value, magic_inside=False):
    image = np.full((112, 112, 3), value, np.uint8)
    image[:, :10] = (255, 0, 0)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    if magic_inside:  # a comment segment holding the magic word twice, 4-byte aligned in the payload
        comment = b"xx" + MAGIC_WORD * 2 + b"zz"
        data = data[:2] + b"\xff\xfe" + struct.pack(">H", 2 + len(comment)) + comment + data[2:]
    return data


def face_samples(classes=3, per_class=3):
    """Real LFW JPEGs of the demo (labels 0..classes-1), a PNG and JPEGs with the magic word inside."""
    with open(os.path.join(DEMO_ROOT, "imgs.txt")) as f:
        demo = [line.split() for line in f]
    samples = []
    for label in range(classes):
        paths = [p for p, lab in demo if int(lab) == label][:per_class]
        samples.extend((open(os.path.join(DEMO_ROOT, p), "rb").read(), label) for p in paths)
    png = cv2.imencode(".png", np.full((112, 112, 3), 90, np.uint8))[1].tobytes()
    return samples + [(synthetic_jpeg(30, magic_inside=True), 1), (png, 0), (synthetic_jpeg(200), classes - 1)]


def output_files(out):
    """{relative path: bytes} of everything under a conversion's output folder."""
    files = {}
    for folder, _, names in os.walk(out):
        for name in names:
            path = os.path.join(folder, name)
            files[os.path.relpath(path, out)] = open(path, "rb").read()
    return files


# ---- the reader ----

def test_records_split_at_the_magic_word_are_joined(tmp_path):
    payload = pack([3.0], synthetic_jpeg(30, magic_inside=True))
    framed = frame(payload)
    assert payload.count(MAGIC_WORD) == 2 and framed.count(MAGIC_WORD) == 3  # first, empty middle, last part
    offsets = write_rec(tmp_path, {0: pack([1.0], b"x"), 1: payload})
    fd = os.open(tmp_path / "train.rec", os.O_RDONLY)
    try:
        assert read_record(fd, offsets[1]) == payload
        with pytest.raises(RecordError, match="bad magic"):
            read_record(fd, offsets[1] + 4)
    finally:
        os.close(fd)


def test_idx_lines_are_checked(tmp_path):
    (tmp_path / "train.idx").write_text("1\t100\n0\t0\n")
    keys, offsets = read_idx(str(tmp_path / "train.idx"))
    assert keys.tolist() == [0, 1] and offsets.tolist() == [0, 100]
    (tmp_path / "train.idx").write_text("0\t0\n1\t100\n2 x\n")
    with pytest.raises(DataError, match=r"train.idx:3: expected '<key><TAB><offset>'"):
        read_idx(str(tmp_path / "train.idx"))
    (tmp_path / "train.idx").write_text("0\t0\n1\t100\n1\t200\n")
    with pytest.raises(DataError, match="train.idx: key 1 is listed more than once"):
        read_idx(str(tmp_path / "train.idx"))
    (tmp_path / "train.idx").write_text(f"0\t{2 ** 64 - 1}\n{2 ** 63}\t0\n")  # the offset fits 64 bits, the key not
    with pytest.raises(DataError, match=r"train.idx:2: expected '<key><TAB><offset>' \(two non-negative 64-bit"):
        read_idx(str(tmp_path / "train.idx"))


def test_header_record_is_told_apart_from_a_multi_label_image(tmp_path):
    samples = face_samples(classes=2, per_class=2)
    insightface_rec(tmp_path / "h", samples, header=True, multi_label=True)
    keys, _ = image_records(str(tmp_path / "h" / "train.rec"), str(tmp_path / "h" / "train.idx"))
    assert keys.tolist() == list(range(1, len(samples) + 1))  # identity records left out
    insightface_rec(tmp_path / "n", samples, header=False, multi_label=True)
    keys, _ = image_records(str(tmp_path / "n" / "train.rec"), str(tmp_path / "n" / "train.idx"))
    assert keys.tolist() == list(range(len(samples)))  # record 0 is an image, though it has several labels


# ---- conversion ----

@pytest.mark.parametrize("header,multi_label,workers", [(True, False, 1), (False, False, 1), (True, True, 2),
                                                        (False, True, 1)])
def test_conversion_writes_identical_bytes_and_right_labels(tmp_path, header, multi_label, workers):
    samples = face_samples()
    images = insightface_rec(tmp_path / "rec", samples, header, multi_label)
    out = tmp_path / "out"
    report = rec_to_images(str(tmp_path / "rec"), str(out), workers)
    assert (report.images, report.converted, report.existing, report.bad) == (len(samples), len(samples), 0, [])
    assert report.num_classes == 3 and report.image_size == (112, 112)
    for key, (image, label) in images.items():
        assert (out / str(label) / f"{key}.jpg").read_bytes() == image
    expected = [f"{label}/{key}.jpg {label}" for key, (_, label) in sorted(images.items())]
    assert (out / "imgs.txt").read_text().splitlines() == expected
    assert (out / "property").read_text() == "3,112,112\n"
    assert len(read_image_list(str(out)).paths) == len(samples)


def test_truncated_and_corrupt_records_are_reported_and_the_rest_kept(tmp_path):
    samples = face_samples()
    images = insightface_rec(tmp_path / "rec", samples, header=False)
    rec = tmp_path / "rec" / "train.rec"
    offsets = read_idx(str(tmp_path / "rec" / "train.idx"))[1].tolist()
    data = bytearray(rec.read_bytes())
    data[offsets[4]:offsets[4] + 4] = b"\x00" * 4  # record 4: bad magic
    rec.write_bytes(bytes(data[:offsets[-1] + 100]))  # the last record loses most of its bytes
    last = len(samples) - 1
    report = rec_to_images(str(tmp_path / "rec"), str(tmp_path / "out"), processes=2)
    assert [(key, offset) for key, offset, _ in report.bad] == [(4, offsets[4]), (last, offsets[-1])]
    assert "bad magic 0x00000000" in report.bad[0][2] and "truncated: 92 of" in report.bad[1][2]
    assert report.converted == len(samples) - 2
    listed = (tmp_path / "out" / "bad_records.txt").read_text().splitlines()
    assert listed[0].startswith(f"{rec} record 4 (offset {offsets[4]}): bad magic")
    assert listed[1].startswith(f"{rec} record {last} (offset {offsets[-1]}): truncated")
    kept = read_image_list(str(tmp_path / "out"))
    assert len(kept.paths) == len(samples) - 2
    for path, label in zip(kept.paths, kept.labels):
        key = int(os.path.splitext(os.path.basename(path))[0])
        assert images[key][1] == label and (tmp_path / "out" / path).read_bytes() == images[key][0]


def test_an_interrupted_conversion_resumed_matches_an_uninterrupted_one(tmp_path):
    samples = face_samples()
    insightface_rec(tmp_path / "rec", samples, header=True)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    rec_to_images(str(tmp_path / "rec"), str(straight), processes=1)
    expected = output_files(straight)

    # what a run killed mid-way leaves: some images done, one half-written under its temporary
    # name, one cut short under its final name (a crash before the data reached the disk), no list
    shutil.copytree(straight, resumed)
    for name in ("imgs.txt", "property"):
        os.remove(resumed / name)
    images = sorted(p for p in expected if p.endswith(".jpg"))
    for path in images[6:]:
        os.remove(resumed / path)
    (resumed / (images[6] + ".tmp4242")).write_bytes(expected[images[6]][:500])
    (resumed / images[5]).write_bytes(expected[images[5]][:300])

    report = rec_to_images(str(tmp_path / "rec"), str(resumed), processes=2)
    assert (report.converted, report.existing) == (len(images) - 5, 5)
    assert output_files(resumed) == expected
    again = rec_to_images(str(tmp_path / "rec"), str(resumed), processes=1)
    assert (again.converted, again.existing) == (0, len(images)) and output_files(resumed) == expected


def test_stray_files_in_the_output_fail_the_count_check(tmp_path):
    samples = face_samples()
    insightface_rec(tmp_path / "rec", samples, header=True)
    os.makedirs(tmp_path / "out" / "0")
    (tmp_path / "out" / "0" / "999.jpg").write_bytes(b"from another set")
    count = len(samples)
    with pytest.raises(DataError, match=f"out: {count + 1} files in the label folders for {count} converted images"):
        rec_to_images(str(tmp_path / "rec"), str(tmp_path / "out"), processes=1)
    assert not (tmp_path / "out" / "imgs.txt").exists()


# ---- training straight from the .rec ----

def test_rec_dataset_serves_what_the_converted_list_serves(tmp_path):
    insightface_rec(tmp_path / "rec", face_samples(), header=True, multi_label=True)
    rec_to_images(str(tmp_path / "rec"), str(tmp_path / "out"), processes=1)
    from_rec = open_training_set(str(tmp_path / "rec"), (112, 96))
    from_list = open_training_set(str(tmp_path / "out"), (112, 96))
    assert isinstance(from_rec, RecDataset) and isinstance(from_list, ImageListDataset)
    assert len(from_rec) == len(from_list) and from_rec.num_classes == from_list.num_classes == 3
    np.testing.assert_array_equal(from_rec.labels, from_list.labels)
    for index in range(len(from_rec)):
        image, label, problem = from_rec.load(index, flip=True)
        expected, expected_label, _ = from_list.load(index, flip=True)
        assert problem is None and label == expected_label
        np.testing.assert_array_equal(image, expected)
    assert from_rec.describe(0) == f"{tmp_path / 'rec' / 'train.rec'} record 1 (offset {from_rec.offsets[0]})"


def test_rec_dataset_skips_bad_records_and_checks_property(tmp_path):
    samples = face_samples()
    insightface_rec(tmp_path, samples, header=False)
    offsets = read_idx(str(tmp_path / "train.idx"))[1].tolist()
    rec = tmp_path / "train.rec"
    rec.write_bytes(rec.read_bytes()[:offsets[-1] + 4])  # the last record is cut inside its frame
    dataset = RecDataset(str(tmp_path))
    assert dataset.labels[-1] == -1 and dataset.num_classes == 3
    image, _, problem = dataset.load(len(samples) - 1)
    assert image is None and "inside the record" in problem
    loader = BatchLoader(dataset, len(samples), seed=0, num_workers=2)
    assert len(next(loader.epoch(0))[1]) == len(samples) - 1 and loader.skipped == 1
    (tmp_path / "property").write_text("2,112,112\n")
    with pytest.raises(DataError, match=r"train.rec record 6 \(offset \d+\): label 2 is outside \[0, 2\)"):
        RecDataset(str(tmp_path))


def test_a_data_root_needs_a_list_or_a_rec(tmp_path):
    with pytest.raises(DataError, match="holds neither imgs.txt nor train.rec \\+ train.idx"):
        open_training_set(str(tmp_path))


def test_training_runs_straight_from_a_rec_folder(tmp_path):
    import train_SFace_jittor
    insightface_rec(tmp_path / "rec", face_samples(), header=True, multi_label=True)
    outdir = tmp_path / "run"
    train_SFace_jittor.main(["--data_root", str(tmp_path / "rec"), "--outdir", str(outdir), "--net", "MobileFaceNet",
                             "--batch_size", "4", "--workers_id", "cpu", "--num_workers", "2", "--target", "none",
                             "--max_steps", "2", "--log_freq", "1"])
    log = (outdir / "train.log").read_text()
    assert "train.rec: 12 images, 3 classes (3 with images), 3 batches of 4 per epoch" in log
    assert "done at step 2" in log


def test_rec_to_images_command(tmp_path):
    samples = face_samples()
    insightface_rec(tmp_path / "rec", samples, header=True)
    tool = [sys.executable, os.path.join(REPO_ROOT, "tools", "data_tools.py"), "rec-to-images", "--rec",
            str(tmp_path / "rec"), "--out", str(tmp_path / "out"), "--processes", "2"]
    result = subprocess.run(tool, capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""
    assert f"{len(samples)} image records: {len(samples)} converted, 0 already there, 0 bad; 3 classes, 112x112" \
        in result.stdout
    rec = tmp_path / "rec" / "train.rec"
    offsets = read_idx(str(tmp_path / "rec" / "train.idx"))[1].tolist()
    rec.write_bytes(rec.read_bytes()[:offsets[3] + 50])  # image record 3 and everything after it cut off
    result = subprocess.run(tool[:-3] + [str(tmp_path / "cut"), "--processes", "2"], capture_output=True, text=True)
    assert result.returncode == 1
    assert f"2 converted, 0 already there, {len(samples) - 2} bad" in result.stdout
    assert f"bad record: {rec} record 3 (offset {offsets[3]}): truncated: 42 of" in result.stderr
    assert f"bad record: {rec} record 4 (offset {offsets[4]}): the offset is beyond the last byte of the file " \
        f"({offsets[3] + 50} bytes)" in result.stderr


def test_an_offset_past_the_end_of_the_rec_is_a_bad_record(tmp_path, capsys):
    """Any 64-bit offset an index may hold: one beyond the file is a bad record for the converter and for training."""
    from tools import data_tools
    samples = face_samples()
    insightface_rec(tmp_path / "rec", samples, header=False)  # keys 0.. are the images, in order
    rec, idx = tmp_path / "rec" / "train.rec", tmp_path / "rec" / "train.idx"
    size = rec.stat().st_size
    beyond = {2: 2 ** 64 - 1, 5: 2 ** 63 - 1, 7: size}
    idx.write_text("".join(f"{key}\t{beyond.get(key, offset)}\n" for key, offset in
                           zip(*(a.tolist() for a in read_idx(str(idx))))))
    assert data_tools.main(["rec-to-images", "--rec", str(tmp_path / "rec"), "--out", str(tmp_path / "out"),
                            "--processes", "1"]) == 1
    printed = capsys.readouterr()
    assert f"{len(samples) - 3} converted, 0 already there, 3 bad" in printed.out
    reason = f"the offset is beyond the last byte of the file ({size} bytes)"
    for key, offset in beyond.items():
        assert f"bad record: {rec} record {key} (offset {offset}): {reason}" in printed.err
    dataset = RecDataset(str(tmp_path / "rec"))
    assert dataset.labels[list(beyond)].tolist() == [-1] * 3 and dataset.load(2) == (None, -1, reason)
    loader = BatchLoader(dataset, len(samples), seed=0, num_workers=2)
    assert len(next(loader.epoch(0))[1]) == len(samples) - 3 and loader.skipped == 3
