"""ONNX export: onnxruntime and OpenCV give the Jittor embedding, for each backbone kind and input size.

Error measure: max |onnx - jittor| over all elements, divided by max |jittor| (relative to the
embedding's scale, so near-zero elements do not inflate it).
"""
import json
import os
import subprocess
import sys

import cv2
import jittor as jt
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from jittor import nn

from backbone import build_backbone
from conftest import DEMO_ROOT, REPO_ROOT, oversized_png, shared_path, small_pairs_folder
from head.scf import ConfidenceHead
from evaluation.results_file import ResultsError
from interop.onnx_export import ExportError, backbone_onnx, onnx_input_size
from model.checkpoint import OFFICIAL_JITTOR_INPUT_NORM, module_arrays, save_checkpoint
from model.loading import load_model

TOLERANCE = 1e-4
EXPORT, EVAL_OPENCV, VERIFY = (os.path.join(REPO_ROOT, "tools", name)
                               for name in ("export_onnx.py", "eval_opencv.py", "verify_faces.py"))
# What OpenCV 4.x DNN reads; no Shape, Gather, Concat or other shape arithmetic.
STATIC_OPS = {"Conv", "BatchNormalization", "PRelu", "Add", "Sub", "Mul", "MaxPool", "Flatten", "Gemm",
              "GlobalAveragePool", "Relu", "Sigmoid"}
DEMO_FACES = ["Colin_Powell/Colin_Powell_0001.jpg", "Hugo_Chavez/Hugo_Chavez_0001.jpg"]
CASES = [pytest.param(net, size, id=f"{net}-{size[0]}x{size[1]}")
         for net in ("IR_18", "IR_SE_50", "MobileFaceNet", "SphereFace20") for size in ((112, 112), (112, 96))]


def relative_error(got, expected):
    return float(np.abs(np.asarray(got) - expected).max() / np.abs(expected).max())


def randomise(backbone, seed=0):
    """Random weights and BatchNorm statistics: at initialisation PReLU slopes are 1 and BN an identity."""
    rng = np.random.default_rng(seed)
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm):
            for name, low, high in (("weight", 0.5, 1.5), ("bias", -0.1, 0.1), ("running_mean", -0.1, 0.1),
                                    ("running_var", 0.5, 1.5)):
                getattr(m, name).assign(rng.uniform(low, high, m.num_features).astype(np.float32))
        elif isinstance(m, nn.PReLU):
            m.weight.assign(rng.uniform(0.0, 0.5, m.weight.shape).astype(np.float32))
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = int(np.prod(m.weight.shape[1:]))
            m.weight.assign(rng.normal(0, fan_in ** -0.5, m.weight.shape).astype(np.float32))
            if m.bias is not None:
                m.bias.assign(rng.uniform(-0.1, 0.1, m.bias.shape).astype(np.float32))
    return backbone


def face_images(input_hw, seed=0):
    """uint8 N x H x W x 3 RGB: two random images and two real faces of the demo set (cut to 112x96 when asked)."""
    height, width = input_hw
    noise = np.random.default_rng(seed).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    margin = (112 - width) // 2
    faces = [cv2.imread(os.path.join(DEMO_ROOT, "images", f))[:, margin:margin + width, ::-1] for f in DEMO_FACES]
    return np.ascontiguousarray(np.concatenate([noise, np.stack(faces)]))


def nchw(images):
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)


def jittor_embeddings(backbone, images):
    with jt.no_grad():
        return backbone(jt.array(nchw(images))).numpy()


def onnxruntime_embeddings(path, images, one_at_a_time=True):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    batches = [images[i:i + 1] for i in range(len(images))] if one_at_a_time else [images]
    return np.concatenate([session.run(None, {"input": nchw(b)})[0] for b in batches])


def assert_static(model):
    ops = {node.op_type for node in model.graph.node}
    assert ops <= STATIC_OPS, ops - STATIC_OPS
    assert all(d.HasField("dim_value") for d in model.graph.input[0].type.tensor_type.shape.dim)


