"""tools/plot_run.py and evaluation/run_plot.py: one PNG of one or more runs' curves from metrics.jsonl alone."""
import json
import os
import re
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from conftest import REPO_ROOT
from evaluation.angles import angle_summary
from evaluation.run_plot import plot_runs
from util.errors import InputError

PLOT_RUN = os.path.join(REPO_ROOT, "tools", "plot_run.py")


def write_run(folder, steps=(2, 4, 6), a=0.87, b=1.2, angles=True, config=True):
    """A run folder as training leaves it: config.json and metrics.jsonl with training windows (angles drawn
    from a seeded generator, summarised as training does) and evaluations."""
    rng = np.random.default_rng(len(steps))
    records = [{"kind": "eval", "step": 0, "epoch": 1, "target": "lfw", "accuracy": 0.6, "tar_at_far": {"0.001": 0.1}}]
    for step in steps:
        record = {"kind": "train", "step": step, "epoch": 1, "lr": 0.1 if step < 5 else 0.01, "loss": 10.0 / step,
                  "intra": 6.0 / step, "inter": 4.0 / step, "train_acc": step / 10, "img_per_s": 100.0,
                  "skipped_images": 0}
        if angles:
            record["angles"] = angle_summary(rng.normal(1.5 - step / 20, 0.1, 64), rng.normal(1.55, 0.05, 64), a=a)
        records.append(record)
    records.append({"kind": "eval", "step": steps[-1], "epoch": 1, "target": "lfw", "accuracy": 0.8,
                    "tar_at_far": {"0.001": 0.3}})
    os.makedirs(folder)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    if config:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump({"head": "SFaceLoss", "head_params": {"a": a, "b": b}} if a is not None else {"head": "ArcFace",
                      "head_params": {"s": 64.0, "m": 0.5}}, f)
    return str(folder)


def legend_names(fig):
    return [text.get_text() for text in fig.legends[0].get_texts()]


def test_several_runs_share_one_png_each_named_once_in_the_legend(tmp_path):
    runs = [write_run(tmp_path / "sface_a", a=0.87, b=1.2), write_run(tmp_path / "sface_b", steps=(3, 6), a=0.8, b=1.1),
            write_run(tmp_path / "arcface", a=None, angles=False)]
    out = tmp_path / "curves.png"
    fig = plot_runs(runs, str(out))
    assert legend_names(fig) == ["sface_a", "sface_b", "arcface"]
    image = matplotlib.image.imread(str(out))
    assert image.shape[:2] == (800, 1200) and image.std() > 0  # 12 x 8 inches at 100 dpi, not blank
    loss_ax, acc_ax, lr_ax, angle_ax = fig.axes[:4]
    assert len(loss_ax.get_lines()) == 3 * 3  # loss, intra, inter of each run
    assert lr_ax.get_yscale() == "log"
    # theta_y and theta_j medians of the two SFace runs, and each one's a and b as horizontal lines
    centre_lines = sorted(line.get_ydata()[0] for line in angle_ax.get_lines() if list(line.get_xdata()) == [0, 1])
    assert centre_lines == pytest.approx([0.8, 0.87, 1.1, 1.2])
    assert len(angle_ax.get_lines()) == 2 * 2 + 4
    assert {t.get_text() for t in angle_ax.get_legend().get_texts()} == {"θ_y median", "θ_j median", "SFace a",
                                                                       "SFace b"}
    assert {t.get_text() for t in acc_ax.get_legend().get_texts()} == {"train (batch)", "lfw (verification)"}


def test_runs_of_the_same_folder_name_are_told_apart_by_their_paths(tmp_path):
    runs = [write_run(tmp_path / "a" / "run"), write_run(tmp_path / "b" / "run")]
    assert legend_names(plot_runs(runs, str(tmp_path / "out.png"))) == runs


def test_the_sigmoid_centres_come_from_the_checkpoint_when_config_json_is_absent(tmp_path):
    from model.checkpoint import save_checkpoint
    run = write_run(tmp_path / "run", a=0.7, b=1.3, config=False)
    save_checkpoint(os.path.join(run, "last.npz"), {"config": {"head_params": {"a": 0.7, "b": 1.3}}}, {}, {})
    angle_ax = plot_runs([run], str(tmp_path / "out.png")).axes[3]
    assert sorted(line.get_ydata()[0] for line in angle_ax.get_lines()
                  if list(line.get_xdata()) == [0, 1]) == pytest.approx([0.7, 1.3])


def plot_tool(*args):
    return subprocess.run([sys.executable, PLOT_RUN, *args], cwd=REPO_ROOT, capture_output=True, text=True)


def test_the_tool_writes_curves_png_in_the_run_folder_by_default(tmp_path):
    run = write_run(tmp_path / "run")
    result = plot_tool(run)
    assert result.returncode == 0, result.stderr
    assert os.path.getsize(os.path.join(run, "curves.png")) > 10_000 and run in result.stdout


@pytest.mark.parametrize("damage,message", [
    ("no_metrics", "{run}: holds no metrics.jsonl, so it is not a training run's output folder"),
    ("no_folder", "{run}: no such folder"),
    ("corrupt_line", "{run}/metrics.jsonl:2: not a JSON record"),
    ("empty", "{run}/metrics.jsonl: holds no record yet"),
    ("missing_figure", "{run}/metrics.jsonl: a record lacks a figure or holds one that is not a number"),
    ("bad_config", "{run}/config.json: not a JSON run config"),
    ("empty_checkpoint", "{run}/last.npz: not a readable checkpoint"),
])
def test_bad_input_ends_with_one_error_line_naming_the_file(tmp_path, damage, message):
    run = str(tmp_path / "run")
    if damage != "no_folder":
        write_run(run)
    metrics = os.path.join(run, "metrics.jsonl")
    if damage == "no_metrics":
        os.remove(metrics)
    elif damage == "corrupt_line":
        lines = open(metrics).read().splitlines(keepends=True)
        lines[1] = lines[1][:40] + "\n"
        open(metrics, "w").writelines(lines)
    elif damage == "empty":
        open(metrics, "w").close()
    elif damage == "missing_figure":
        with open(metrics, "a") as f:
            f.write(json.dumps({"kind": "train", "step": 8, "loss": 1.0, "angles": {"theta_target": {}}}) + "\n")
    elif damage == "bad_config":
        open(os.path.join(run, "config.json"), "w").write("{not json")
    elif damage == "empty_checkpoint":  # without config.json the sigmoid centres come from the checkpoint
        os.remove(os.path.join(run, "config.json"))
        open(os.path.join(run, "last.npz"), "w").close()
    with pytest.raises(InputError, match="^" + re.escape(message.format(run=run))):
        plot_runs([run], str(tmp_path / "out.png"))
    result = plot_tool(run, "--out", str(tmp_path / "out.png"))
    assert result.returncode == 1 and result.stderr.startswith("error: " + message.format(run=run))
    assert len(result.stderr.strip().splitlines()) == 1 and not os.path.exists(tmp_path / "out.png")
