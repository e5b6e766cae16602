"""No checkpoint or weight file runs code when a script loads it, and official checkpoints still load exactly.

Each crafted file carries a pickle whose `__reduce__` opens a marker file for writing: plain
unpickling (what these paths did through jt.load and pickle.load) creates the marker; the
scripts must refuse the file by name, without a traceback, and never create it.
"""
import ast
import collections
import hashlib
import io
import os
import pickle
import re
import subprocess
import sys

import jittor as jt
import numpy as np
import pytest

from backbone import build_backbone
from conftest import REPO_ROOT
from model.checkpoint import OFFICIAL_JITTOR_INPUT_NORM, CheckpointError, load_checkpoint
from model.loading import load_model
from model.torch_pickle import LEGACY_MAGIC
from model.weight_files import read_weights
from util.restricted_pickle import RestrictedUnpickler

TRAIN = os.path.join(REPO_ROOT, "train_SFace_jittor.py")
EVAL = os.path.join(REPO_ROOT, "eval_SFace_jittor.py")
IMPORT = os.path.join(REPO_ROOT, "tools", "import_weights.py")
PKL_CONFIG = {"net": "MobileFaceNet", "input_hw": [112, 112], "embedding_size": 512}


class CreatesMarker:
    """Unpickling it opens `marker` for writing, which creates the file: code run by loading."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_jittor_file(path, obj):
    """What jt.save writes: a protocol-4 pickle, its SHA-1, the trailer."""
    body = pickle.dumps(obj, protocol=4)
    path.write_bytes(body + hashlib.sha1(body).digest() + b"HCAJSLHD")


def write_legacy_torch_file(path, sys_info, obj):
    """PyTorch's legacy (non-zip) stream: magic number, protocol, system info, the object, storage keys."""
    with open(path, "wb") as f:
        for part in (LEGACY_MAGIC, 1001, sys_info, obj, []):
            pickle.dump(part, f, protocol=2)