@pytest.mark.parametrize("net,input_hw", CASES)
def test_onnxruntime_and_opencv_give_the_jittor_embedding(net, input_hw, tmp_path):
    backbone = randomise(build_backbone(net, input_hw, 128))
    backbone.eval()
    images = face_images(input_hw)
    expected = jittor_embeddings(backbone, images)
    model = backbone_onnx(backbone, input_hw)
    assert_static(model)
    path = str(tmp_path / "model.onnx")
    onnx.save(model, path)
    errors = {"onnxruntime": relative_error(onnxruntime_embeddings(path, images), expected)}
    bgr = [np.ascontiguousarray(image[:, :, ::-1]) for image in images]
    if input_hw == (112, 112):
        recognizer = cv2.FaceRecognizerSF.create(path, "")
        errors["FaceRecognizerSF"] = relative_error(np.concatenate([recognizer.feature(b) for b in bgr]), expected)
    else:
        # feature() always resizes to 112x112, which a 112x96 graph's Gemm cannot take: cv2.dnn runs it.
        with pytest.raises(cv2.error):
            cv2.FaceRecognizerSF.create(path, "").feature(bgr[0])
        dnn = cv2.dnn.readNet(path)
        features = []
        for b in bgr:
            dnn.setInput(cv2.dnn.blobFromImage(b, 1.0, (input_hw[1], input_hw[0]), (0, 0, 0), swapRB=True))
            features.append(dnn.forward())
        errors["cv2.dnn"] = relative_error(np.concatenate(features), expected)
    print(f"{net} {input_hw[0]}x{input_hw[1]} relative error: {errors}")
    assert max(errors.values()) < TOLERANCE, errors


