#!/usr/bin/env python3
"""Label-noise robustness, measured: SFace against ArcFace and CosFace under closed-set and open-set noise, on an
identity-disjoint protocol (tools/data_tools.py lfw-protocol), several seeds per cell.

    python3 tools/data_tools.py lfw-protocol --lfw LFW --out data/lfw_protocol
    python3 experiments/noise_experiment.py --data_root data/lfw_protocol --outdir results/noise_experiment

Every run trains MobileFaceNet from scratch with the same schedule and scores the held-out test folds
(lfw_test, 10-fold protocol, mirror images included) every --eval_freq steps; SFace takes the paper's
CASIA-WebFace (a, b) = (0.87, 1.2). After training, tools/angle_report.py measures where the last checkpoint
puts the clean and the noisy training images. Writes <outdir>/results.md (the tables), results.json and
noise_experiment.png (held-out accuracy over training, and at the end per head and noise), rewritten after
every finished run.

Runs go one after the other, SFace and ArcFace under closed-set noise first; a finished run (its
experiment.json written) is kept and skipped, an interrupted one resumed from its last checkpoint, so the
grid can span several sittings. Not a test: a measurement.
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import util.runtime  # noqa: E402,F401  (the head table imports jittor)

import numpy as np  # noqa: E402

from data.lfw_protocol import TEST_TARGET  # noqa: E402
from evaluation.metrics_file import METRICS_NAME, read_metrics  # noqa: E402
from head import HEADS  # noqa: E402
from util.distributed import workers_id  # noqa: E402
from util.errors import InputError  # noqa: E402
from util.files import REPO_ROOT, make_outdir, write_atomically, write_json  # noqa: E402
from util.options import (checked_seed, finite_float, non_negative_int, parse_epoch_list, positive_float,  # noqa: E402
                          positive_int)

NOISE_FLAGS = {"closed": "--label_noise", "open": "--label_noise_open"}
PRIORITY = (("SFaceLoss", "ArcFace"), "closed")  # what runs first, should the budget run out
RUN_SUMMARY = "experiment.json"


class RunFailed(RuntimeError):
    """A training or report run that ended with a non-zero status; the message gives its command."""


def head_names(text):
    """--heads' type: comma-separated names of HEADS."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in HEADS]
    if unknown or not names:
        problem = f"unknown head '{unknown[0]}'" if unknown else f"no head in '{text}'"
        raise argparse.ArgumentTypeError(f"{problem}; choose from {', '.join(HEADS)}")
    return names


def noise_settings(text):
    """--noise's type: comma-separated KIND:FRACTION, KIND closed or open, FRACTION in [0, 1)."""
    settings = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        kind, _, value = item.partition(":")
        if kind not in NOISE_FLAGS:
            raise argparse.ArgumentTypeError(f"'{item}': the kind must be closed or open (closed:0.2, open:0.2)")
        fraction = finite_float(value)
        if not 0 <= fraction < 1:
            raise argparse.ArgumentTypeError(f"'{item}': the fraction must be in [0, 1)")
        settings.append((kind, fraction))
    if not settings:
        raise argparse.ArgumentTypeError(f"no noise setting in '{text}'")
    return settings


def seed_list(text):
    """--seeds' type: comma-separated seeds, one at least."""
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got '{text}'")
    return [checked_seed(s) for s in seeds]


def setting_name(kind, fraction):
    return "clean" if fraction == 0 else f"{kind}{fraction:g}"


def run_dir(outdir, head, kind, fraction, seed):
    return os.path.join(outdir, f"{head}-{setting_name(kind, fraction)}-seed{seed}")


def grid(args):
    """(head, kind, fraction, seed) of every run, in the order they run: the priority cells first, seed by seed,
    the heads side by side in each setting (so that a grid cut short still compares them). Settings without noise
    are one setting whatever their kind."""
    settings = list(dict.fromkeys((kind if fraction else "closed", fraction) for kind, fraction in args.noise))
    cells = [(head, kind, fraction) for kind, fraction in settings for head in args.heads]
    first = [c for c in cells if c[0] in PRIORITY[0] and c[1] == PRIORITY[1]]
    return [(*cell, seed) for group in (first, [c for c in cells if c not in first]) for seed in args.seeds
            for cell in group]


def run(command):
    print(" ".join(command), flush=True)
    status = subprocess.run(command, stdout=subprocess.DEVNULL).returncode
    if status:
        raise RunFailed(f"this run ended with exit status {status} (its messages are above): {' '.join(command)}")


def train_command(args, head, kind, fraction, seed, folder):
    command = [sys.executable, os.path.join(REPO_ROOT, "train_SFace_jittor.py"), "--data_root", args.data_root,
               "--target", TEST_TARGET, "--net", "MobileFaceNet", "--head", head, "--seed", str(seed),
               "--epochs", str(args.epochs), "--stages", args.stages, "--lr", str(args.lr), "--batch_size",
               str(args.batch_size), "--eval_freq", str(args.eval_freq), "--log_freq", str(args.log_freq),
               "--workers_id", args.workers_id, "--outdir", folder]
    if fraction:
        command += [NOISE_FLAGS[kind], str(fraction)]
    if os.path.isfile(os.path.join(folder, "last.npz")):  # an interrupted run continues
        command += ["--resume", folder]
    return command


