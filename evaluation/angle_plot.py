"""The angle report's PNG (matplotlib, headless): SFace's figure of the angle distributions under the two
sigmoid curves, and how the distributions moved over a run."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from util.files import write_atomically  # noqa: E402

from .angles import r_inter, r_intra  # noqa: E402


def save_angle_plot(path, groups, theta_other, curves, history=None, title=""):
    """groups: {label: theta_y array} (clean / label-flipped / outsiders, or all); theta_other: theta_j array;
    curves: [(label, k, a, b, linestyle)] drawn as r_intra and r_inter on a second axis;
    history: train records of metrics.jsonl that hold `angles` (drawn on a second panel) or None."""
    panels = 2 if history else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), dpi=100, squeeze=False)
    ax = axes[0][0]
    bins = np.linspace(0.0, math.pi, 91)  # 2-degree bins for the picture; the logged histograms are coarser
    for (label, theta), colour in zip(groups.items(), ("tab:blue", "tab:red", "tab:orange")):
        ax.hist(theta, bins, density=True, alpha=0.55, color=colour, label=f"θ_y {label} ({len(theta)})")
    ax.hist(theta_other, bins, density=True, alpha=0.45, color="tab:gray", label=f"θ_j ({len(theta_other)})")
    ax.set_xlim(0.0, math.pi)
    ax.set_xlabel("angle to a class centre (radians)")
    ax.set_ylabel("density")
    curve_ax = ax.twinx()
    grid = np.linspace(0.0, math.pi, 400)
    for label, k, a, b, style in curves:
        curve_ax.plot(grid, r_intra(grid, k, a), "g" + style, label=f"r_intra {label} (k {k:g}, a {a:g})")
        curve_ax.plot(grid, r_inter(grid, k, b), "m" + style, label=f"r_inter {label} (k {k:g}, b {b:g})")
    curve_ax.set_ylim(0.0, 1.05)
    curve_ax.set_ylabel("re-scale factor")
    handles = ax.get_legend_handles_labels()[0] + curve_ax.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=9)
    if history:
        ax = axes[0][1]
        steps = [r["step"] for r in history]
        for key, colour, name in (("theta_target", "tab:blue", "θ_y"), ("theta_other", "tab:gray", "θ_j")):
            low, mid, high = ([r["angles"][key][p] for r in history] for p in ("p5", "p50", "p95"))
            ax.fill_between(steps, low, high, color=colour, alpha=0.25, label=f"{name} 5-95 %")
            ax.plot(steps, mid, color=colour, label=f"{name} median")
        if "unpulled" in history[0]["angles"]:
            share_ax = ax.twinx()
            share_ax.plot(steps, [r["angles"]["unpulled"] for r in history], "g--", label="unpulled (θ_y < a)")
            share_ax.set_ylim(0.0, 1.0)
            share_ax.set_ylabel("fraction of samples unpulled")
            share_ax.legend(fontsize=7, loc="upper right")
        ax.set_ylim(0.0, math.pi)
        ax.set_xlabel("training step")
        ax.set_ylabel("angle (radians), per logging window")
        ax.legend(fontsize=7, loc="lower left")
        ax.set_title("during training (metrics.jsonl)", fontsize=9)
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png"), "figure")
    plt.close(fig)