def run_tool(script, *args):
    """The tool in a fresh shell's environment: without the nvcc_path conftest set, it must choose its build itself."""
    env = {k: v for k, v in os.environ.items() if k != "nvcc_path"}
    return subprocess.run([sys.executable, script, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env=env)


def test_the_tool_exports_an_scf_checkpoint_backbone_with_its_own_normalisation_and_a_dynamic_batch(tmp_path):
    """An SCF checkpoint: its frozen backbone is exported, with a note; official (x - 127.5) * 0.078125 pixels."""
    input_hw = (112, 96)
    backbone = randomise(build_backbone("MobileFaceNet", input_hw, 128, input_mean=OFFICIAL_JITTOR_INPUT_NORM[0],
                                        input_scale=OFFICIAL_JITTOR_INPUT_NORM[1]))
    config = {"net": "MobileFaceNet", "input_hw": list(input_hw), "input_size": "112x96", "embedding_size": 128,
              "input_norm": OFFICIAL_JITTOR_INPUT_NORM, "scf": True, "radius": 64}
    checkpoint, out = str(tmp_path / "scf.npz"), str(tmp_path / "onnx" / "scf.onnx")
    save_checkpoint(checkpoint, {"config": config}, module_arrays(backbone), module_arrays(ConfidenceHead(512, 128)))
    result = run_tool(EXPORT, "--checkpoint", checkpoint, "--out", out, "--batch", "dynamic", "--opset", "17")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SCF checkpoint" in result.stdout and "kappa" in result.stdout and "cv2.dnn" in result.stdout
    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert "Shape" not in {node.op_type for node in model.graph.node}
    images = face_images(input_hw, seed=1)
    expected = jittor_embeddings(load_model(checkpoint).backbone, images)
    assert relative_error(onnxruntime_embeddings(out, images, one_at_a_time=False), expected) < TOLERANCE


class CallsJittor(nn.Module):
    """A composite module computing with a Jittor function the tracer cannot see into."""

    def __init__(self):
        self.conv = nn.Conv2d(3, 4, 3)

    def execute(self, x):
        return jt.maximum(self.conv(x), 0.0)


def test_what_cannot_be_exported_is_refused_by_name(tmp_path):
    weights_only = str(tmp_path / "weights.npz")
    save_checkpoint(weights_only, {}, {"w": np.zeros(2, np.float32)}, {})
    result = run_tool(EXPORT, "--checkpoint", weights_only, "--out", str(tmp_path / "x.onnx"))
    assert result.returncode == 1 and f"error: {weights_only}: holds no model config" in result.stderr
    assert not os.path.exists(tmp_path / "x.onnx")
    backbone = build_backbone("MobileFaceNet")
    backbone.conv_6_flatten = nn.Tanh()
    with pytest.raises(ExportError, match=r"odd\.npz: layer 'conv_6_flatten' \(Tanh\) has no ONNX form"):
        backbone_onnx(backbone, (112, 112), source="odd.npz")
    with pytest.raises(ExportError, match=r"odd\.npz: the backbone calls a Jittor function"):
        backbone_onnx(CallsJittor(), (16, 16), source="odd.npz")
    with pytest.raises(ExportError, match="opset 7 is not supported"):
        backbone_onnx(build_backbone("SphereFace4"), (112, 96), opset=7)


def test_what_is_no_checkpoint_file_or_no_opset_is_refused_by_name(tmp_path, capsys):
    from tools import export_onnx
    out = str(tmp_path / "x.onnx")
    (tmp_path / "model.onnx").write_bytes(b"")
    for checkpoint, message in ((tmp_path / "model.onnx", f"{tmp_path / 'model.onnx'}: not a .npz checkpoint of this "
                                                          "project"),
                                (tmp_path, f"{tmp_path}: a folder holding no best.npz or last.npz")):
        with pytest.raises(SystemExit) as stop:
            export_onnx.main(["--checkpoint", str(checkpoint), "--out", out])
        assert str(stop.value.code).startswith(f"error: {message}")
    with pytest.raises(SystemExit) as stop:
        export_onnx.main(["--checkpoint", str(tmp_path), "--out", out, "--opset", "7"])
    assert stop.value.code == 2
    assert "argument --opset: opset 7 is not supported: choose 11 to" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_an_out_that_cannot_be_written_is_refused_before_the_export(tmp_path, monkeypatch):
    from tools import export_onnx
    from util import files
    weights_only = str(tmp_path / "weights.npz")  # what an export would stop at: the output is checked first
    save_checkpoint(weights_only, {}, {"w": np.zeros(2, np.float32)}, {})
    (tmp_path / "file").write_text("")
    for out, message in ((str(tmp_path), f"{tmp_path}: a folder; --out names the .onnx file to write"),
                         (str(tmp_path / "file" / "x.onnx"), f"{tmp_path / 'file'}: exists and is not a folder"),
                         ("/proc/sface/x.onnx", "/proc/sface: cannot create the output folder")):
        with pytest.raises(SystemExit) as stop:
            export_onnx.main(["--checkpoint", weights_only, "--out", out])
        assert str(stop.value.code).startswith(f"error: {message}"), stop.value.code
    checkpoint = str(tmp_path / "mfn.npz")
    config = {"net": "MobileFaceNet", "input_hw": [112, 112], "input_size": "112x112", "embedding_size": 128}
    save_checkpoint(checkpoint, {"config": config}, module_arrays(build_backbone("MobileFaceNet", (112, 112), 128)), {})

    def full_disk(path, mode):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(files, "open", full_disk, raising=False)  # the one file writer's
    out = str(tmp_path / "new" / "mfn.onnx")
    with pytest.raises(SystemExit) as stop:
        export_onnx.main(["--checkpoint", checkpoint, "--out", out])
    assert stop.value.code == f"error: {out}: cannot write the model (No space left on device); no earlier model " \
                              "was there"
    assert os.listdir(tmp_path / "new") == []


def identity_model(path, input_shape):
    """An .onnx passing its one input (of `input_shape`, None: no input at all) through."""
    io = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, input_shape) for name in ("x", "y")]
    nodes = [onnx.helper.make_node("Identity", ["x"], ["y"])] if input_shape else []
    graph = onnx.helper.make_graph(nodes, "identity", io[:1] if input_shape else [], io[1:] if input_shape else [])
    onnx.save(onnx.helper.make_model(graph), path)
    return path