def run_summary(folder, report):
    """What the tables need of one finished run: the held-out figures over training and at the end, and the
    angle report's."""
    evals = [r for r in read_metrics(os.path.join(folder, METRICS_NAME)) if r.get("kind") == "eval"]
    if not evals:
        raise InputError(f"{os.path.join(folder, METRICS_NAME)}: holds no evaluation of {TEST_TARGET}")
    last = evals[-1]
    summary = {"curve": [(r["step"], r["accuracy"]) for r in evals], "accuracy": last["accuracy"],
               "accuracy_std": last["accuracy_std"], "tar_at_far_0.01": last["tar_at_far"]["0.01"]}
    if report is not None:
        summary["angles"] = {key: report[key] for key in ("theta_y_clean", "theta_y_flipped", "theta_y_outsider",
                                                          "unpulled", "flipped_images", "outsider_images")
                             if key in report}
    return summary


def finish_run(args, head, kind, fraction, seed, folder):
    """Train (or resume) one run, report its angles and write its summary."""
    run(train_command(args, head, kind, fraction, seed, folder))
    report = None
    if not args.no_report:
        run([sys.executable, os.path.join(REPO_ROOT, "tools", "angle_report.py"), "--checkpoint",
             os.path.join(folder, "last.npz"), "--workers_id", args.workers_id])
        with open(os.path.join(folder, "angle_report.json")) as f:
            report = json.load(f)
    write_json(os.path.join(folder, RUN_SUMMARY), run_summary(folder, report), "run summary")


def experiment(args):
    """Every run of the grid; a run that fails (a diverged loss, say) is named at the end and the others go on.
    -> (summaries of the finished runs, messages of the failed ones)."""
    summaries, failed = {}, []
    for head, kind, fraction, seed in grid(args):
        folder = run_dir(args.outdir, head, kind, fraction, seed)
        done = os.path.join(folder, RUN_SUMMARY)
        if not os.path.isfile(done):
            try:
                finish_run(args, head, kind, fraction, seed, folder)
            except RunFailed as e:
                failed.append(str(e))
                continue
        with open(done) as f:
            summaries[(head, kind, fraction, seed)] = json.load(f)
        write_results(args, summaries)  # after every run: a grid stopped part-way has the tables of what it ran
    return summaries, failed


def write_results(args, summaries):
    tables = results_tables(args, summaries)
    write_atomically(os.path.join(args.outdir, "results.md"), tables, "results table")
    write_json(os.path.join(args.outdir, "results.json"),
               [{"head": h, "noise": k, "fraction": f, "seed": s, **v} for (h, k, f, s), v in summaries.items()],
               "results")
    save_figure(os.path.join(args.outdir, "noise_experiment.png"), args, summaries)


def cells_of(summaries):
    """{(head, kind, fraction): [the summaries of its seeds]}."""
    cells = {}
    for (head, kind, fraction, _), summary in summaries.items():
        cells.setdefault((head, kind, fraction), []).append(summary)
    return cells


