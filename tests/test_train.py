"""The training script end to end on CPU: outputs, presets, bad flags, exact resume after SIGKILL."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jittor as jt
import numpy as np
import pytest

from conftest import (DEMO_ROOT, REPO_ROOT, assert_same_angles, copy_demo_faces, small_pairs_folder,
                      write_image_list)
from data.text import DataError
from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.loading import load_model
from train.config import SCF, SFACE, RunFinished, configure
from util.files import OutputError

TRAIN = os.path.join(REPO_ROOT, "train_SFace_jittor.py")


def parse_config(argv):
    return configure(SFACE, argv).cfg


def train_args(data_root, outdir, *extra):
    return ["--data_root", str(data_root), "--outdir", str(outdir), "--net", "MobileFaceNet",
            "--batch_size", "4", "--lr", "0.05", "--workers_id", "cpu", "--num_workers", "2", *extra]


def read_metrics(outdir, kind):
    with open(os.path.join(outdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def test_every_data_mode_resolves_with_its_recommended_a_b():
    expected = {"casia": (0.87, 1.2), "vgg": (0.88, 1.25), "ms1m": (0.9, 1.2)}
    for mode in SFACE.presets:
        cfg = parse_config(["--data_mode", mode])
        assert os.path.isabs(cfg["data_root"]) and cfg["data_root"].startswith(REPO_ROOT)
        if mode in expected:
            assert (cfg["param_a"], cfg["param_b"]) == expected[mode]
    cfg = parse_config(["--data_mode", "vgg", "--param_a", "0.5", "--data_root", "/x"])
    assert cfg["param_a"] == 0.5 and cfg["param_b"] == 1.25 and cfg["data_root"] == "/x"
    assert parse_config(["--workers_id", "cpu"])["gpu_ids"] == () and parse_config([])["device"] == "cpu"


def test_a_gpu_asked_for_where_there_is_none_is_a_usage_error(capsys):
    if jt.has_cuda:
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as stopped:
        parse_config(["--workers_id", "0,1"])
    assert stopped.value.code == 2 and "--workers_id 0,1 asks for a GPU, but Jittor found no usable CUDA here; " \
                                      "pass --workers_id cpu" in capsys.readouterr().err


def test_the_resolved_config_cannot_be_changed():
    cfg = parse_config(["--data_mode", "demo", "--head", "SFaceLoss"])
    for change in (lambda: cfg.__setitem__("lr", 1.0), lambda: cfg.update(lr=1.0), lambda: cfg.pop("lr"),
                   lambda: cfg.setdefault("new", 1), lambda: cfg.__delitem__("lr"), lambda: cfg.clear(),
                   lambda: cfg["head_params"].__setitem__("a", 0.5), lambda: cfg["targets"].append("lfw")):
        with pytest.raises((TypeError, AttributeError)):
            change()
    assert cfg["lr"] == 0.05 and cfg["head_params"]["a"] == 0.87 and cfg["targets"] == ("lfw_demo",)
    assert json.loads(json.dumps(cfg))["head_params"] == {"a": 0.87, "b": 1.2}  # still written as plain JSON


@pytest.mark.parametrize("flag,value,message", [("--input_size", "112", "--input_size must look like"),
                                                ("--stages", "5,x", "--stages must be comma-separated"),
                                                ("--batch_size", "0", "--batch_size must be positive"),
                                                ("--data_mode", "imagenet", "invalid choice")])
def test_bad_flags_are_refused(flag, value, message, capsys):
    with pytest.raises(SystemExit):
        parse_config([flag, value])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("spec,argv,message", [
    (SFACE, ["--lr", "nan"], "argument --lr: must be a finite number, got 'nan'"),
    (SFACE, ["--lr", "inf"], "argument --lr: must be a finite number, got 'inf'"),
    (SFACE, ["--momentum", "nan"], "argument --momentum: must be a finite number, got 'nan'"),
    (SFACE, ["--param_a=-inf"], "argument --param_a: must be a finite number, got '-inf'"),
    (SCF, ["--checkpoint", "x.npz", "--gamma", "nan"], "argument --gamma: must be a finite number, got 'nan'"),
    (SFACE, ["--momentum", "-0.9"], "--momentum must be >= 0, got -0.9"),
    (SFACE, ["--stages=-5,70"], "--stages must be epochs >= 0, got '-5,70'"),
    (SFACE, ["--target", " , "], "--target ' , ' names no target; give 'none' to train without evaluation"),
    (SCF, ["--checkpoint", "x.npz", "--quality_augment", "1.5"],
     "argument --quality_augment: a probability is from 0 to 1, got 1.5"),
    (SFACE, ["--seed", "-1"], "argument --seed: must be an integer from 0 to 4294967295, got -1"),
    (SCF, ["--checkpoint", "x.npz", "--seed", str(2**64)], "argument --seed: must be an integer from 0 to 4294967295"),
    (SFACE, ["--net", "ResNet_9000"], "unknown backbone 'ResNet_9000'; choose from IR_18"),
    (SFACE, ["--net", "MobileFaceNet", "--input_size", "100x100"],
     "MobileFaceNet takes an input size whose sides are each a positive multiple of 16 (112x112, 112x96, ...), "
     "got 100x100"),
    (SFACE, ["--head", "SphereFace", "--param_m", "7"], "SphereFace margin m must be an integer from 1 to 5, got 7"),
    (SFACE, ["--param_s", "-1"], "head SFaceLoss: the scale s must be positive, got -1"),
    (SFACE, ["--param_k", "0"], "head SFaceLoss: the sigmoid slope k must be positive, got 0"),
    (SFACE, ["--param_b", "100"], "head SFaceLoss: the sigmoid centre b is an angle in radians from 0 to pi, got 100"),
    (SFACE, ["--head", "ArcFace", "--param_m", "-0.5"], "head ArcFace: the margin m must be >= 0, got -0.5"),
    (SFACE, ["--head", "SphereFace", "--param_m", "2.5"], "SphereFace margin m must be an integer from 1 to 5, "
                                                         "got 2.5"),
])
def test_values_no_run_can_use_are_refused_on_the_command_line(spec, argv, message, capsys):
    """Before any file is read: a usage error, not a traceback after the data, nor NaN weights at the end."""
    with pytest.raises(SystemExit) as stopped:
        configure(spec, ["--data_root", "/no/such/folder", *argv])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("config, message", [
    (None, "holds no model config"),
    ({"net": "MobileFaceNet", "input_hw": [112, 112], "embedding_size": 512, "input_norm": "x"},
     "its config describes no backbone this project builds: input_norm 'x'"),
])
def test_starting_weights_of_a_checkpoint_that_states_no_input_normalisation_are_refused(tmp_path, config, message):
    """Built with a guessed normalisation, the backbone would see other pixel values than it was trained on."""
    path = str(tmp_path / "weights.npz")
    save_checkpoint(path, {"config": config} if config else {}, {"w": np.zeros(2, np.float32)}, {})
    with pytest.raises(CheckpointError, match=f"^{path}: {message}"):
        configure(SFACE, ["--data_mode", "demo", "--workers_id", "cpu", "--resume_backbone", path])


@pytest.mark.parametrize("change, message", [
    ({"progress": "x"}, "its training position \\(meta 'progress'\\) is not counts of epochs, batches and steps"),
    ({"progress": {"epoch": 0, "batch": -1, "step": 0}}, "its training position"),
    ({"optimizer_steps": 1.5}, "its optimizer step count \\(meta 'optimizer_steps'\\) is not a count"),
    ({"best": "x"}, "its meta 'best' is not a JSON object"),
    ({"config": {"net": "ResNet_9000"}}, "its config describes no backbone this project builds: unknown backbone"),
    ({"config": {"head": "Foo"}}, "its config names no head this project trains: unknown head 'Foo'"),
])
def test_a_damaged_training_state_is_named_with_its_checkpoint(tmp_path, change, message):
    config = dict(parse_config(["--data_mode", "demo", "--workers_id", "cpu"]))
    meta = {"config": config, "progress": {"epoch": 0, "batch": 1, "step": 1}, "optimizer_steps": 1}
    meta.update({k: dict(config, **v) if k == "config" else v for k, v in change.items()})
    path = str(tmp_path / "last.npz")
    save_checkpoint(path, meta, {"w": np.zeros(2, np.float32)}, {})
    with pytest.raises(CheckpointError, match=f"^{path}: {message}"):
        configure(SFACE, ["--resume", path, "--workers_id", "cpu"])


def test_training_writes_metrics_checkpoints_and_improves_loss(tiny_face_set, tmp_path):
    import train_SFace_jittor
    data_root, _ = tiny_face_set(classes=4, per_class=4)
    target = small_pairs_folder(str(tmp_path / "mini_lfw"))
    outdir = tmp_path / "run"
    best = train_SFace_jittor.main(train_args(data_root, outdir, "--epochs", "3", "--stages", "2", "--log_freq", "2",
                                              "--eval_freq", "6", "--target", target))
    train = read_metrics(outdir, "train")
    evals = read_metrics(outdir, "eval")
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]
    assert train[-1]["loss"] < train[0]["loss"]
    assert train[-1]["lr"] == pytest.approx(0.005)  # divided by 10 at epoch 2
    assert [r["step"] for r in evals] == [0, 6, 12] and evals[0]["pairs"] == 20
    assert all(0 <= r["accuracy"] <= 1 and r["xnorm"] > 0 for r in evals)
    assert best["mean_accuracy"] == max(r["accuracy"] for r in evals)
    last = load_checkpoint(str(outdir / "last.npz"))
    assert last["meta"]["progress"]["step"] == 12 and last["meta"]["progress"]["epoch"] == 3
    assert last["meta"]["config"]["net"] == "MobileFaceNet"
    assert "conv_1.conv2d.weight" in last["backbone"] and last["head"]["weight"].shape == (4, 512)
    assert os.path.exists(outdir / "train.log") and os.path.exists(outdir / "config.json")
    assert os.path.exists(outdir / "best.npz") == bool(best["step"])  # only a trained model can be "best"
    backbone, _, cfg, _ = load_model(str(outdir / "last.npz"))  # weights alone, from the same format
    np.testing.assert_array_equal(backbone.state_dict()["conv_1.conv2d.weight"].numpy(),
                                  last["backbone"]["conv_1.conv2d.weight"])
    assert cfg["input_norm"] == [127.5, 1 / 128] and not backbone.is_training()


def test_a_bad_image_list_stops_before_training(tmp_path):
    (tmp_path / "imgs.txt").write_text("a.jpg 0\nb.jpg\n")
    result = subprocess.run([sys.executable, TRAIN, *train_args(tmp_path, tmp_path / "out", "--target", "none")],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode != 0
    assert "imgs.txt:2: expected '<relative path> <label>'" in result.stderr


@pytest.mark.parametrize("declared", [1, 3])
def test_images_of_one_class_are_refused_before_training(tmp_path, declared):
    import train_SFace_jittor
    data_root, _ = copy_demo_faces(tmp_path / "data", classes=1, per_class=4)
    (data_root / "property").write_text(f"{declared},112,112\n")
    outdir = tmp_path / "run"
    with pytest.raises(DataError, match=f"{data_root / 'imgs.txt'}: images of 1 class \\({declared} declared\\); "
                                        "training a recognition model needs images of at least 2 classes"):
        train_SFace_jittor.main(train_args(data_root, outdir, "--target", "none", "--epochs", "1"))
    assert not {"config.json", "metrics.jsonl", "last.npz"} & set(os.listdir(outdir))


@pytest.mark.parametrize("how", ["property", "label"])
def test_a_class_count_no_memory_can_hold_is_refused_before_the_head_is_built(tmp_path, how):
    import train_SFace_jittor
    data_root, entries = copy_demo_faces(tmp_path / "data", classes=2, per_class=2)
    if how == "property":
        (data_root / "property").write_text(f"{10**12},112,112\n")
    else:  # without property, the largest label + 1
        write_image_list(data_root, entries[:-1] + [(entries[-1][0], 10**12 - 1)])
        os.remove(data_root / "property")
    with pytest.raises(DataError, match=f"^{data_root / 'imgs.txt'}: 1000000000000 classes .*: training their 512-d "
                                        "centres needs 5722046 GiB, more than this machine's"):
        train_SFace_jittor.main(train_args(data_root, tmp_path / "run", "--target", "none", "--epochs", "1"))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, where every write fails with ENOSPC")
def test_a_full_disk_under_the_log_or_the_metrics_is_one_error_naming_the_file(tmp_path):
    from evaluation.metrics_file import MetricsLog
    from train.logger import setup_logging
    os.symlink("/dev/full", tmp_path / "train.log")
    log = setup_logging(str(tmp_path))
    try:
        with pytest.raises(OutputError, match=f"^{tmp_path / 'train.log'}: cannot write the log \\(No space left"):
            log.info("a line the disk has no room for")
    finally:
        log.handlers.clear()
    with pytest.raises(OutputError, match="^/dev/full: cannot write the metrics file \\(No space left on device\\)"):
        MetricsLog("/dev/full").write({"kind": "train", "step": 1})


def run_until(args, predicate, timeout=600):
    """Start a training process and SIGKILL it once predicate() holds."""
    # Jittor's SIGCHLD handler quick-exits any process that imported it when a child dies
    # of a signal; this test process kills its child on purpose.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    process = subprocess.Popen([sys.executable, TRAIN, *args], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, "training did not reach the kill point in time"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tiny_face_set, tmp_path):
    data_root, _ = tiny_face_set(classes=5, per_class=4)  # 5 batches of 4 per epoch
    common = ["--epochs", "3", "--stages", "2", "--save_freq", "4", "--log_freq", "1", "--eval_freq", "0",
              "--target", "none"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    subprocess.run([sys.executable, TRAIN, *train_args(data_root, straight, *common)], cwd=REPO_ROOT, check=True,
                   capture_output=True)

    def reached_step_9():
        path = interrupted / "metrics.jsonl"
        return path.exists() and any(r.get("step") == 9 for r in map(json.loads, path.read_text().splitlines()[:-1]))
    run_until(train_args(data_root, interrupted, *common), reached_step_9)
    killed_at = load_checkpoint(str(interrupted / "last.npz"))["meta"]["progress"]
    assert killed_at["step"] == 8 and killed_at["batch"] == 3  # mid-way through epoch 2
    subprocess.run([sys.executable, TRAIN, "--resume", str(interrupted), "--workers_id", "cpu"], cwd=REPO_ROOT,
                   check=True, capture_output=True)

    a, b = load_checkpoint(str(straight / "last.npz")), load_checkpoint(str(interrupted / "last.npz"))
    assert a["meta"]["progress"] == b["meta"]["progress"]
    for part in ("backbone", "head"):
        for name, value in a[part].items():
            np.testing.assert_allclose(b[part][name], value, rtol=1e-5, atol=1e-6, err_msg=f"{part}/{name}")
    assert a["optimizer"].keys() == b["optimizer"].keys() and "backbone/conv_1.conv2d.weight/momentum" in a["optimizer"]
    for name, value in a["optimizer"].items():
        np.testing.assert_allclose(b["optimizer"][name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    logged_a, logged_b = read_metrics(straight, "train"), read_metrics(interrupted, "train")
    assert [r["step"] for r in logged_b] == list(range(1, 16))
    for ra, rb in zip(logged_a, logged_b):
        for key in ("loss", "intra", "inter", "cos_target", "cos_other", "train_acc", "lr"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["step"], key)
        assert_same_angles(ra["angles"], rb["angles"])


def test_embedded_demo_is_consistent_and_held_out():
    from data.image_list import read_image_list
    from data.verification_sets import load_target
    demo = read_image_list(DEMO_ROOT)
    assert demo.num_classes == 100 and len(demo.paths) == 1868
    assert all(os.path.isfile(os.path.join(DEMO_ROOT, p)) for p in demo.paths)
    pairs = load_target("lfw_demo", DEMO_ROOT)
    assert len(pairs.issame) == 600 and pairs.issame.sum() == 300
    train_people = {p.split("/")[1] for p in demo.paths}
    pair_people = {os.path.basename(os.path.dirname(s)) for s in pairs.sources}
    assert not train_people & pair_people


@pytest.mark.parametrize("head", ["Softmax", "CosFace", "AMSoftmax", "ArcFace", "SphereFace"])
def test_every_head_trains_and_lowers_its_loss(tiny_face_set, tmp_path, head):
    import train_SFace_jittor
    data_root, _ = tiny_face_set(classes=4, per_class=8)  # 4 batches of 8 per epoch
    outdir = tmp_path / head
    train_SFace_jittor.main(train_args(data_root, outdir, "--head", head, "--epochs", "6", "--stages", "6",
                                       "--batch_size", "8", "--log_freq", "4", "--target", "none", "--lr", "0.01"))
    losses = [r["loss"] for r in read_metrics(outdir, "train")]  # one mean per epoch
    assert len(losses) == 6 and np.mean(losses[-3:]) < losses[0] - 0.25 * abs(losses[0]), losses


def test_head_options_are_checked():
    assert parse_config(["--head", "ArcFace", "--param_m", "0.4"])["head_params"] == {"m": 0.4}
    assert parse_config(["--head", "SFaceLoss", "--data_mode", "vgg"])["head_params"] == {"a": 0.88, "b": 1.25}
    with pytest.raises(SystemExit):
        parse_config(["--head", "CosFace", "--param_k", "3"])
    with pytest.raises(SystemExit):
        parse_config(["--head", "NoSuchHead"])


def test_a_resumed_run_takes_the_overridable_options_it_is_given(tiny_face_set, tmp_path):
    """--target and --eval_root (and the other options docs/training.md lists) given to --resume replace the checkpoint's."""
    import train_SFace_jittor
    data_root, _ = tiny_face_set(classes=4, per_class=4)  # 4 batches of 4 per epoch
    small_pairs_folder(str(tmp_path / "targets" / "mini"))
    outdir = tmp_path / "run"
    train_SFace_jittor.main(train_args(data_root, outdir, "--epochs", "3", "--max_steps", "2", "--log_freq", "1",
                                       "--target", "none"))
    train_SFace_jittor.main(["--resume", str(outdir), "--workers_id", "cpu", "--target", "mini", "--eval_root",
                             str(tmp_path / "targets"), "--epochs", "1", "--max_steps", "0", "--log_freq", "2",
                             "--save_freq", "3", "--num_workers", "1"])
    assert [(r["target"], r["step"]) for r in read_metrics(outdir, "eval")] == [("mini", 4)]
    assert [r["step"] for r in read_metrics(outdir, "train")] == [1, 2, 4]
    cfg = load_checkpoint(str(outdir / "last.npz"))["meta"]["config"]
    assert cfg["targets"] == ["mini"] and cfg["eval_root"] == str(tmp_path / "targets")
    assert (cfg["epochs"], cfg["max_steps"], cfg["log_freq"], cfg["save_freq"], cfg["num_workers"]) == (1, 0, 2, 3, 1)
    assert {"target", "eval_root", "epochs"} <= set(cfg["given"])