def test_an_onnx_file_without_an_image_input_is_refused_by_name(tmp_path):
    from tools import eval_opencv, verify_faces
    empty = str(tmp_path / "empty.onnx")
    open(empty, "wb").close()
    face = os.path.join(DEMO_ROOT, "images", DEMO_FACES[0])
    message = f"error: {empty}: an ONNX model without inputs (an empty file?); export one with tools/export_onnx.py"
    for main, args in ((verify_faces.main, [face, face, "--threshold", "0.3"]),
                       (eval_opencv.main, ["--target", os.path.join(DEMO_ROOT, "lfw_demo")])):
        with pytest.raises(SystemExit) as stop:
            main([*args, "--model", empty])
        assert stop.value.code == message
    for shape, problem in ((None, "an ONNX model without inputs"), ([1, 128], "input 'x' has 2 dimensions, not N x 3"),
                           ([1, 3, "height", "width"], "input 'x' has no fixed height and width")):
        path = identity_model(str(tmp_path / "odd.onnx"), shape)
        with pytest.raises(ExportError, match=f"odd.onnx: {problem}"):
            onnx_input_size(path)


def test_a_model_no_runtime_can_build_is_named_not_a_traceback(tmp_path):
    """A well-formed graph with an image input whose operator no runtime knows: each tool names the file."""
    from tools import eval_opencv, verify_faces
    path = str(tmp_path / "unknown_op.onnx")
    io = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)
          for name, shape in (("x", [1, 3, 112, 112]), ("y", [1, 128]))]
    graph = onnx.helper.make_graph([onnx.helper.make_node("NoSuchOperator", ["x"], ["y"])], "odd", io[:1], io[1:])
    onnx.save(onnx.helper.make_model(graph), path)
    face = os.path.join(DEMO_ROOT, "images", DEMO_FACES[0])
    with pytest.raises(SystemExit) as stop:
        verify_faces.main([face, face, "--aligned", "--threshold", "0.3", "--model", path])
    assert str(stop.value.code).startswith(f"error: {path}: onnxruntime cannot load this model")
    with pytest.raises(SystemExit) as stop:
        eval_opencv.main(["--target", os.path.join(DEMO_ROOT, "lfw_demo"), "--model", path])
    assert str(stop.value.code).startswith(f"error: {path}: OpenCV cannot load this model")


def test_a_results_file_without_the_threshold_asked_for_is_named(exported, tmp_path):
    from tools import verify_faces
    face = os.path.join(DEMO_ROOT, "images", DEMO_FACES[0])
    results = tmp_path / "results.json"
    for row, message in (({"target": "lfw", "threshold": "1.2"}, "the results of target 'lfw' hold no number "
                                                                "'threshold' (found '1.2')"),
                         ({"target": "lfw", "threshold_at_far": {"0.001": "x"}}, "hold no number '0.001'"),
                         ({"target": "lfw", "threshold_at_far": [1]}, "no threshold at FAR 0.001")):
        results.write_text(json.dumps({"checkpoint": "c.npz", "results": [row]}))
        far = ["--best_accuracy"] if "threshold" in row else []
        with pytest.raises(SystemExit) as stop:
            verify_faces.main([face, face, "--aligned", "--model", exported[1], "--results", str(results), *far])
        assert str(stop.value.code).startswith(f"error: {results}: ") and message in stop.value.code, stop.value.code


