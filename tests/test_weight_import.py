"""Foreign weights: the torch-free PyTorch reader and the exact importers."""
import importlib.util
import io
import os
import pickle
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest

from backbone import build_backbone
from conftest import REPO_ROOT
from interop.weight_import import XIAOCCER_LAYERS, batchnorm_eps, from_xiaoccer_pytorch, set_batchnorm
from model.checkpoint import load_weights, module_arrays
from model.loading import load_model
from model.torch_pickle import LEGACY_MAGIC, load_torch_file
from model.weight_files import from_reference_pytorch, read_weights

# ---- a minimal torch.save look-alike (no PyTorch here): the pickle refers to torch globals ----

def _stub_torch_modules():
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage = type("FloatStorage", (), {"__module__": "torch"})
    torch.FloatStorage, torch._utils = storage, utils
    return {"torch": torch, "torch._utils": utils}, utils._rebuild_tensor_v2, storage


class FakeTensor:
    """A strided view of a storage, pickled the way torch pickles tensors."""

    def __init__(self, key, offset, size, stride):
        self.key, self.offset, self.size, self.stride = key, offset, size, stride

    def __reduce__(self):
        return REBUILD, (("storage", self.key), self.offset, self.size, self.stride, False, {})


def write_torch_file(path, obj, storages, legacy):
    """storages: {key: float32 array}; FakeTensor leaves in obj refer to them by key."""
    modules, rebuild, storage_type = _stub_torch_modules()
    global REBUILD
    REBUILD = rebuild
    saved = dict(sys.modules)
    sys.modules.update(modules)
    try:
        def persistent_id(item):
            if isinstance(item, tuple) and len(item) == 2 and item[0] == "storage":
                key = item[1]
                return ("storage", storage_type, key, "cpu", storages[key].size)
            return None
        buffer = io.BytesIO()
        pickler = pickle.Pickler(buffer, protocol=2)
        pickler.persistent_id = persistent_id
        pickler.dump(obj)
    finally:
        sys.modules.clear()
        sys.modules.update(saved)
    if legacy:
        with open(path, "wb") as f:
            for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
                pickle.dump(header, f, protocol=2)
            f.write(buffer.getvalue())
            pickle.dump(sorted(storages), f, protocol=2)
            for key in sorted(storages):
                f.write(np.int64(storages[key].size).tobytes())
                f.write(storages[key].astype(np.float32).tobytes())
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", buffer.getvalue())
            for key, data in storages.items():
                z.writestr(f"archive/data/{key}", data.astype(np.float32).tobytes())


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_reader_rebuilds_strided_shared_tensors(tmp_path, legacy):
    storage = np.arange(24, dtype=np.float32)
    obj = {"epoch": 3, "net_state_dict": {
        "a.weight": FakeTensor("0", 0, (2, 3, 4), (12, 4, 1)),
        "b.weight_t": FakeTensor("0", 2, (3, 2), (1, 3)),  # transposed view with an offset
        "c.bias": FakeTensor("1", 0, (5,), (1,)),
    }}
    path = tmp_path / ("legacy.pt" if legacy else "zip.pt")
    write_torch_file(path, obj, {"0": storage, "1": np.full(5, 7.0, np.float32)}, legacy)
    loaded = load_torch_file(str(path))
    assert loaded["epoch"] == 3
    sd = loaded["net_state_dict"]
    np.testing.assert_array_equal(sd["a.weight"], storage.reshape(2, 3, 4))
    np.testing.assert_array_equal(sd["b.weight_t"], np.lib.stride_tricks.as_strided(
        storage[2:], (3, 2), (4, 12)))
    np.testing.assert_array_equal(sd["c.bias"], np.full(5, 7.0))
    assert sd["a.weight"].flags.writeable


