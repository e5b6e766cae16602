"""--label_noise: deterministic closed-set flips of exactly round(P N) labels, never to the own class;
--label_noise_open: exactly round(P N) images replaced by outsiders' images, labels kept."""
import os

import numpy as np
import pytest

from conftest import write_image_list
from data.image_list import ImageListDataset, read_image_list
from data.label_noise import OPEN_SET_LIST, apply_noise, flip_labels, write_noise_lists
from data.text import DataError
from train.config import SFACE, configure


@pytest.mark.parametrize("n,classes,fraction", [(1868, 100, 0.2), (1868, 100, 0.4), (7, 2, 0.5), (10, 3, 0.25),
                                                (1000, 10, 0.0), (5, 5, 0.99)])
def test_exactly_round_p_n_labels_flip_each_to_another_class(n, classes, fraction):
    labels = np.random.default_rng(0).integers(0, classes, n)
    noisy, flipped = flip_labels(labels, classes, fraction, seed=1337)
    assert len(flipped) == round(fraction * n) == np.sum(noisy != labels)
    assert np.all(noisy[flipped] != labels[flipped]) and np.all((noisy >= 0) & (noisy < classes))
    unchanged = np.setdiff1d(np.arange(n), flipped)
    assert np.array_equal(noisy[unchanged], labels[unchanged]) and np.all(np.diff(flipped) > 0)


def test_flips_come_from_the_seed_alone():
    labels = np.arange(500) % 20
    first, again = flip_labels(labels, 20, 0.3, seed=7), flip_labels(labels.copy(), 20, 0.3, seed=7)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    other = flip_labels(labels, 20, 0.3, seed=8)
    assert not np.array_equal(first[1], other[1])


def test_new_labels_are_spread_over_the_other_classes():
    labels = np.zeros(20000, np.int64)
    noisy, flipped = flip_labels(labels, 5, 0.5, seed=0)
    counts = np.bincount(noisy[flipped], minlength=5)
    assert counts[0] == 0 and np.all(np.abs(counts[1:] - 2500) < 200)


def test_unlabelled_images_are_never_flipped():
    labels = np.array([-1, 0, 1, -1, 2, 0, 1, 2])
    noisy, flipped = flip_labels(labels, 3, 0.5, seed=1)
    assert len(flipped) == 3 and np.all(labels[flipped] >= 0) and np.all(noisy[[0, 3]] == -1)


def test_a_dataset_loads_its_flipped_labels_and_lists_them(tmp_path):
    write_image_list(tmp_path, [(f"{i}.jpg", i % 4) for i in range(10)], "4,112,112\n")
    dataset = ImageListDataset(read_image_list(str(tmp_path)))
    clean = dataset.labels.copy()
    noise = apply_noise(dataset, 0.3, 0.0, seed=5)
    flipped = noise.flipped
    assert len(flipped) == 3 and np.array_equal(noise.original_labels, clean[flipped]) and not len(noise.replaced)
    assert all(dataset.load(int(i))[1] != clean[i] for i in flipped)  # the label the loader hands out
    assert write_noise_lists(str(tmp_path), dataset, noise) == [str(tmp_path / "label_noise.txt")]
    lines = (tmp_path / "label_noise.txt").read_text().splitlines()
    assert lines[0].startswith("#") and len(lines) == 4
    index, before, after, where = lines[1].split(" ", 3)
    assert int(before) == clean[int(index)] and int(after) == dataset.labels[int(index)] and where.endswith(".jpg)")


@pytest.mark.parametrize("flag", ["--label_noise", "--label_noise_open"])
@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5"])
def test_a_fraction_outside_0_1_is_a_usage_error(flag, value, capsys):
    with pytest.raises(SystemExit) as stopped:
        configure(SFACE, ["--data_root", "/no/such/folder", flag, value])
    assert stopped.value.code == 2 and f"{flag} must be a fraction in [0, 1)" in capsys.readouterr().err
    assert configure(SFACE, ["--data_root", "/x", flag, "0.2"]).cfg[flag[2:]] == 0.2


def test_one_class_cannot_be_flipped_and_the_list_is_named(tmp_path):
    write_image_list(tmp_path, [(f"{i}.jpg", 0) for i in range(4)])
    dataset = ImageListDataset(read_image_list(str(tmp_path)))
    with pytest.raises(DataError, match=r"imgs.txt: --label_noise needs at least 2 classes"):
        apply_noise(dataset, 0.5, 0.0, seed=0)


def open_set_root(root, outsiders=6):
    """10 listed images of 4 classes, and `outsiders` images of people outside them listed in open_set.txt."""
    os.makedirs(root / "train")
    os.makedirs(root / "open_set")
    write_image_list(root, [(f"train/{i}.jpg", i % 4) for i in range(10)], "4,112,112\n")
    for i in range(10):
        (root / "train" / f"{i}.jpg").write_bytes(b"listed")
    for i in range(outsiders):
        (root / "open_set" / f"out{i}.jpg").write_bytes(b"outsider")
    (root / OPEN_SET_LIST).write_text("".join(f"open_set/out{i}.jpg\n" for i in range(outsiders)))
    return ImageListDataset(read_image_list(str(root)))


def test_open_set_noise_puts_outsiders_in_place_of_listed_images_keeping_their_labels(tmp_path):
    dataset = open_set_root(tmp_path)
    labels, listed = dataset.labels.copy(), list(dataset.image_list.paths)
    noise = apply_noise(dataset, 0.0, 0.3, seed=5)
    replaced = noise.replaced
    assert len(replaced) == 3 and noise.original_images == [listed[i] for i in replaced] and not len(noise.flipped)
    assert np.array_equal(dataset.labels, labels)
    now = dataset.image_list.paths
    assert all(now[i].startswith("open_set/") for i in replaced) and len({now[i] for i in replaced}) == 3
    assert all(now[i] == listed[i] for i in range(10) if i not in replaced)
    assert dataset.read_bytes(int(replaced[0])) == b"outsider"  # what the loader reads
    again = open_set_root(tmp_path / "again")
    apply_noise(again, 0.0, 0.3, seed=5)
    assert again.image_list.paths == now  # the seed alone decides: a resumed run meets the same images
    assert write_noise_lists(str(tmp_path), dataset, noise) == [str(tmp_path / "label_noise_open.txt")]
    lines = (tmp_path / "label_noise_open.txt").read_text().splitlines()
    assert len(lines) == 4 and lines[1].split() == [str(replaced[0]), str(labels[replaced[0]]), now[replaced[0]],
                                                    listed[replaced[0]]]


def test_open_set_noise_needs_enough_listed_outsiders(tmp_path):
    dataset = open_set_root(tmp_path, outsiders=2)
    with pytest.raises(DataError, match=f"{tmp_path / OPEN_SET_LIST}: 2 outsiders' images, fewer than the 3"):
        apply_noise(dataset, 0.0, 0.3, seed=5)
    os.remove(tmp_path / OPEN_SET_LIST)
    with pytest.raises(DataError, match=f"{tmp_path / OPEN_SET_LIST}: no such file"):
        apply_noise(dataset, 0.0, 0.3, seed=5)
