"""The checkpoint format: round trip, atomic writes, strict weight loading, clear errors."""
import errno
import gc
import io
import os
import struct
import sys
import zipfile

import jittor as jt
import numpy as np
import pytest

from backbone import build_backbone
from model.checkpoint import (CheckpointError, load_checkpoint, load_weights, module_arrays, run_checkpoint,
                              save_checkpoint)
from model.loading import load_model, model_config
from model.weight_files import read_weights
from train.run_state import open_run_folder
from util import files
from util.files import OutputError


def test_round_trip_keeps_every_array_and_the_meta(tmp_path):
    path = str(tmp_path / "c.npz")
    backbone = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    head = {"weight": np.ones((4, 2), np.float32)}
    momentum = {"backbone/a.weight/momentum": np.full((2, 3), 0.5, np.float32),
                "head/weight/momentum": np.zeros((4, 2), np.float32)}
    save_checkpoint(path, {"config": {"net": "x"}, "progress": {"step": 7}}, backbone, head, momentum)
    loaded = load_checkpoint(path)
    assert loaded["meta"]["progress"] == {"step": 7} and loaded["meta"]["config"] == {"net": "x"}
    np.testing.assert_array_equal(loaded["backbone"]["a.weight"], backbone["a.weight"])
    np.testing.assert_array_equal(loaded["head"]["weight"], head["weight"])
    assert loaded["optimizer"].keys() == momentum.keys()
    assert all(np.array_equal(loaded["optimizer"][k], v) for k, v in momentum.items())
    assert os.listdir(tmp_path) == ["c.npz"]  # the temporary file was renamed, not left behind
    with np.load(path) as archive:  # readable without this project's code
        assert "backbone/a.weight" in archive.files


def test_rewriting_replaces_the_file_whole(tmp_path):
    path = str(tmp_path / "c.npz")
    for step in range(3):
        save_checkpoint(path, {"progress": {"step": step}}, {}, {"w": np.full(3, step, np.float32)})
    assert load_checkpoint(path)["meta"]["progress"]["step"] == 2


def disk_full_after(room):
    """An `open` for the file writer (util.files) whose files take `room` bytes, then fail as a full disk does."""
    class FullDisk(io.FileIO):
        def write(self, data):
            left = room - self.tell()
            if len(data) > left:
                super().write(bytes(data)[:max(left, 0)])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)
    return lambda path, mode: io.BufferedWriter(FullDisk(path, mode))


@pytest.mark.parametrize("room", [0, 100, 20_000, 40_900])  # in a header, the array data, the central directory
def test_a_full_disk_names_the_checkpoint_keeps_the_old_one_and_leaves_nothing_behind(tmp_path, monkeypatch, capfd,
                                                                                        room):
    path = str(tmp_path / "last.npz")
    save_checkpoint(path, {"progress": {"step": 1}}, {}, {"w": np.ones(3, np.float32)})
    weights = {"a": np.ones(10_000, np.float32)}  # whole: 41030 bytes, the directory from 40838
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # what would reach a user's terminal
    monkeypatch.setattr(files, "open", disk_full_after(room), raising=False)
    with pytest.raises(OutputError, match=f"{path}: cannot write the checkpoint \\(No space left on device\\); the "
                                          f"previous {path} is intact"):
        save_checkpoint(path, {"progress": {"step": 2}}, weights, {"w": np.ones(3, np.float32)})
    with pytest.raises(OutputError, match="no earlier checkpoint was there"):
        save_checkpoint(str(tmp_path / "best.npz"), {"progress": {"step": 2}}, weights, {"w": np.ones(3, np.float32)})
    gc.collect()  # an archive left open would complain here, once its file is closed
    assert capfd.readouterr().err == ""
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last.npz"] and load_checkpoint(path)["meta"]["progress"] == {"step": 1}