def test_torch_reader_refuses_other_globals_and_garbage(tmp_path):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        for header in (LEGACY_MAGIC, 1001, {}):
            pickle.dump(header, f)
        f.write(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(ValueError, match="evil.pt: not a readable PyTorch checkpoint .*it names os.system, which a "
                                         "PyTorch checkpoint never holds; refused, as loading it could run code"):
        load_torch_file(str(evil))
    with open(evil, "wb") as f:  # the header's plain pickles name no global at all
        pickle.dump(LEGACY_MAGIC, f, protocol=2)
        f.write(b"cbuiltins\nprint\n(S'ran'\ntR.")
    with pytest.raises(ValueError, match="evil.pt: .*it names builtins.print, which a PyTorch checkpoint's header"):
        load_torch_file(str(evil))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt"):
        load_torch_file(str(tmp_path / "junk.pt"))


def test_torch_reader_keeps_to_the_bytes_the_file_holds(tmp_path):
    """A tensor view past its storage, a storage larger than the file, a length past the end: refused."""
    storage = {"0": np.arange(6, dtype=np.float32)}
    for legacy in (False, True):
        path = tmp_path / f"{legacy}.pt"
        write_torch_file(path, {"w": FakeTensor("0", 2, (3, 2), (2, 1))}, storage, legacy)
        with pytest.raises(ValueError, match=f"{legacy}.pt: .*runs past its storage of 6 elements"):
            load_torch_file(str(path))
    path = tmp_path / "huge.pt"
    write_torch_file(path, {"w": FakeTensor("0", 0, (6,), (1,))}, {"0": np.zeros(7, np.float32)}, legacy=True)
    content = path.read_bytes()
    claimed = pickle.dumps(7, protocol=2)[2:-1]  # the storage's element count as the pickle writes it
    assert content.count(claimed) == 1
    path.write_bytes(content.replace(claimed, b"\x8a\x06" + (2**40).to_bytes(6, "little")))  # LONG1: 2**40
    with pytest.raises(ValueError, match="huge.pt: .*storage 0 claims 1099511627776 elements, more than the file"):
        load_torch_file(str(path))
    header = pickle.dumps(LEGACY_MAGIC, protocol=2)
    path.write_bytes(header + b"\x80\x04\x8e" + (2**45).to_bytes(8, "little") + b".")  # 32 TiB of BINBYTES8
    with pytest.raises(ValueError, match="huge.pt: not a readable PyTorch checkpoint .*expected 35184372088832 bytes"):
        load_torch_file(str(path))


@pytest.mark.parametrize("legacy", [False, True])
def test_start_weights_read_a_pytorch_state_dict_cleaned_as_imports_are(tmp_path, legacy):
    """--resume_backbone / --resume_head of a torch.save file: DataParallel's 'module.' prefix dropped."""
    storage = np.arange(6, dtype=np.float32)
    path = tmp_path / "Backbone.pth"
    write_torch_file(path, {"module.a.weight": FakeTensor("0", 0, (2, 3), (3, 1))}, {"0": storage}, legacy)
    arrays, config = read_weights(str(path), "backbone")
    assert config is None and list(arrays) == ["a.weight"]
    np.testing.assert_array_equal(arrays["a.weight"], storage.reshape(2, 3))


def test_batchnorm_eps_is_folded_exactly():
    rng = np.random.default_rng(0)
    gamma, beta, mean, var, x = (rng.uniform(0.5, 2, 8) for _ in range(5))
    arrays = {}
    set_batchnorm(arrays, "bn", gamma, beta, mean, var, source_eps=1e-5, target_eps=1e-3)
    theirs = gamma * (x - mean) / np.sqrt(var + 1e-5) + beta
    ours = arrays["bn.weight"] * (x - arrays["bn.running_mean"]) / np.sqrt(arrays["bn.running_var"] + 1e-3) \
        + arrays["bn.bias"]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)  # exact up to float32 storage of the parameters


def test_reference_pytorch_names_map_one_to_one():
    model = build_backbone("IR_18", embedding_size=64)
    state = {f"module.{k}": v for k, v in module_arrays(model).items()}
    state["module.input_layer.1.num_batches_tracked"] = np.array(5)
    arrays = from_reference_pytorch(state)
    fresh = build_backbone("IR_18", embedding_size=64)
    load_weights(fresh, arrays, "torch state dict")
    np.testing.assert_array_equal(fresh.input_layer[0].weight.numpy(), model.input_layer[0].weight.numpy())


def test_xiaoccer_layout_covers_every_layer():
    model = build_backbone("MobileFaceNet", (112, 96), 128)
    ours = module_arrays(model)
    # Their state dict, synthesised from the documented layout with recognisable values.
    theirs = {}
    for conv, bn, prelu, path in XIAOCCER_LAYERS:
        theirs[f"{conv}.weight"] = ours[f"{path}.conv2d.weight"] + 1
        for p, q in (("weight", "weight"), ("bias", "bias"), ("running_mean", "running_mean"),
                     ("running_var", "running_var")):
            theirs[f"{bn}.{p}"] = ours[f"{path}.batchnorm.{q}"] + 2
        if prelu:
            theirs[f"{prelu}.weight"] = ours[f"{path}.relu.weight"] + 3
    theirs["linear1.conv.weight"] = ours["pre_fc1.weight"].reshape(128, 512, 1, 1)
    for p in ("weight", "bias", "running_mean", "running_var"):
        theirs[f"linear1.bn.{p}"] = ours[f"fc1.{p}"]
    arrays = from_xiaoccer_pytorch(theirs, model)
    assert set(arrays) == set(ours)
    load_weights(model, arrays, "xiaoccer")
    eps = batchnorm_eps(model)
    np.testing.assert_allclose(arrays["conv_1.batchnorm.running_var"] + eps["conv_1.batchnorm"],
                               theirs["conv1.bn.running_var"] + 1e-5, rtol=1e-6)
    np.testing.assert_array_equal(arrays["pre_fc1.bias"], 0)