def test_the_imported_insightface_model_through_opencv_on_real_lfw_faces(tmp_path):
    """Real weights on real faces: the imported checkpoint, exported by the tools, fed to FaceRecognizerSF."""
    source = shared_path("insightface-mobilefacenet")
    lfw = shared_path("lfw", "images")
    checkpoint, out = str(tmp_path / "mfn.npz"), str(tmp_path / "mfn.onnx")
    result = run_tool(os.path.join(REPO_ROOT, "tools", "import_weights.py"), "insightface", "--params",
                      os.path.join(source, "model-y1-test2_params.npz"), "--symbol",
                      os.path.join(source, "model-symbol.json"), "--out", checkpoint)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_tool(EXPORT, "--checkpoint", checkpoint, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    bgr = [cv2.imread(os.path.join(lfw, name, f"{name}_0001.jpg")) for name in ("Aaron_Eckhart", "Zico", "Yoko_Ono")]
    expected = jittor_embeddings(load_model(checkpoint).backbone, np.stack([b[:, :, ::-1] for b in bgr]))
    recognizer = cv2.FaceRecognizerSF.create(out, "")
    error = relative_error(np.concatenate([recognizer.feature(b) for b in bgr]), expected)
    print(f"InsightFace MobileFaceNet, FaceRecognizerSF on LFW faces: relative error {error:.2e}")
    assert error < TOLERANCE


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A MobileFaceNet checkpoint with random weights and its export by the tool."""
    root = tmp_path_factory.mktemp("exported")
    checkpoint, out = str(root / "mfn.npz"), str(root / "mfn.onnx")
    config = {"net": "MobileFaceNet", "input_hw": [112, 112], "input_size": "112x112", "embedding_size": 128}
    backbone = randomise(build_backbone("MobileFaceNet", (112, 112), 128))
    save_checkpoint(checkpoint, {"config": config}, module_arrays(backbone), {})
    result = run_tool(EXPORT, "--checkpoint", checkpoint, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    return checkpoint, out


def test_opencv_scores_a_pair_set_as_the_jittor_evaluation_does(exported, tmp_path):
    checkpoint, onnx_path = exported
    pairs, outdir = small_pairs_folder(str(tmp_path / "pairs"), per_fold=2), str(tmp_path / "eval")
    result = run_tool(os.path.join(REPO_ROOT, "eval_SFace_jittor.py"), "--checkpoint", checkpoint, "--target", pairs,
                      "--outdir", outdir, "--workers_id", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_tool(EVAL_OPENCV, "--model", onnx_path, "--target", pairs, "--compare",
                      os.path.join(outdir, "results.json"), "--tolerance", "0")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "40 pairs through cv2.FaceRecognizerSF" in result.stdout and "difference 0.000 points" in result.stdout


def test_eval_opencv_checks_the_results_it_compares_with_before_scoring(exported, tmp_path, monkeypatch):
    from tools import eval_opencv
    monkeypatch.setattr(eval_opencv, "opencv_features", lambda *args: pytest.fail("scored before checking --compare"))
    pairs = small_pairs_folder(str(tmp_path / "pairs"))
    missing, not_json, other = (str(tmp_path / name) for name in ("missing.json", "cut.json", "other.json"))
    with open(not_json, "w") as f:
        f.write('{"checkpoint": "x.npz", "resu')  # a file cut short
    with open(other, "w") as f:
        json.dump({"checkpoint": "x.npz", "results": [{"target": "agedb_30", "accuracy": 0.9}]}, f)
    for path, message in ((missing, "cannot read (No such file or directory)"), (not_json, "not JSON ("),
                          (other, "no results for target 'pairs'; it has agedb_30")):
        with pytest.raises(SystemExit) as stop:
            eval_opencv.main(["--model", exported[1], "--target", pairs, "--compare", path])
        assert str(stop.value.code).startswith(f"error: {path}: {message}"), stop.value.code


def verify(*args):
    faces = [os.path.join(DEMO_ROOT, "images", f) for f in DEMO_FACES]
    return run_tool(VERIFY, *faces, "--aligned", *args)


def test_verify_faces_takes_its_threshold_from_the_evaluation(exported, tmp_path):
    checkpoint, onnx_path = exported
    jittor = verify("--model", checkpoint, "--threshold", "-1")
    assert jittor.returncode == 0 and "same person" in jittor.stdout, jittor.stderr[-2000:]
    similarity = float(jittor.stdout.split()[2])
    results = str(tmp_path / "results.json")
    with open(results, "w") as f:
        json.dump({"checkpoint": checkpoint, "results": [
            {"target": "lfw", "threshold": 2 - 2 * (similarity + 0.01), "threshold_at_far": {
                "0.001": 2 - 2 * (similarity - 0.01), "0.0001": None}},
            {"target": "lfw-scf", "threshold": 5.0}]}, f)
    at_far = verify("--model", onnx_path, "--results", results)  # the export answers as its checkpoint does
    assert at_far.returncode == 0, at_far.stderr[-2000:]
    assert at_far.stdout.split()[2] == f"{similarity:.4f}"
    assert f"threshold {similarity - 0.01:.4f}: the threshold at FAR 0.001 on lfw" in at_far.stdout
    assert "same person" in at_far.stdout and "note" not in at_far.stdout
    best = verify("--model", onnx_path, "--results", results, "--best_accuracy")
    assert f"threshold {similarity + 0.01:.4f}: the best-accuracy" in best.stdout and "different people" in best.stdout
    unreachable = verify("--model", onnx_path, "--results", results, "--far", "1e-4")
    assert unreachable.returncode == 1 and "no threshold keeps FAR at 0.0001" in unreachable.stderr


def test_a_threshold_far_or_tolerance_that_is_no_usable_number_is_refused(capsys):
    from tools import eval_opencv, verify_faces
    faces = [os.path.join(DEMO_ROOT, "images", f) for f in DEMO_FACES]
    for main, args, message in (
            (verify_faces.main, ["--threshold", "nan"], "argument --threshold: must be a finite number, got 'nan'"),
            (verify_faces.main, ["--far", "0"], "argument --far: must be a false-accept rate in (0, 1], got '0'"),
            (verify_faces.main, ["--far", "1.5"], "argument --far: must be a false-accept rate in (0, 1]"),
            (verify_faces.main, ["--far", "inf"], "argument --far: must be a finite number, got 'inf'"),
            (verify_faces.main, ["--threshold", "1.5"], "argument --threshold: must be a cosine similarity from -1"),
            (verify_faces.main, ["--threshold=-2"], "argument --threshold: must be a cosine similarity from -1 to 1"),
            (eval_opencv.main, ["--target", "lfw", "--tolerance", "nan"], "argument --tolerance: must be a finite"),
            (eval_opencv.main, ["--target", "lfw", "--tolerance=-1"], "argument --tolerance: must be >= 0, got -1")):
        with pytest.raises(SystemExit) as stop:
            main([*(faces if main is verify_faces.main else []), *args, "--model", "unused.onnx"])
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_results_file_without_results_is_named(tmp_path):
    from tools.verify_faces import evaluation_threshold
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"checkpoint": "x.npz", "results": []}))
    with pytest.raises(ResultsError, match=f"^{results}: holds no verification results"):
        evaluation_threshold(str(results), None, 1e-3)


def test_verify_faces_says_how_to_align_a_face_of_another_size(exported, tmp_path):
    big = str(tmp_path / "photo.png")
    cv2.imwrite(big, np.zeros((250, 250, 3), np.uint8))
    result = run_tool(VERIFY, big, big, "--model", exported[1], "--aligned")
    assert result.returncode == 1
    assert f"error: {big}: a 250x250 image, the model takes aligned 112x112 faces" in result.stderr
    assert "alignCrop" in result.stderr


def test_verify_faces_names_an_image_opencv_refuses_to_decode(exported, tmp_path):
    from tools import verify_faces
    huge = str(tmp_path / "huge.png")
    with open(huge, "wb") as f:
        f.write(oversized_png())  # its header claims 40000x40000 pixels
    face = os.path.join(DEMO_ROOT, "images", DEMO_FACES[0])
    with pytest.raises(SystemExit) as stop:
        verify_faces.main([face, huge, "--model", exported[1], "--threshold", "0.3", "--aligned"])
    assert stop.value.code == f"error: {huge}: not a decodable image"
