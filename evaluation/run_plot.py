"""Training curves of one or more runs as one PNG, from their metrics.jsonl alone (matplotlib, headless).

Four panels over the training step: the loss and its parts, train and verification accuracy, the learning
rate, and the theta_y / theta_j medians of each log window with their 5-95 % bands, under SFace's sigmoid
centres a and b (from the run's config). Each run has its own colour, named by its folder in the legend
above the panels; the line styles are explained in each panel.
"""
import json
import math
import os
from collections import namedtuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from data.text import DataError  # noqa: E402
from model.checkpoint import DAMAGED_NPZ, LAST, CheckpointError, read_meta  # noqa: E402
from util.files import write_atomically  # noqa: E402

from .metrics_file import METRICS_NAME, read_metrics  # noqa: E402

CONFIG_NAME = "config.json"
LOSS_STYLES = {"loss": "-", "intra": "--", "inter": ":"}  # the loss and SFace's two parts
ANGLE_STYLES = {"theta_target": ("θ_y", "-"), "theta_other": ("θ_j", "--")}
CENTRE_STYLES = {"a": ":", "b": "-."}
TARGET_MARKERS = "osD^vP*X"

RunCurves = namedtuple("RunCurves", "name metrics train evals centres")


def read_run(folder, name):
    """A run folder -> its training and evaluation records and SFace's (a, b) ({} for other heads)."""
    metrics = os.path.join(folder, METRICS_NAME)
    if not os.path.isfile(metrics):
        raise DataError(f"{folder}: no such folder" if not os.path.isdir(folder) else
                        f"{folder}: holds no {METRICS_NAME}, so it is not a training run's output folder")
    records = [r for r in read_metrics(metrics) if r.get("kind") in ("train", "eval")]
    if not records:
        raise DataError(f"{metrics}: holds no record yet (the run has not logged a window nor evaluated)")
    for record in records:
        if not isinstance(record.get("step"), int):
            raise DataError(f"{metrics}: a {record['kind']} record without its step ({json.dumps(record)[:80]}...)")
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    return RunCurves(name, metrics, train, evals, sigmoid_centres(folder))


def run_config(folder):
    """The run's config.json, else its last checkpoint's config; {} when it has neither."""
    path = os.path.join(folder, CONFIG_NAME)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a JSON run config ({e})") from None
        if not isinstance(config, dict):
            raise DataError(f"{path}: not a JSON run config (not an object)")
        return config
    checkpoint = os.path.join(folder, LAST)
    if not os.path.isfile(checkpoint):
        return {}
    try:
        with np.load(checkpoint, allow_pickle=False) as archive:  # only the meta entry is read
            meta = read_meta(checkpoint, archive["meta"])
    except (OSError, KeyError, *DAMAGED_NPZ) as e:
        raise CheckpointError(f"{checkpoint}: not a readable checkpoint ({e})") from None
    return meta.get("config", {})


def sigmoid_centres(folder):
    params = run_config(folder).get("head_params") or {}
    return {k: params[k] for k in CENTRE_STYLES if isinstance(params.get(k), (int, float))}


def run_names(paths):
    """Each run's folder name; the paths as given where two folders share a name."""
    names = [os.path.basename(os.path.normpath(p)) for p in paths]
    return [n if names.count(n) == 1 else p for n, p in zip(names, paths)]


def column(records, key):
    """(steps, values) of the records holding `key`."""
    held = [r for r in records if key in r]
    return [r["step"] for r in held], [r[key] for r in held]


def draw_loss(ax, run, colour, markers):
    for key, style in LOSS_STYLES.items():
        steps, values = column(run.train, key)
        ax.plot(steps, values, style, color=colour)


def draw_accuracy(ax, run, colour, markers):
    steps, values = column(run.train, "train_acc")
    ax.plot(steps, values, "-", color=colour)
    for target, marker in markers.items():
        steps, values = column([r for r in run.evals if r.get("target") == target], "accuracy")
        ax.plot(steps, values, "--", marker=marker, markersize=4, color=colour)