# ---- what a run folder may and may not become ----

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run (1 epoch of 2 batches of 4) and its data, trained once; tests change only copies of it."""
    import train_SFace_jittor
    root = tmp_path_factory.mktemp("finished")
    data_root, _ = copy_demo_faces(root / "data", classes=2, per_class=4)
    train_SFace_jittor.main(train_args(data_root, root / "run", "--epochs", "1", "--log_freq", "1", "--target", "none"))
    return data_root, root / "run"


def copied_run(finished_run, tmp_path):
    data_root, outdir = finished_run
    shutil.copytree(outdir, tmp_path / "run")
    return data_root, tmp_path / "run"


def folder_bytes(outdir):
    return {name: (outdir / name).read_bytes() for name in sorted(os.listdir(outdir))}


def test_a_new_run_never_replaces_an_earlier_runs_checkpoints(finished_run, tmp_path):
    import train_SFace_jittor
    data_root, outdir = copied_run(finished_run, tmp_path)
    before = folder_bytes(outdir)
    with pytest.raises(OutputError, match=f"{outdir}: holds the checkpoints of an earlier run \\(last.npz\\), "
                                          f"which a new run would replace; continue that run with --resume {outdir}"):
        train_SFace_jittor.main(train_args(data_root, outdir, "--target", "none", "--epochs", "1"))
    assert folder_bytes(outdir) == before


def resume_finished(outdir, *extra):
    import train_SFace_jittor
    with pytest.raises(RunFinished) as stopped:
        train_SFace_jittor.main(["--resume", str(outdir), "--workers_id", "cpu", *extra])
    return str(stopped.value)


def test_a_finished_run_resumed_changes_nothing_until_given_a_larger_limit(finished_run, tmp_path):
    import train_SFace_jittor
    data_root, outdir = copied_run(finished_run, tmp_path)
    before = folder_bytes(outdir)
    for extra in ([], ["--max_steps", "2"]):
        out = resume_finished(outdir, *extra)
        assert f"{outdir / 'last.npz'}: the run is finished (1 of 1 epochs done, step 2" in out
        assert "nothing was changed" in out
    command = subprocess.run([sys.executable, TRAIN, "--resume", str(outdir)], cwd=REPO_ROOT, capture_output=True,
                             text=True)
    assert command.returncode == 0 and "the run is finished" in command.stdout, command.stderr[-2000:]
    assert folder_bytes(outdir) == before
    # The run's own options may be repeated; a larger limit trains on, and the new limit is then final too.
    (outdir / "last.npz.tmp99999").write_bytes(b"what a process killed mid-write left")
    train_SFace_jittor.main(["--resume", str(outdir), *train_args(data_root, outdir), "--epochs", "3", "--max_steps",
                             "3"])
    progress = load_checkpoint(str(outdir / "last.npz"))["meta"]["progress"]
    assert (progress["epoch"], progress["batch"], progress["step"]) == (1, 1, 3)
    assert not (outdir / "last.npz.tmp99999").exists()
    assert "removed 1 partial checkpoint(s) that a process killed mid-write left" in (outdir / "train.log").read_text()
    after = folder_bytes(outdir)
    assert "(1 of 3 epochs done, step 3 of --max_steps 3)" in resume_finished(outdir)
    assert folder_bytes(outdir) == after


@pytest.mark.parametrize("given,refused", [(["--net", "IR_18"], "--net IR_18 (the run's: MobileFaceNet)"),
                                           (["--lr", "0.1"], "--lr 0.1 (the run's: 0.05)"),
                                           (["--head", "ArcFace"], "--head ArcFace (the run's: SFaceLoss)"),
                                           (["--local_bn"], "--local_bn True (the run's: False)"),
                                           (["--label_noise", "0.2"], "--label_noise 0.2 (the run's: 0.0)")])
def test_a_resumed_run_refuses_an_option_it_cannot_honour(finished_run, given, refused, capsys):
    with pytest.raises(SystemExit) as stopped:
        configure(SFACE, ["--resume", str(finished_run[1]), *given, "--epochs", "2"])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and f"a resumed run keeps its checkpoint's options, so it cannot take {refused}" \
        in error and "it may change only --workers_id" in error


def test_a_list_edited_in_place_is_refused_on_resume(finished_run, tmp_path):
    import train_SFace_jittor
    data_root, outdir = copied_run(finished_run, tmp_path)
    listing = os.path.join(data_root, "imgs.txt")
    with open(listing) as f:
        original = f.read()
    try:
        with open(listing, "w") as f:
            f.write("".join(original.splitlines(keepends=True)[:-1]))
        with pytest.raises(DataError, match=f"{listing}: changed since the run read it: 7 images of 2 classes, "
                                            "fingerprint [0-9a-f]+ now, 8 images of 2 classes"):
            train_SFace_jittor.main(["--resume", str(outdir), "--workers_id", "cpu", "--epochs", "2"])
    finally:
        with open(listing, "w") as f:
            f.write(original)


def test_moved_data_resumes_when_it_is_the_same_data(finished_run, tmp_path):
    import train_SFace_jittor
    data_root, outdir = copied_run(finished_run, tmp_path)
    moved = tmp_path / "moved"
    shutil.copytree(data_root, moved)
    lines = (moved / "imgs.txt").read_text().splitlines(keepends=True)
    resume = ["--resume", str(outdir), "--data_root", str(moved), "--workers_id", "cpu", "--epochs", "2"]
    (moved / "imgs.txt").write_text("".join(lines[:-1]))
    with pytest.raises(DataError, match=f"{moved / 'imgs.txt'}: not the data the run was trained on \\({data_root}\\): "
                                        "7 images of 2 classes, fingerprint [0-9a-f]+ here, 8 images of 2 classes"):
        train_SFace_jittor.main(resume)
    (moved / "imgs.txt").write_text("".join(lines))
    train_SFace_jittor.main(resume)
    checkpoint = load_checkpoint(str(outdir / "last.npz"))
    assert checkpoint["meta"]["progress"]["step"] == 4 and checkpoint["meta"]["config"]["data_root"] == str(moved)
