"""The image-list dataset and the batch loader: parsing, bad input, determinism, rank shares."""
import logging
import os

import cv2
import numpy as np
import pytest

from conftest import oversized_png, write_image_list
from data.image_list import ImageListDataset, read_image_list
from data.images import decode_image
from data.loader import BatchLoader, epoch_order
from data.text import DataError
from util.distributed import rank_share


def write_jpeg(path, height=112, width=112, value=128):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.full((height, width, 3), value, np.uint8)
    image[:, :, 0] = np.arange(width, dtype=np.uint8)[None, :]  # a blue (BGR) horizontal ramp, to see flips
    cv2.imwrite(str(path), image)


def synthetic_set(root, count=8, classes=2):
    entries = []
    for i in range(count):
        path = f"id{i % classes}/img {i}.jpg"  # a space in the path is allowed
        write_jpeg(root / path, value=10 * i)
        entries.append((path, i % classes))
    write_image_list(root, entries)
    return entries


# ---- the list ----

def test_reads_list_and_derives_class_count(tmp_path):
    synthetic_set(tmp_path, count=6, classes=3)
    image_list = read_image_list(str(tmp_path))
    assert image_list.num_classes == 3 and image_list.image_size is None
    assert image_list.paths[1] == "id1/img 1.jpg" and list(image_list.line_numbers) == [1, 2, 3, 4, 5, 6]


def test_property_sets_and_checks_the_class_count(tmp_path):
    entries = synthetic_set(tmp_path, count=4, classes=2)
    write_image_list(tmp_path, entries, "5,112,112\n")
    image_list = read_image_list(str(tmp_path))
    assert image_list.num_classes == 5 and image_list.image_size == (112, 112)
    write_image_list(tmp_path, entries + [("id0/img 0.jpg", 5)], "5,112,112\n")
    with pytest.raises(DataError, match=r"imgs.txt:5: label 5 is outside \[0, 5\)"):
        read_image_list(str(tmp_path))