def test_import_tool_turns_a_pytorch_state_dict_into_a_checkpoint(tmp_path):
    model = build_backbone("IR_18", embedding_size=64)
    arrays = module_arrays(model)
    storages = {str(i): value.ravel() for i, value in enumerate(arrays.values())}
    state = {f"module.{name}": FakeTensor(str(i), 0, value.shape, tuple(int(s) // 4 for s in value.strides))
             for i, (name, value) in enumerate(arrays.items())}
    write_torch_file(tmp_path / "Backbone_IR_18.pth", state, storages, legacy=False)
    out = tmp_path / "ir18.npz"

    def import_to(path):
        return subprocess.run([sys.executable, "tools/import_weights.py", "pytorch", "--net", "IR_18",
                               "--backbone", str(tmp_path / "Backbone_IR_18.pth"), "--out", str(path)],
                              cwd=REPO_ROOT, capture_output=True, text=True)

    assert import_to(out).returncode == 0
    backbone, _, cfg, _ = load_model(str(out))
    assert cfg["embedding_size"] == 64 and cfg["input_norm"] == [127.5, 0.078125]
    np.testing.assert_array_equal(backbone.body[3].res_layer[1].weight.numpy(), arrays["body.3.res_layer.1.weight"])
    refused = import_to(out / "inside_a_file.npz")  # where nothing can be written: a message, not a traceback
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert f"{out}: exists and is not a folder" in refused.stderr


def import_tool():
    spec = importlib.util.spec_from_file_location("import_weights", os.path.join(REPO_ROOT, "tools",
                                                                                 "import_weights.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def import_weights_error(*argv):
    """tools/import_weights.py run in this process: the one-line message it exits with (non-zero)."""
    with pytest.raises(SystemExit) as stop:
        import_tool().main(list(argv))
    assert isinstance(stop.value.code, str) and "\n" not in stop.value.code  # printed to stderr, status 1
    return stop.value.code


def test_import_tool_names_the_file_it_cannot_use(tmp_path):
    head = tmp_path / "Head_SFaceLoss.pth"
    write_torch_file(head, {"weight": FakeTensor("0", 0, (4, 3), (3, 1))}, {"0": np.zeros(12, np.float32)},
                     legacy=False)
    out = str(tmp_path / "out.npz")
    assert import_weights_error("pytorch", "--net", "IR_18", "--backbone", str(head), "--out", out) == (
        f"error: cannot import pytorch weights: {head}: holds no BatchNorm statistics (running_mean), so no "
        "backbone; a head's state dict goes to --head")
    missing = tmp_path / "missing_params.npz"
    symbol = tmp_path / "model-symbol.json"
    symbol.write_text("{}")
    assert import_weights_error("insightface", "--params", str(missing), "--symbol", str(symbol), "--out", out) == (
        f"error: cannot import insightface weights: {missing}: No such file or directory")
    objects = tmp_path / "objects.npz"
    np.savez(objects, **{"aux:fc1_moving_mean": np.array([1, "a"], dtype=object)})
    assert import_weights_error("insightface", "--params", str(objects), "--symbol", str(symbol), "--out", out) == (
        f"error: cannot import insightface weights: {objects}: not a readable .npz of arrays (Object arrays cannot "
        "be loaded when allow_pickle=False)")



def test_import_tool_names_the_damaged_file_of_an_insightface_model(tmp_path):
    out = str(tmp_path / "out.npz")
    symbol, params = tmp_path / "model-symbol.json", tmp_path / "params.npz"
    symbol.write_text('{"nodes": []}')
    params.write_bytes(b"")
    assert import_weights_error("insightface", "--params", str(params), "--symbol", str(symbol), "--out", out) == (
        f"error: cannot import insightface weights: {params}: not a readable .npz of arrays (No data left in file)")
    np.savez(params, **{"arg:x": np.zeros(2)})  # no array of an InsightFace model
    assert import_weights_error("insightface", "--params", str(params), "--symbol", str(symbol), "--out", out) == (
        f"error: cannot import insightface weights: {params}: holds no array 'aux:fc1_moving_mean' (not a "
        "insightface model?)")
    np.savez(params, **{"aux:fc1_moving_mean": np.zeros(128, np.float32)})
    for text, message in (('{"nodes": ', "not a JSON MXNet graph (Expecting value"),
                          ("[1, 2]", "not an MXNet symbol graph (a 'nodes' list of op, name and inputs)"),
                          ('{"nodes": []}', "the MXNet graph has no node 'conv_1_conv2d' for conv_1.conv2d")):
        symbol.write_text(text)
        assert import_weights_error("insightface", "--params", str(params), "--symbol", str(symbol), "--out",
                                    out).startswith(f"error: cannot import insightface weights: {symbol}: {message}")
    symbol.write_bytes(b"\xff{}")
    assert import_weights_error("insightface", "--params", str(params), "--symbol", str(symbol), "--out",
                                out).startswith(f"error: cannot import insightface weights: {symbol}: not a JSON")
    assert not os.path.exists(out)


def test_an_input_scale_that_is_not_positive_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        import_tool().main(["pytorch", "--net", "IR_18", "--backbone", "x.pth", "--input_scale", "0", "--out", "o"])
    assert stop.value.code == 2 and "argument --input_scale: must be positive, got 0" in capsys.readouterr().err