def run(*command, timeout=300):
    return subprocess.run([sys.executable, *command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def train_command(tmp_path, *extra):
    return (TRAIN, "--data_mode", "demo", "--outdir", str(tmp_path / "run"), "--target", "none", "--max_steps", "1",
            "--batch_size", "8", "--num_workers", "1", "--workers_id", "cpu", *extra)


def test_the_crafted_pickle_runs_code_under_plain_unpickling(tmp_path):
    """What makes the refusals below mean something: plain pickle.loads of the payload creates the marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"conv.weight": CreatesMarker(marker)}, protocol=4))
    assert marker.exists()


def test_the_restricted_unpickler_checks_what_a_pickle_claims_before_it_allocates():
    """A length past the end, a memo index far beyond the objects so far: refused, where plain unpickling
    would allocate (32 TiB; memo room for 2**20 entries from a 10-byte pickle)."""
    for crafted, message in ((b"\x80\x04\x8e" + (2**45).to_bytes(8, "little") + b".", "expected 35184372088832 bytes"),
                             (b"\x80\x02Nr" + (2**20).to_bytes(4, "little") + b".", "memo index 1048576 after 2 ")):
        with pytest.raises(ValueError, match=message):
            RestrictedUnpickler(io.BytesIO(crafted), {}, "a test file").load()
    shared = {"a": "x" * 300, "b": list(range(300))}  # memo entries, fetched again
    honest = [shared, shared, (1.5, None, True), 2**70]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert RestrictedUnpickler(io.BytesIO(pickle.dumps(honest, protocol)), {}, "a test file").load() == honest


# (the crafted file's name, how it is written, the command line that loads it)
CRAFTED = {
    "--resume_backbone Backbone_X.pkl": (
        "Backbone_X.pkl", lambda path, marker: write_jittor_file(path, {"conv.weight": CreatesMarker(marker)}),
        lambda tmp_path, path: train_command(tmp_path, "--resume_backbone", str(path))),
    "--resume_head Head_X.pkl": (
        "Head_X.pkl", lambda path, marker: write_jittor_file(path, {"weight": CreatesMarker(marker)}),
        lambda tmp_path, path: train_command(tmp_path, "--resume_head", str(path))),
    "eval --checkpoint X.pkl": (
        "X.pkl", lambda path, marker: write_jittor_file(path, {"conv.weight": CreatesMarker(marker)}),
        lambda tmp_path, path: (EVAL, "--checkpoint", str(path), "--net", "MobileFaceNet", "--target", "lfw_demo",
                                "--outdir", str(tmp_path / "eval"), "--workers_id", "cpu")),
    "--resume_backbone X.pth (legacy)": (  # the payload in the state dict
        "X.pth", lambda path, marker: write_legacy_torch_file(path, {"little_endian": True},
                                                              {"conv.weight": CreatesMarker(marker)}),
        lambda tmp_path, path: train_command(tmp_path, "--resume_backbone", str(path))),
    "import_weights pytorch --backbone X.pth (legacy)": (  # the payload in a header part
        "X.pth", lambda path, marker: write_legacy_torch_file(path, CreatesMarker(marker), {}),
        lambda tmp_path, path: (IMPORT, "pytorch", "--net", "MobileFaceNet", "--backbone", str(path),
                                "--out", str(tmp_path / "out.npz"))),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_a_file_that_would_run_code_is_refused_by_name(tmp_path, case):
    name, write, command = CRAFTED[case]
    path, marker = tmp_path / name, tmp_path / "ran"
    write(path, marker)
    result = run(*command(tmp_path, path))
    assert result.returncode != 0, result.stdout[-2000:]
    assert not marker.exists()
    assert f"error: {path}" in result.stderr or f"error: cannot import pytorch weights: {path}" in result.stderr, \
        result.stderr[-2000:]
    assert "it names io.open" in result.stderr and "refused, as loading it could run code" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_official_jittor_checkpoint_loads_exactly_and_starts_training(tmp_path):
    """`jt.save(backbone.state_dict(), path)`, as the official SFace-Jittor code saved its backbones."""
    mean, scale = OFFICIAL_JITTOR_INPUT_NORM
    backbone = build_backbone("MobileFaceNet", input_mean=mean, input_scale=scale)
    backbone.fc1.running_mean.assign(np.full(512, 1000.0, np.float32))  # recognisable after a training step
    path = tmp_path / "Backbone_MobileFaceNet_Epoch_1.pkl"
    jt.save(backbone.state_dict(), str(path))

    loaded = load_model(str(path), PKL_CONFIG)
    backbone.eval()
    images = jt.array(np.random.default_rng(0).uniform(0, 255, (2, 3, 112, 112)).astype(np.float32))
    assert np.array_equal(loaded.backbone(images).numpy(), backbone(images).numpy())

    result = run(*train_command(tmp_path, "--resume_backbone", str(path)), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    last = load_checkpoint(str(tmp_path / "run" / "last.npz"))
    assert last["meta"]["progress"]["step"] == 1
    assert last["meta"]["config"]["input_norm"] == OFFICIAL_JITTOR_INPUT_NORM
    # One step moves a running mean by 10 % of the way to the batch's mean (Jittor's BatchNorm momentum
    # 0.1): from 1000 it stays far above anything a freshly initialised model's could be.
    assert (last["backbone"]["fc1.running_mean"] > 500).all()


def test_a_jittor_pkl_holds_names_and_numeric_arrays_whole(tmp_path):
    """read_weights of a jt.save-style file: what loads and every refusal, each naming the file."""
    weights = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a.steps": np.array(3)}
    path = tmp_path / "Backbone.pkl"
    write_jittor_file(path, collections.OrderedDict(weights))
    arrays, config = read_weights(str(path), "backbone")
    assert config is None and arrays.keys() == weights.keys()
    assert all(np.array_equal(arrays[k], weights[k]) for k in weights)
    path.write_bytes(pickle.dumps(weights, protocol=4))  # no checksum trailer, as older Jittor wrote
    assert read_weights(str(path), "backbone")[0].keys() == weights.keys()

    write_jittor_file(path, weights)
    content = bytearray(path.read_bytes())
    content[40] ^= 1
    path.write_bytes(bytes(content))
    refused = {"a corrupt Jittor .pkl \\(its SHA-1 checksum does not match its content\\)": path}
    for name, obj, message in (
            ("object.pkl", {"a": np.array([1, "x"], dtype=object)}, "'a' holds an array of object"),
            ("list.pkl", [weights["a.weight"]], "holds an object of type list, not a state dict"),
            ("text.pkl", {"a": "x"}, "'a' holds a str value"),
            ("masked.pkl", {"a": np.ma.array([1.0])}, r"it names numpy\.ma\.core\._mareconstruct, which a Jittor "
                                                      "state dict never holds; refused, as loading it could run code")):
        write_jittor_file(tmp_path / name, obj)
        refused[message] = tmp_path / name
    subtype = tmp_path / "subtype.pkl"  # numpy's array reconstruction asked for another class
    subtype.write_bytes(b"cnumpy.core.multiarray\n_reconstruct\n(ccollections\nOrderedDict\n(I0\ntS'b'\ntR.")
    refused["it rebuilds an array of type .*OrderedDict.*, not a plain numpy array"] = subtype
    huge = tmp_path / "huge.pkl"
    huge.write_bytes(b"\x80\x04\x8e" + (2**45).to_bytes(8, "little") + b".")  # 32 TiB claimed, nothing held
    refused["not a readable Jittor .pkl state dict \\(expected 35184372088832 bytes"] = huge
    refused["cannot read it \\(No such file or directory\\)"] = tmp_path / "missing.pkl"
    for message, source in refused.items():
        with pytest.raises(CheckpointError, match=f"^{re.escape(str(source))}: .*{message}"):
            read_weights(str(source), "backbone")


# ---- the source holds no other way to unpickle a file ----

# Modules that unpickle (or hand a file to an unpickler) through some of their names; the pickle family
# has no other use here, so even passing one around is refused (jittor is passed as an array namespace).
PICKLE_ROOTS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
LOADER_ROOTS = PICKLE_ROOTS | {"torch", "jittor", "jittor_core", "jittor_utils"}
UNSAFE_NAME = re.compile(r"^(_?loads?|\w*Unpickler|safeunpickle|_load_pkl|load_pytorch|open|__dict__|"
                         r"__getattribute__)$")
SAFE_LOAD_ROOTS = {"json", "numpy", "onnx"}  # their .load reads no pickle (numpy's unless allow_pickle)
# Plain-text spellings that never belong in the source, comments included.
FORBIDDEN_TEXT = ("jt.load(", "pickle.load(", "pickle.loads(", "torch.load(", "allow_pickle=True",
                  "load_parameters(jt.load")
RESTRICTED_MODULE = os.path.join("util", "restricted_pickle.py")
# What the restricted unpickler alone may do: subclass pickle.Unpickler, resolve globals, call its load().
RESTRICTED_MODULE_USES = {"pickle.Unpickler", "find_class", "super().load(...)"}


def dotted(node):
    """a.b.c of a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def called_name(node):
    """The last name of what a Call calls (`f` of `a.b.f(...)`), else None."""
    func = node.func if isinstance(node, ast.Call) else None
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def restricted_classes(trees):
    """RestrictedUnpickler and every class (in any scanned file) that derives from one of them."""
    names, grown = {"RestrictedUnpickler"}, True
    while grown:
        found = {node.name for tree in trees for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                 and any((dotted(b) or "").split(".")[-1] in names for b in node.bases)}
        grown = not found <= names
        names |= found
    return names


def unsafe_loads(tree, restricted):
    """[(line, what)] of every way `tree` could unpickle outside the restricted unpickler."""
    aliases, findings = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0]
                            for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                if node.module.split(".")[0] in LOADER_ROOTS and (a.name == "*" or UNSAFE_NAME.match(a.name)):
                    findings.append((node.lineno, f"from {node.module} import {a.name}"))
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def module_of(node):
        name = dotted(node)
        if name is None or name.split(".")[0] not in aliases:
            return None
        return ".".join([aliases[name.split(".")[0]], *name.split(".")[1:]])

    def is_loader(node, roots=LOADER_ROOTS):
        module = module_of(node)
        return module is not None and module.split(".")[0] in roots

    bases = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_loader(node.value) and UNSAFE_NAME.match(node.attr):
            findings.append((node.lineno, f"{dotted(node)}"))
        elif isinstance(node, ast.Name) and id(node) not in bases and is_loader(node, PICKLE_ROOTS):
            findings.append((node.lineno, f"{node.id} (a module that unpickles) used as a value"))
        elif isinstance(node, ast.FunctionDef) and node.name == "find_class":
            findings.append((node.lineno, "find_class of its own (resolving globals is the restricted unpickler's)"))
        elif isinstance(node, ast.Constant) and node.value == "allow_pickle":
            findings.append((node.lineno, "'allow_pickle' spelled as a string"))
        elif isinstance(node, ast.Call) and called_name(node) == "getattr" and node.args and is_loader(node.args[0]):
            findings.append((node.lineno, f"getattr({ast.unparse(node.args[0])}, ...)"))
        elif isinstance(node, ast.Call):
            findings += unsafe_call(node, module_of, restricted)
    return findings


def unsafe_call(node, module_of, restricted):
    findings = []
    for keyword in node.keywords:
        if keyword.arg == "allow_pickle" and not (isinstance(keyword.value, ast.Constant)
                                                  and keyword.value.value is False):
            findings.append((node.lineno, "allow_pickle not False"))
    if called_name(node) in ("__import__", "import_module"):
        findings.append((node.lineno, f"{called_name(node)}(...): a module imported by a computed name"))
    if isinstance(node.func, ast.Attribute) and node.func.attr in ("load", "loads"):
        receiver, module = node.func.value, module_of(node.func.value)
        if module is not None and module.split(".")[0] == "numpy":
            if len(node.args) > 2 or any(k.arg is None for k in node.keywords):
                findings.append((node.lineno, "numpy load with allow_pickle given positionally or by **"))
        elif module is None and called_name(receiver) not in restricted:
            findings.append((node.lineno, f"{ast.unparse(node.func)}(...) on an object (a Jittor Module.load, "
                                          "an unpickler)"))
        elif module is not None and module.split(".")[0] not in SAFE_LOAD_ROOTS | LOADER_ROOTS:
            findings.append((node.lineno, f"{ast.unparse(node.func)}(...)"))
    return findings


def source_files():
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__")) and
                   os.path.relpath(os.path.join(folder, d), REPO_ROOT) != "tests"]
        yield from (os.path.relpath(os.path.join(folder, f), REPO_ROOT) for f in files if f.endswith(".py"))