def test_a_run_folder_is_refused_to_a_new_run_and_cleared_of_partial_checkpoints(tmp_path):
    """A new run may not replace an earlier run's checkpoints; the resumed run may; a killed writer's leftovers go."""
    outdir = tmp_path / "run"
    assert open_run_folder(str(outdir)) == [] and outdir.is_dir()  # created
    save_checkpoint(str(outdir / "last.npz"), {}, {}, {})
    (outdir / "last.npz.tmp4242").write_bytes(b"half a checkpoint")
    (outdir / "train.log").write_text("kept")
    with pytest.raises(OutputError, match=f"{outdir}: holds the checkpoints of an earlier run \\(last.npz\\), "
                                          f"which a new run would replace; continue that run with --resume {outdir}, "
                                          "or give another --outdir"):
        open_run_folder(str(outdir))
    with pytest.raises(OutputError, match="holds the checkpoints of an earlier run"):  # resuming another run into it
        open_run_folder(str(outdir), resumed=str(tmp_path / "elsewhere" / "last.npz"))
    assert open_run_folder(str(outdir), resumed=str(outdir / "last.npz")) == [str(outdir / "last.npz.tmp4242")]
    assert sorted(os.listdir(outdir)) == ["last.npz", "train.log"]


def test_an_output_folder_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    for outdir, message in ((tmp_path / "file", "exists and is not a folder"),
                            (tmp_path / "file" / "sub", "cannot create the output folder"),
                            ("/proc/no_such_run", "cannot create the output folder")):
        with pytest.raises(OutputError, match=f"{outdir}: {message}.*; give another --outdir"):
            open_run_folder(str(outdir))


def test_a_run_folder_stands_for_its_checkpoint(tmp_path):
    assert run_checkpoint(str(tmp_path / "x.npz")) == str(tmp_path / "x.npz")
    with pytest.raises(CheckpointError, match=f"{tmp_path}: a folder holding no best.npz or last.npz"):
        run_checkpoint(str(tmp_path), ("best.npz", "last.npz"))
    for name in ("last.npz", "best.npz"):
        save_checkpoint(str(tmp_path / name), {}, {}, {})
        assert run_checkpoint(str(tmp_path), ("best.npz", "last.npz")) == str(tmp_path / name)


def test_unreadable_files_are_named(tmp_path):
    truncated = tmp_path / "cut.npz"
    save_checkpoint(str(truncated), {}, {"w": np.zeros(1000, np.float32)}, {})
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="cut.npz: not a readable checkpoint"):
        load_checkpoint(str(truncated))
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, w=np.zeros(3))
    with pytest.raises(CheckpointError, match="foreign.npz: not an SFace-Jittor checkpoint"):
        load_checkpoint(str(foreign))
    with pytest.raises(CheckpointError, match="missing.npz: not a readable checkpoint"):
        load_checkpoint(str(tmp_path / "missing.npz"))
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.npz: not a readable checkpoint"):
        load_checkpoint(str(tmp_path / "empty.npz"))


def test_a_corrupt_compressed_entry_is_named(tmp_path):
    path = tmp_path / "packed.npz"
    np.savez_compressed(path, meta=np.array("{}"), **{"backbone/w": np.zeros(1000, np.float32)})
    with zipfile.ZipFile(path) as archive:
        entry = archive.getinfo("backbone/w.npy")
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[entry.header_offset + 26:entry.header_offset + 30])
    start = entry.header_offset + 30 + name_length + extra_length
    data[start] = 0xFF  # a deflate block of the reserved type: the stream cannot be inflated
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="packed.npz: not a readable checkpoint"):
        load_checkpoint(str(path))


@pytest.mark.parametrize("entries, message", [
    ({"notes": np.array("hand-written")}, "unexpected entry 'notes'"),
    ({"foo/x": np.zeros(2)}, "unexpected entry 'foo/x'"),
    ({"backbone/": np.zeros(2)}, "unexpected entry 'backbone/'"),
    ({"meta": np.array("{not json")}, "the 'meta' entry is not JSON"),
    ({"meta": np.array("[1, 2]")}, "the 'meta' entry is not a JSON object"),
])
def test_entries_a_checkpoint_cannot_hold_are_named(tmp_path, entries, message):
    path = str(tmp_path / "odd.npz")
    save_checkpoint(path, {}, {"w": np.zeros(2, np.float32)}, {})
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    np.savez(path, **dict(arrays, **entries))
    with pytest.raises(CheckpointError, match=f"{path}: {message}"):
        load_checkpoint(path)