def mean_sd(values, scale=100.0):
    """'mean ± sd' of several values; one value alone, with no spread to show."""
    values = scale * np.asarray(values, np.float64)
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def results_tables(args, summaries):
    cells = cells_of(summaries)
    settings = list(dict.fromkeys((k, f) for _, k, f in cells))
    heads = list(dict.fromkeys(h for h, _, _ in cells))
    seeds = sorted({s for *_, s in summaries})
    names = [setting_name(k, f) for k, f in settings]
    lines = [f"Held-out {TEST_TARGET} ({args.data_root}), mean ± sd over seeds {', '.join(map(str, seeds))}: "
             "10-fold accuracy (%) / TAR at FAR 1e-2 (%)", "",
             "| head | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for head in heads:
        row = []
        for kind, fraction in settings:
            runs = cells.get((head, kind, fraction), [])
            row.append(f"{mean_sd([r['accuracy'] for r in runs])} / {mean_sd([r['tar_at_far_0.01'] for r in runs])}"
                       f" (n={len(runs)})" if runs else "not run")
        lines.append(f"| {head} | " + " | ".join(row) + " |")
    angle_rows = angle_table(cells)
    if angle_rows:
        lines += ["", "Last checkpoint, every training image: median theta_y (radians) of the clean and of the noisy "
                      "images; for SFace also the share no longer pulled (theta_y < a)", "",
                  "| head | noise | theta_y clean | theta_y noisy | unpulled clean | unpulled noisy |",
                  "| --- | --- | --- | --- | --- | --- |"] + angle_rows
    return "\n".join(lines) + "\n"


def angle_table(cells):
    rows = []
    for (head, kind, fraction), runs in cells.items():
        noisy_key = {"closed": "flipped", "open": "outsider"}[kind]
        angles = [r["angles"] for r in runs if "angles" in r and f"theta_y_{noisy_key}" in r["angles"]]
        if not fraction or not angles:
            continue
        clean = np.mean([a["theta_y_clean"]["p50"] for a in angles])
        noisy = np.mean([a[f"theta_y_{noisy_key}"]["p50"] for a in angles])
        unpulled = [a.get("unpulled") for a in angles]
        shares = (f"{100 * np.mean([u['clean'] for u in unpulled]):.1f} % | "
                  f"{100 * np.mean([u[noisy_key] for u in unpulled]):.1f} %") if all(unpulled) else "- | -"
        rows.append(f"| {head} | {setting_name(kind, fraction)} | {clean:.3f} | {noisy:.3f} | {shares} |")
    return rows


def save_figure(path, args, summaries):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cells = cells_of(summaries)
    settings = list(dict.fromkeys((k, f) for _, k, f in cells))
    heads = list(dict.fromkeys(h for h, _, _ in cells))
    fig, (curves, finals) = plt.subplots(1, 2, figsize=(13, 4.5), dpi=100)
    colours = dict(zip(heads, ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown")))
    styles = dict(zip(settings, ("-", "--", ":", "-.", (0, (1, 3)), (0, (5, 1)))))
    for (head, kind, fraction), runs in cells.items():
        steps = [s for s, _ in runs[0]["curve"]]
        accuracy = np.mean([[a for _, a in r["curve"]] for r in runs if len(r["curve"]) == len(steps)], axis=0)
        curves.plot(steps, 100 * accuracy, color=colours[head], linestyle=styles[(kind, fraction)],
                    label=f"{head}, {setting_name(kind, fraction)}")
    curves.set_xlabel("training step")
    curves.set_ylabel(f"{TEST_TARGET} accuracy (%), mean over seeds")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=7)
    width = 0.8 / len(heads)
    for i, head in enumerate(heads):
        runs = [cells.get((head, k, f), []) for k, f in settings]
        means = [100 * np.mean([r["accuracy"] for r in rs]) if rs else np.nan for rs in runs]
        sds = [100 * np.std([r["accuracy"] for r in rs], ddof=1) if len(rs) > 1 else np.nan  # one seed: no bar
               for rs in runs]
        finals.bar(np.arange(len(settings)) + (i - (len(heads) - 1) / 2) * width, means, width, yerr=sds,
                   color=colours[head], label=head, capsize=3)
    finals.set_xticks(np.arange(len(settings)), [setting_name(k, f) for k, f in settings])
    finals.set_ylabel(f"{TEST_TARGET} accuracy at the end (%), mean ± sd")
    low = min(100 * r["accuracy"] for r in summaries.values())
    finals.set_ylim(max(0.0, low - 5), 100)
    finals.grid(axis="y", alpha=0.3)
    finals.legend(fontsize=8)
    fig.suptitle(f"MobileFaceNet on {os.path.basename(os.path.normpath(args.data_root))}: {args.epochs} epochs, "
                 f"seeds {', '.join(map(str, sorted({s for *_, s in summaries})))}", fontsize=10)
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png"), "figure")
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", required=True, help="a protocol data root (tools/data_tools.py lfw-protocol)")
    p.add_argument("--outdir", default="results/noise_experiment")
    p.add_argument("--heads", type=head_names, default="SFaceLoss,ArcFace,CosFace", help="comma-separated loss heads")
    p.add_argument("--noise", type=noise_settings, default="closed:0,closed:0.2,closed:0.4,open:0.2",
                   help="comma-separated KIND:FRACTION, KIND closed (--label_noise) or open (--label_noise_open)")
    p.add_argument("--seeds", type=seed_list, default="1,2", help="comma-separated seeds, one run per cell each")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--stages", default="6,9", help="epochs at which the learning rate is divided by 10")
    p.add_argument("--lr", type=positive_float, default=0.1)
    p.add_argument("--batch_size", type=positive_int, default=64)
    p.add_argument("--eval_freq", type=non_negative_int, default=188,
                   help="score the held-out folds every N steps (188: every 2 epochs of 6,022 images at batch 64)")
    p.add_argument("--log_freq", type=positive_int, default=47)
    p.add_argument("--workers_id", type=workers_id, default="auto", help="as in training")
    p.add_argument("--no_report", action="store_true", help="train and evaluate only (no angle reports)")
    args = p.parse_args(argv)
    try:  # what every run would refuse, refused once before any run starts
        parse_epoch_list(args.stages, "--stages")
    except ValueError as e:
        p.error(str(e))
    if not os.path.isfile(os.path.join(args.data_root, "imgs.txt")):
        p.error(f"--data_root {args.data_root}: holds no imgs.txt (make one with tools/data_tools.py lfw-protocol)")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        make_outdir(args.outdir)
        summaries, failed = experiment(args)
    except InputError as e:
        sys.exit(f"error: {e}")
    if summaries:
        print(results_tables(args, summaries))
    if failed:
        sys.exit(f"error: {len(failed)} run(s) failed (their messages are above; a re-run retries them):\n"
                 + "\n".join(failed))
    return summaries


if __name__ == "__main__":
    main()