def draw_lr(ax, run, colour, markers):
    ax.plot(*column(run.train, "lr"), "-", color=colour, drawstyle="steps-pre")  # a window's lr holds over it


def draw_angles(ax, run, colour, markers):
    windows = [r for r in run.train if "angles" in r]
    if not windows:
        return
    steps = [r["step"] for r in windows]
    for key, (_, style) in ANGLE_STYLES.items():
        low, mid, high = ([r["angles"][key][p] for r in windows] for p in ("p5", "p50", "p95"))
        ax.fill_between(steps, low, high, color=colour, alpha=0.15, linewidth=0)
        ax.plot(steps, mid, style, color=colour)
    for key, value in run.centres.items():
        ax.axhline(value, linestyle=CENTRE_STYLES[key], color=colour, linewidth=1)


def targets_of(runs):
    return sorted({r["target"] for run in runs for r in run.evals if "target" in r})


def style_legend(ax, entries):
    """A panel's key to its line styles, in grey (the colours name the runs)."""
    handles = [Line2D([], [], color="0.35", linestyle=style, marker=marker, markersize=4, label=label)
               for label, style, marker in entries]
    ax.legend(handles=handles, fontsize=7, loc="best")


def panel(ax, title, ylabel, drawn, empty):
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="0.4")


def plot_runs(paths, out):
    """The curves of the runs in `paths` (their output folders) -> one PNG at `out`; returns the Figure (closed:
    its axes and legends remain for inspection). A folder without metrics.jsonl, a corrupt line or config is a
    DataError naming the file."""
    runs = [read_run(path, name) for path, name in zip(paths, run_names(paths))]
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(runs))]
    targets = targets_of(runs)
    markers = {t: TARGET_MARKERS[i % len(TARGET_MARKERS)] for i, t in enumerate(targets)}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=100, sharex=True)
    (loss_ax, acc_ax), (lr_ax, angle_ax) = axes
    for ax in axes[1]:
        ax.set_xlabel("training step")
    for run, colour in zip(runs, colours):
        try:
            for draw, ax in ((draw_loss, loss_ax), (draw_accuracy, acc_ax), (draw_lr, lr_ax), (draw_angles, angle_ax)):
                draw(ax, run, colour, markers)
        except (KeyError, TypeError, ValueError) as e:  # a record edited or written by something else
            plt.close(fig)
            raise DataError(f"{run.metrics}: a record lacks a figure or holds one that is not a number ({e!r})") \
                from None
    has = {key: any(column(run.train, key)[0] for run in runs) for key in (*LOSS_STYLES, "train_acc", "lr", "angles")}
    panel(loss_ax, "loss", "loss per log window", has["loss"], "no training window logged")
    style_legend(loss_ax, [(key, style, None) for key, style in LOSS_STYLES.items() if has[key]])
    panel(acc_ax, "accuracy", "accuracy", has["train_acc"] or targets, "no accuracy logged")
    style_legend(acc_ax, ([("train (batch)", "-", None)] if has["train_acc"] else [])
                 + [(f"{t} (verification)", "--", m) for t, m in markers.items()])
    panel(lr_ax, "learning rate", "learning rate", has["lr"], "no learning rate logged")
    if all(v > 0 for run in runs for v in column(run.train, "lr")[1]) and has["lr"]:
        lr_ax.set_yscale("log")
    panel(angle_ax, "angles to the class centres (median, 5-95 %)", "angle (radians)", has["angles"],
          "no angles logged (SFace-style runs log them)")
    if has["angles"]:
        angle_ax.set_ylim(bottom=0.0)
        centres = sorted({k for run in runs for k in run.centres})
        style_legend(angle_ax, [(f"{name} median", style, None) for name, style in ANGLE_STYLES.values()]
                     + [(f"SFace {k}", CENTRE_STYLES[k], None) for k in centres])
    fig.legend(handles=[Line2D([], [], color=c, linewidth=3) for c in colours], labels=[r.name for r in runs],
               loc="upper center", ncol=min(len(runs), 4), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.03 * math.ceil(len(runs) / 4)))
    write_atomically(out, lambda f: fig.savefig(f, format="png"), "figure")
    plt.close(fig)
    return fig