GOOD_CONFIG = {"net": "MobileFaceNet", "input_hw": [112, 112], "embedding_size": 128, "input_norm": [127.5, 0.0078125]}


@pytest.mark.parametrize("change, message", [
    ({"net": 5}, "net 5 is not a backbone name"),
    ({"net": "ResNet_9000"}, "unknown backbone 'ResNet_9000'"),
    ({"input_hw": "112x112"}, "input_hw '112x112' is not \\[height, width\\]"),
    ({"input_hw": [112, 100]}, "MobileFaceNet takes an input size whose sides are each a positive multiple of 16"),
    ({"embedding_size": "x"}, "embedding_size 'x' is not a positive integer"),
    ({"embedding_size": 0}, "embedding_size 0 is not a positive integer"),
    ({"input_norm": "x"}, "input_norm 'x' is not \\[mean, non-zero scale\\]"),
    ({"input_norm": [127.5, 0]}, "input_norm \\[127.5, 0\\] is not \\[mean, non-zero scale\\]"),
])
def test_a_stored_config_that_describes_no_backbone_is_named(change, message):
    assert model_config("x.npz", GOOD_CONFIG) == GOOD_CONFIG
    with pytest.raises(CheckpointError,
                       match=f"^x.npz: its config describes no backbone this project builds: {message}"):
        model_config("x.npz", dict(GOOD_CONFIG, **change))


def test_an_scf_config_without_a_confidence_head_is_named(tmp_path):
    path = str(tmp_path / "scf.npz")
    backbone = module_arrays(build_backbone("MobileFaceNet", embedding_size=128))
    save_checkpoint(path, {"config": dict(GOOD_CONFIG, scf=True)}, backbone, {"weight": np.zeros((4, 128), np.float32)})
    with pytest.raises(CheckpointError, match=f"^{path}: its config says SCF, but it holds no confidence head"):
        load_model(path)


def test_weights_must_fit_exactly():
    model = build_backbone("MobileFaceNet", embedding_size=128)
    arrays = module_arrays(model)
    other = build_backbone("MobileFaceNet", embedding_size=128)
    load_weights(other, arrays, "src")
    np.testing.assert_array_equal(other.pre_fc1.weight.numpy(), arrays["pre_fc1.weight"])
    with pytest.raises(CheckpointError, match="src: weights do not fit MobileFaceNet: missing \\['fc1.bias'\\]"):
        load_weights(other, {k: v for k, v in arrays.items() if k != "fc1.bias"}, "src")
    with pytest.raises(CheckpointError, match="src: 'pre_fc1.weight' has shape \\(128, 512\\), the model wants \\(64, 512\\)"):
        load_weights(build_backbone("MobileFaceNet", embedding_size=64), arrays, "src")
    broken = dict(arrays, **{"fc1.bias": np.full(128, np.nan, np.float32)})
    with pytest.raises(CheckpointError, match="src: 'fc1.bias' holds values that are not finite"):
        load_weights(other, broken, "src")
    broken = dict(arrays, **{"fc1.bias": np.full(128, "abc")})
    with pytest.raises(CheckpointError, match="src: 'fc1.bias' holds <U3 values, not numbers"):
        load_weights(other, broken, "src")


def test_weights_from_an_official_jittor_pickle(tmp_path):
    model = build_backbone("MobileFaceNet", embedding_size=128)
    path = str(tmp_path / "Backbone_MobileFaceNet_Epoch_1.pkl")
    jt.save({k: v.numpy() for k, v in model.state_dict().items()}, path)  # how the reference saved
    arrays, config = read_weights(path, "backbone")
    assert config is None  # the caller applies the official input normalisation
    fresh = build_backbone("MobileFaceNet", embedding_size=128)
    load_weights(fresh, arrays, path)
    np.testing.assert_array_equal(fresh.conv_1.conv2d.weight.numpy(), model.conv_1.conv2d.weight.numpy())
    (tmp_path / "junk.pkl").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pkl: not a readable Jittor .pkl state dict"):
        read_weights(str(tmp_path / "junk.pkl"), "backbone")
