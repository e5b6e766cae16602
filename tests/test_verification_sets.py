"""Readers of verification pair sets: InsightFace .bin files and LFW pairs.txt folders."""
import os
import pickle
import struct

import cv2
import numpy as np
import pytest

from data.text import DataError
from data.verification_sets import load_bin, load_pairs_folder, load_target, parse_pairs_txt
from evaluation.embedding import EvalTarget


def jpeg(value, height=112, width=112):
    image = np.full((height, width, 3), value, np.uint8)
    image[:, :8] = (0, 0, 255)  # a red (BGR) band on the left, to check colour order and cropping
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def make_folder(root, people=("Ann_A", "Bob_B", "Cy_C"), per_person=2, pairs_text=None):
    for person in people:
        os.makedirs(root / "images" / person)
        for n in range(1, per_person + 1):
            (root / "images" / person / f"{person}_{n:04d}.jpg").write_bytes(jpeg(40 * n))
    text = pairs_text or "2\t1\nAnn_A\t1\t2\nBob_B\t1\tCy_C\t2\nCy_C\t1\t2\nAnn_A\t2\tBob_B\t2\n"
    (root / "pairs.txt").write_text(text)
    return root


def python2_pickle(bins, issame):
    """What Python 2 wrote: byte strings as BINSTRING opcodes, which Python 3 tries to read as ASCII."""
    out = [b"\x80\x02", b"(", b"]", b"("]  # PROTO 2, MARK, EMPTY_LIST, MARK
    for data in bins:
        out += [b"T", struct.pack("<I", len(data)), data]  # BINSTRING
    out += [b"e", b"]", b"("]  # APPENDS, EMPTY_LIST, MARK
    out += [b"\x88" if same else b"\x89" for same in issame]  # NEWTRUE / NEWFALSE
    out += [b"e", b"t", b"."]  # APPENDS, TUPLE, STOP
    return b"".join(out)


def test_pairs_folder_keeps_each_image_once(tmp_path):
    pair_set = load_pairs_folder(str(make_folder(tmp_path)))
    assert pair_set.name == os.path.basename(tmp_path)
    assert pair_set.issame.tolist() == [True, False, True, False]
    assert len(pair_set.encoded) == 6 and pair_set.pairs.shape == (4, 2)
    names = [os.path.basename(pair_set.sources[i]) for i in pair_set.pairs.ravel()]
    assert names == ["Ann_A_0001.jpg", "Ann_A_0002.jpg", "Bob_B_0001.jpg", "Cy_C_0002.jpg",
                     "Cy_C_0001.jpg", "Cy_C_0002.jpg", "Ann_A_0002.jpg", "Bob_B_0002.jpg"]
    assert pair_set.pairs[1, 1] == pair_set.pairs[2, 1]  # Cy_C_0002 is one image


def test_bin_round_trip_and_python2_pickles(tmp_path):
    bins = [jpeg(10), jpeg(20), jpeg(30), jpeg(10)]
    issame = [True, False]
    modern = tmp_path / "modern.bin"
    with open(modern, "wb") as f:
        pickle.dump((bins, issame), f, protocol=pickle.HIGHEST_PROTOCOL)
    legacy = tmp_path / "legacy.bin"
    legacy.write_bytes(python2_pickle(bins, issame))
    with pytest.raises(UnicodeDecodeError):  # what a plain pickle.load does with it
        pickle.loads(legacy.read_bytes())
    for path in (modern, legacy):
        pair_set = load_bin(str(path))
        assert pair_set.issame.tolist() == issame and pair_set.name == path.stem
        assert len(pair_set.encoded) == 3  # the repeated image is kept once
        assert [pair_set.encoded[i] for i in pair_set.pairs.ravel()] == bins


def test_decoding_gives_rgb_and_crops_to_112x96(tmp_path):
    pair_set = load_pairs_folder(str(make_folder(tmp_path)))
    image = pair_set.decode(0, (112, 112))
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8
    assert image[:, :8, 0].mean() > 200 and image[:, :8, 2].mean() < 40  # red stays red
    cropped = pair_set.decode(0, (112, 96))
    np.testing.assert_array_equal(cropped, image[:, 8:104])
    target = EvalTarget(pair_set, (112, 96), num_threads=2)
    assert target.images.shape == (6, 112, 96, 3) and target.images.dtype == np.uint8


@pytest.mark.parametrize("text,message", [
    ("2\t1\nAnn_A\t1\t2\nBob_B\t1\tCy_C\t2\n", r"pairs.txt:1: header promises 4 pairs, the file has 2"),
    ("1\t1\nAnn_A\t1\nBob_B\t1\tCy_C\t2\n", r"pairs.txt:2: expected 'name i j' or 'name1 i name2 j'"),
    ("1\t1\nAnn_A\t1\tx\nBob_B\t1\tCy_C\t2\n", r"pairs.txt:2: expected"),
    ("1\t1\nAnn_A\t1\t7\nBob_B\t1\tCy_C\t2\n", r"pairs.txt:2: image .*Ann_A_0007.jpg does not exist"),
])
def test_bad_pairs_files_name_file_and_line(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        load_pairs_folder(str(make_folder(tmp_path, pairs_text=text)))


def test_bad_bins_are_named(tmp_path):
    good = tmp_path / "good.bin"
    with open(good, "wb") as f:
        pickle.dump(([jpeg(10), jpeg(20)], [True]), f)
    truncated = tmp_path / "cut.bin"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DataError, match="cut.bin: not a readable verification .bin"):
        load_bin(str(truncated))
    uneven = tmp_path / "uneven.bin"
    with open(uneven, "wb") as f:
        pickle.dump(([jpeg(10)], [True]), f)
    with pytest.raises(DataError, match="uneven.bin: 1 images for 1 pairs"):
        load_bin(str(uneven))
    broken = tmp_path / "broken.bin"
    with open(broken, "wb") as f:
        pickle.dump(([jpeg(10), b"garbage"], [True]), f)
    with pytest.raises(DataError, match="broken.bin image 1: not a decodable image"):
        EvalTarget(load_bin(str(broken)), (112, 112))
    small = tmp_path / "small.bin"
    with open(small, "wb") as f:
        pickle.dump(([jpeg(10, 100, 100), jpeg(20)], [True]), f)
    with pytest.raises(DataError, match="small.bin image 0: size 100x100, expected 112x112"):
        EvalTarget(load_bin(str(small)), (112, 112))