def scan(sources):
    """{relative path: source} -> ['path:line: what'] of every unsafe load, text or code."""
    trees = {path: ast.parse(text) for path, text in sources.items()}
    restricted = restricted_classes(trees.values())
    findings = []
    for path, text in sources.items():
        found = [(n, f"'{s}'") for n, line in enumerate(text.splitlines(), 1) for s in FORBIDDEN_TEXT if s in line]
        found += unsafe_loads(trees[path], restricted)
        if path == RESTRICTED_MODULE:
            found = [(n, what) for n, what in found if what.split(" ")[0] not in RESTRICTED_MODULE_USES]
        findings += [f"{path}:{n}: {what}" for n, what in sorted(set(found))]
    return findings


UNSAFE_SNIPPETS = [
    "import pickle\npickle.load(f)", "import pickle as p\np.loads(b)", "from pickle import load",
    "from pickle import loads as safe", "from pickle import *", "import _pickle\n_pickle.loads(b)",
    "import pickle\nclass U(pickle.Unpickler):\n    pass", "import pickle\npickle.Unpickler(f).load()",
    "import pickle\nreader = pickle\nreader.load(f)", "import pickle\ngetattr(pickle, 'lo' + 'ad')(f)",
    "import importlib\nimportlib.import_module('pickle').load(f)", "__import__('pickle').loads(b)",
    "import jittor as jt\njt.load(path)", "import jittor as jt\nmodel.load_parameters(jt.load(path))",
    "import jittor\njittor.load(path)", "from jittor import load", "import jittor as jt\njt.Module.load(m, path)",
    "import jittor as jt\ngetattr(jt, 'lo' + 'ad')(path)", "import jittor as jt\nj = jt\nj.load(path)",
    "model.load(path)", "from jittor_utils.load_pytorch import load_pytorch", "import torch\ntorch.load(path)",
    "import numpy as np\nnp.load(path, allow_pickle=True)", "import numpy as np\nnp.load(path, None, True)",
    "import numpy as np\nflag = True\nnp.load(path, allow_pickle=flag)", "kwargs = {'allow_pickle': True}",
    "import dill\ndill.load(f)", "import shelve\nshelve.open(path)", "import marshal\nmarshal.loads(b)",
    "# restore with jt.load(path)", "from util.restricted_pickle import RestrictedUnpickler\n"
    "class Mine(RestrictedUnpickler):\n    def find_class(self, module, name):\n        return print",
]
SAFE_SNIPPETS = [
    "import json\njson.load(f)", "import numpy as np\nnp.load(path)",
    "import numpy as np\nnp.load(path, allow_pickle=False)", "import pickle\npickle.dumps(x, protocol=4)",
    "import jittor as jt\njt.save(x, path)", "import onnx\nonnx.load(path)", "import jittor as jt\nscf_loss(kappa, jt)",
    "from util.restricted_pickle import RestrictedUnpickler\nclass Mine(RestrictedUnpickler):\n    pass\n"
    "Mine(s, {}, 'a file').load()",
]


def test_the_source_scan_catches_every_spelling_of_a_plain_load():
    for snippet in UNSAFE_SNIPPETS:
        assert scan({"tool.py": snippet}), snippet
    for snippet in SAFE_SNIPPETS:
        assert scan({"tool.py": snippet}) == [], snippet
    restricted = "import pickle\nclass RestrictedUnpickler(pickle.Unpickler):\n    def find_class(self, module, " \
                 "name):\n        pass\n    def load(self):\n        return super().load()\n"
    assert scan({RESTRICTED_MODULE: restricted}) == []
    assert scan({RESTRICTED_MODULE: restricted + "pickle.loads(b)\n"})  # its own plain load is caught too


def test_no_source_file_unpickles_outside_the_restricted_unpickler():
    sources = {}
    for path in source_files():
        with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
            sources[path] = f.read()
    assert {RESTRICTED_MODULE, os.path.join("model", "weight_files.py"), os.path.join("tools", "import_weights.py"),
            "eval_SFace_jittor.py"} <= set(sources)
    assert scan(sources) == []