@pytest.mark.parametrize("line,message", [
    ("just_a_path.jpg", r"imgs.txt:2: expected '<relative path> <label>'"),
    ("a.jpg seven", r"imgs.txt:2: label 'seven' is not an integer"),
    ("a.jpg -1", r"imgs.txt:2: label -1 is negative"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    (tmp_path / "imgs.txt").write_text(f"a.jpg 0\n{line}\n")
    with pytest.raises(DataError, match=message):
        read_image_list(str(tmp_path))


def test_a_line_with_a_field_too_many_is_refused_at_start_up(tmp_path):
    """The label is the last field and the path all before it, so paths may hold spaces; 'a.jpg 3 0' (the path
    'a.jpg 3' missing, 'a.jpg' there) is a malformed line, not a missing image."""
    entries = synthetic_set(tmp_path, count=2)
    write_jpeg(tmp_path / "a.jpg")
    write_image_list(tmp_path, entries + [("a.jpg 3", 1)])
    with pytest.raises(DataError, match=r"imgs.txt:3: expected '<relative path> <label>' \(the label is the last "
                                        r"field; .*the path is 'a.jpg 3', which does not exist, while 'a.jpg' does"):
        read_image_list(str(tmp_path))
    write_image_list(tmp_path, entries + [("a.jpg", 1), ("id1/img 9.jpg", 1)])  # the last one merely missing
    assert read_image_list(str(tmp_path)).paths == ["id0/img 0.jpg", "id1/img 1.jpg", "a.jpg", "id1/img 9.jpg"]


def test_a_list_may_start_with_a_byte_order_mark_and_other_encodings_are_named(tmp_path):
    synthetic_set(tmp_path, count=2)
    text = (tmp_path / "imgs.txt").read_bytes()
    (tmp_path / "imgs.txt").write_bytes(b"\xef\xbb\xbf" + text)
    (tmp_path / "property").write_bytes(b"\xef\xbb\xbf2,112,112\n")
    image_list = read_image_list(str(tmp_path))
    assert image_list.paths[0] == "id0/img 0.jpg" and image_list.num_classes == 2
    (tmp_path / "imgs.txt").write_bytes(text + "caf\u00e9.jpg 1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"imgs.txt:3: not UTF-8 text \(byte 0xe9 at column 4\); save the file as "
                                        "UTF-8"):
        read_image_list(str(tmp_path))


def test_bad_property_and_missing_or_empty_list(tmp_path):
    with pytest.raises(DataError, match="imgs.txt: no such file"):
        read_image_list(str(tmp_path))
    (tmp_path / "imgs.txt").write_text("\n\n")
    with pytest.raises(DataError, match="holds no images"):
        read_image_list(str(tmp_path))
    (tmp_path / "imgs.txt").write_text("a.jpg 0\n")
    (tmp_path / "property").write_text("ten,112,112")
    with pytest.raises(DataError, match="property:1: expected 'NUM_CLASS,HEIGHT,WIDTH'"):
        read_image_list(str(tmp_path))
    (tmp_path / "property").write_text("10,-112,0")  # every image would be the wrong size
    with pytest.raises(DataError, match="property:1: image size must be positive, got -112x0"):
        read_image_list(str(tmp_path))


# ---- images ----

def test_decode_refuses_truncated_and_garbage_bytes(tmp_path):
    write_jpeg(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    assert decode_image(data).shape == (112, 112, 3)
    assert decode_image(data + b"\x00\x00") is not None  # zero padding after the end marker is fine
    assert decode_image(data[: len(data) // 2]) is None
    assert decode_image(b"not an image at all") is None
    assert decode_image(oversized_png()) is None  # OpenCV refuses its 40000x40000 header


def test_images_are_rgb_chw_and_112x112_is_cropped_to_112x96(tmp_path):
    path = tmp_path / "a" / "x.jpg"
    os.makedirs(path.parent)
    bgr = np.zeros((112, 112, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    write_image_list(tmp_path, [("a/x.jpg", 0)])
    image, label, problem = ImageListDataset(read_image_list(str(tmp_path)), (112, 96)).load(0)
    assert problem is None and label == 0 and image.shape == (3, 112, 96) and image.dtype == np.float32
    assert image[0].mean() > 190 and image[2].mean() < 10


def test_bad_images_are_skipped_counted_and_named(tmp_path, caplog):
    entries = synthetic_set(tmp_path, count=8)
    (tmp_path / entries[1][0]).unlink()  # missing
    (tmp_path / entries[2][0]).write_bytes(b"garbage")  # undecodable
    good = (tmp_path / entries[3][0]).read_bytes()
    (tmp_path / entries[3][0]).write_bytes(good[:300])  # truncated
    write_jpeg(tmp_path / entries[4][0], height=100, width=100)  # wrong size
    (tmp_path / entries[5][0]).write_bytes(oversized_png())  # a header OpenCV refuses to decode
    dataset = ImageListDataset(read_image_list(str(tmp_path)))
    loader = BatchLoader(dataset, batch_size=8, seed=0, num_workers=2)
    log = logging.getLogger("sface")
    log.addHandler(caplog.handler)  # the training script's setup stops propagation to the root logger
    try:
        batches = list(loader.epoch(0))
    finally:
        log.removeHandler(caplog.handler)
    assert len(batches) == 1 and batches[0][0].shape == (3, 3, 112, 112)
    assert loader.skipped == 5
    text = caplog.text
    for line, reason in ((2, "cannot read"), (3, "not a decodable image"), (4, "not a decodable image"),
                         (5, "size 100x100, expected 112x112"), (6, "not a decodable image")):
        assert f"imgs.txt:{line} ({entries[line - 1][0]}): {reason}" in text


def test_strict_mode_stops_at_the_first_bad_image(tmp_path):
    entries = synthetic_set(tmp_path, count=4)
    (tmp_path / entries[2][0]).unlink()
    loader = BatchLoader(ImageListDataset(read_image_list(str(tmp_path))), 4, seed=0, strict=True)
    with pytest.raises(DataError, match=r"imgs.txt:3 \(id0/img 2.jpg\): cannot read"):
        list(loader.epoch(0))


def test_a_batch_with_no_readable_image_is_an_error(tmp_path):
    entries = synthetic_set(tmp_path, count=2)
    for path, _ in entries:
        (tmp_path / path).unlink()
    loader = BatchLoader(ImageListDataset(read_image_list(str(tmp_path))), 2, seed=0)
    with pytest.raises(DataError, match="every image of a batch failed to load"):
        list(loader.epoch(0))


# ---- order, flips, shares ----

def test_epochs_are_deterministic_permutations_with_flips(tmp_path):
    synthetic_set(tmp_path, count=8)
    dataset = ImageListDataset(read_image_list(str(tmp_path)))
    order, flips = epoch_order(8, seed=3, epoch=1)
    assert sorted(order) == list(range(8)) and flips.dtype == bool
    assert not np.array_equal(order, epoch_order(8, seed=3, epoch=2)[0])
    loader = BatchLoader(dataset, 4, seed=3, num_workers=2)
    first = [x.copy() for x, _ in loader.epoch(1)]
    again = [x.copy() for x, _ in loader.epoch(1)]
    resumed = [x.copy() for x, _ in loader.epoch(1, start_batch=1)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert np.array_equal(resumed[0], first[1])
    for position, index in enumerate(order[:4]):  # the ramp runs left to right unless flipped
        ramp = first[0][position, 2, 0]  # blue channel, row 0
        assert (ramp[0] > ramp[-1]) == bool(flips[index])


def test_rank_shares_split_every_batch_exactly():
    for batch in (7, 8, 256):
        for world in (1, 2, 3, 5):
            shares = [rank_share(batch, r, world) for r in range(world)]
            assert shares[0][0] == 0 and shares[-1][1] == batch
            assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
            assert max(s[1] - s[0] for s in shares) - min(s[1] - s[0] for s in shares) <= 1


def test_ranks_read_disjoint_parts_of_each_batch(tmp_path):
    synthetic_set(tmp_path, count=6, classes=6)
    dataset = ImageListDataset(read_image_list(str(tmp_path)))
    seen = []
    for rank in range(3):
        loader = BatchLoader(dataset, 6, seed=0, rank=rank, world_size=3, num_workers=1, flip=False)
        seen.extend(labels.tolist() for _, labels in loader.epoch(0))
    assert sorted(sum(seen, [])) == list(range(6))


def test_too_few_images_for_a_batch(tmp_path):
    synthetic_set(tmp_path, count=3)
    with pytest.raises(DataError, match="fewer than one batch of 4"):
        BatchLoader(ImageListDataset(read_image_list(str(tmp_path))), 4, seed=0)