def test_a_bin_cannot_run_code_and_holds_only_bytes_and_bools(tmp_path, capfd):
    """A crafted pickle is refused before anything runs; every honest spelling of the format still loads."""
    marker = tmp_path / "ran"
    for crafted in (b"cbuiltins\nprint\n(S'ran'\ntR.", f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()):
        (tmp_path / "crafted.bin").write_bytes(crafted)
        with pytest.raises(DataError, match=r"crafted.bin: not a readable verification .bin \(it names "
                                            r"(builtins.print|os.system), which a verification .bin never holds"):
            load_target(str(tmp_path / "crafted.bin"), str(tmp_path))
    assert "ran" not in capfd.readouterr().out and not marker.exists()
    bins, issame = [jpeg(10), jpeg(20)], [True]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):  # protocols 0-2 spell bytes as _codecs.encode(...)
        (tmp_path / "ok.bin").write_bytes(pickle.dumps((bins, issame), protocol=protocol))
        assert [load_bin(str(tmp_path / "ok.bin")).encoded, protocol] == [bins, protocol]
    for content, message in ((([np.frombuffer(jpeg(10), np.uint8)] * 2, issame), "it names numpy"),
                             ((["text", "text"], issame), "bins must be a list of encoded images"),
                             ((bins, [1]), "issame_list must be a list of booleans")):
        (tmp_path / "odd.bin").write_bytes(pickle.dumps(content))
        with pytest.raises(DataError, match=f"odd.bin: .*{message}"):
            load_bin(str(tmp_path / "odd.bin"))


def test_a_bin_claiming_more_bytes_than_it_holds_is_refused_before_any_allocation(tmp_path):
    """A BINBYTES8 of 32 TiB in a 20-byte file: named as unreadable, not a MemoryError."""
    crafted = tmp_path / "huge.bin"
    crafted.write_bytes(b"\x80\x04\x8e" + (2**45).to_bytes(8, "little") + b"\x85.")
    with pytest.raises(DataError, match=r"huge.bin: not a readable verification .bin \(expected 35184372088832 bytes"):
        load_bin(str(crafted))


TEN_PAIRS = "10\t1\n" + "Ann_A\t1\t2\nBob_B\t1\tCy_C\t2\n" * 10  # what the 10-fold protocol needs at least


def test_targets_resolve_by_name_or_path(tmp_path):
    make_folder(tmp_path / "mylfw", pairs_text=TEN_PAIRS)
    issame = [False, True] * 5
    with open(tmp_path / "agedb_30.bin", "wb") as f:
        pickle.dump(([jpeg(10), jpeg(20), jpeg(30), jpeg(30)] * 5, issame), f)
    assert load_target("agedb_30", str(tmp_path)).name == "agedb_30"
    assert load_target("mylfw", str(tmp_path)).name == "mylfw"
    assert load_target(str(tmp_path / "agedb_30.bin"), "/nowhere").issame.tolist() == issame
    with pytest.raises(DataError, match="verification target 'cplfw' not found: looked for .*cplfw.bin"):
        load_target("cplfw", str(tmp_path))


def test_a_target_too_small_for_ten_folds_is_refused_before_any_embedding(tmp_path):
    make_folder(tmp_path / "small")  # 4 pairs of both kinds: readable, but not scorable
    assert len(load_pairs_folder(str(tmp_path / "small")).issame) == 4
    with pytest.raises(DataError, match=f"{tmp_path / 'small' / 'pairs.txt'}: 4 pairs; the verification protocol "
                                        "scores 10 folds of them, so it needs at least 10"):
        load_target(str(tmp_path / "small"), "/nowhere")


def test_a_target_with_pairs_of_one_kind_is_refused_naming_its_file(tmp_path):
    """No ROC without same and different pairs; the readers themselves (and the converters) take such sets."""
    same_only = "Ann_A\t1\t2\nCy_C\t1\t2\n"
    make_folder(tmp_path / "same", pairs_text=same_only)
    assert load_pairs_folder(str(tmp_path / "same")).issame.tolist() == [True, True]
    with pytest.raises(DataError, match=f"{tmp_path / 'same' / 'pairs.txt'}: 2 same and 0 different pairs; "
                                        "verification is scored on pairs of both kinds"):
        load_target(str(tmp_path / "same"), "/nowhere")
    for issame, counts in (([False, False], "0 same and 2 different"), ([], "0 same and 0 different")):
        with open(tmp_path / "one.bin", "wb") as f:
            pickle.dump(([jpeg(10)] * 2 * len(issame), issame), f)
        assert load_bin(str(tmp_path / "one.bin")).issame.tolist() == issame
        with pytest.raises(DataError, match=f"{tmp_path / 'one.bin'}: {counts} pairs"):
            load_target("one", str(tmp_path))


def test_official_lfw_pairs_file():
    from conftest import shared_path
    entries = parse_pairs_txt(shared_path("lfw", "pairs.txt"))
    assert len(entries) == 6000 and sum(e[5] for e in entries) == 3000
    assert entries[0][1:] == ("Abel_Pacheco", 1, "Abel_Pacheco", 4, True)
