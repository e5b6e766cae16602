"""tools/data_tools.py lfw-protocol: an identity-disjoint training set, test target and open-set pool cut from LFW."""
import json
import os

import numpy as np
import pytest

from conftest import DEMO_ROOT, shared_path
from data.image_list import ImageListDataset, read_image_list
from data.label_noise import OPEN_SET_LIST, apply_noise
from data.lfw_protocol import RECORD_NAME, TEST_TARGET, write_protocol
from data.text import DataError
from data.verification_sets import load_target, parse_pairs_txt
from tools import data_tools


def person(path):
    """The person of a protocol path (train/<Name>/..., open_set/<Name>/...)."""
    return path.split("/")[1]


def held_out_people(root):
    return {name for entry in parse_pairs_txt(os.path.join(root, TEST_TARGET, "pairs.txt")) for name in entry[1:4:2]}


@pytest.fixture(scope="module")
def lfw_protocol(tmp_path_factory):
    """The protocol of the shared aligned LFW with folds 1-2 held out and 3 images a person at least."""
    out = tmp_path_factory.mktemp("protocol") / "lfw_protocol"
    data_tools.main(["lfw-protocol", "--lfw", shared_path("lfw"), "--out", str(out)])
    return out


def test_the_lfw_protocol_holds_out_its_test_people_entirely(lfw_protocol):
    record = json.loads((lfw_protocol / RECORD_NAME).read_text())
    assert (record["train_people"], record["train_images"], record["test_pairs"]) == (720, 6022, 1200)
    assert record["test_folds"] == [1, 2] and record["min_images"] == 3
    image_list = read_image_list(str(lfw_protocol))
    train_people = {person(p) for p in image_list.paths}
    assert image_list.num_classes == len(train_people) == 720
    assert all(os.path.isfile(lfw_protocol / p) for p in image_list.paths)
    counts = np.bincount(image_list.labels)
    assert counts.min() >= 3 and counts.sum() == 6022
    test_people = held_out_people(lfw_protocol)
    pool = [line for line in (lfw_protocol / OPEN_SET_LIST).read_text().splitlines() if line]
    pool_people = {person(p) for p in pool}
    assert not train_people & test_people and not pool_people & test_people and not pool_people & train_people
    assert len(pool) == record["open_set_images"] and len(pool_people) == record["open_set_people"]
    target = load_target(TEST_TARGET, str(lfw_protocol))  # what training and evaluation score
    assert len(target.issame) == 1200 and target.issame.sum() == 600
    official = parse_pairs_txt(shared_path("lfw", "pairs.txt"))[:1200]  # folds 1 and 2
    assert [e[1:] for e in parse_pairs_txt(str(lfw_protocol / TEST_TARGET / "pairs.txt"))] == [e[1:] for e in official]


def test_open_set_noise_draws_outsiders_never_test_people(lfw_protocol):
    dataset = ImageListDataset(read_image_list(str(lfw_protocol)))
    noise = apply_noise(dataset, 0.0, 0.2, seed=3)
    assert len(noise.replaced) == round(0.2 * 6022)
    drawn = {person(dataset.image_list.paths[i]) for i in noise.replaced}
    assert not drawn & held_out_people(lfw_protocol) and not drawn & {person(p) for p in noise.original_images}
    assert all(dataset.image_list.paths[i].startswith("open_set/") for i in noise.replaced)


def tiny_lfw(root, extra_people=()):
    """An LFW-layout folder of demo faces: 6 people, 10 folds of 1 same and 1 different pair each (header `10 1`)."""
    with open(os.path.join(DEMO_ROOT, "imgs.txt")) as f:
        by_person = {}
        for line in f:
            path = line.split()[0]
            by_person.setdefault(path.split("/")[1], []).append(path)
    names = sorted(by_person)[:6] + list(extra_people)
    for name in names:
        sources = by_person.get(name) or by_person[sorted(by_person)[0]]
        os.makedirs(root / "images" / name)
        for n, source in enumerate(sources[:4], 1):
            (root / "images" / name / f"{name}_{n:04d}.jpg").write_bytes(open(os.path.join(DEMO_ROOT, source), "rb")
                                                                         .read())
    a, b, c, d, e, f = names[:6]
    folds = [(a, b), (c, d), (e, f)] + [(a, c)] * 7  # a fold's same pair is of its first person
    lines = ["10\t1"] + [line for x, y in folds for line in (f"{x}\t1\t2", f"{x}\t1\t{y}\t1")]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root, names


def test_a_tiny_lfw_gives_the_counts_it_should(tmp_path):
    lfw, names = tiny_lfw(tmp_path / "lfw")
    record = write_protocol(str(lfw), str(tmp_path / "out"), [2, 3], min_images=3)
    # folds 2 and 3 name c, d, e, f: a and b train (every demo person has 4 images here)
    assert (record["train_people"], record["train_images"], record["test_pairs"]) == (2, 8, 4)
    assert sorted({person(p) for p in read_image_list(str(tmp_path / "out")).paths}) == names[:2]
    assert record["open_set_images"] == 0


@pytest.mark.parametrize("change,message", [
    ("folds", "test folds must be numbers from 1 to 10, got \\[0\\]"),
    ("all", "every fold is a test fold"),
    ("full", "not empty; the protocol is written into a new or empty folder"),
    ("missing", "is not in"),
    ("header", "expected the View 2 header '10 N'"),
    ("spelling", "would be in training and in the test folds"),
])
def test_what_cannot_make_a_protocol_is_refused_by_name(tmp_path, change, message):
    lfw, names = tiny_lfw(tmp_path / "lfw", extra_people=["Zed_Q"] if change == "spelling" else ())
    out, folds = tmp_path / "out", [1]
    if change == "folds":
        folds = [0]
    elif change == "all":
        folds = list(range(1, 11))
    elif change == "full":
        os.makedirs(out)
        (out / "something").write_text("x")
    elif change == "missing":
        os.remove(lfw / "images" / names[0] / f"{names[0]}_0002.jpg")
    elif change == "header":
        text = (lfw / "pairs.txt").read_text().split("\n", 1)[1]
        (lfw / "pairs.txt").write_text("2\t5\n" + text)
    elif change == "spelling":  # one person under two spellings: one in a test fold, one training
        os.rename(lfw / "images" / "Zed_Q", lfw / "images" / names[0].upper())
        for image in os.listdir(lfw / "images" / names[0].upper()):
            os.rename(lfw / "images" / names[0].upper() / image,
                      lfw / "images" / names[0].upper() / image.replace("Zed_Q", names[0].upper()))
    with pytest.raises(DataError, match=message):
        write_protocol(str(lfw), str(out), folds, min_images=3)


@pytest.mark.parametrize("folds", ["a", "0", "11", "1,-2", ","])
def test_the_command_checks_its_flags(tmp_path, capsys, folds):
    with pytest.raises(SystemExit) as stopped:
        data_tools.main(["lfw-protocol", "--lfw", str(tmp_path), "--out", str(tmp_path / "o"), f"--test_folds={folds}"])
    assert stopped.value.code == 2
    assert f"argument --test_folds: must be comma-separated fold numbers (1 to 10), got '{folds}'" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        data_tools.main(["lfw-protocol", "--lfw", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert "error: " in str(stopped.value.code) and "nowhere/pairs.txt: no such file" in str(stopped.value.code)
