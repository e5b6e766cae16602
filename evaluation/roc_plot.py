"""ROC curve PNGs (matplotlib, headless)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from util.files import write_atomically  # noqa: E402


def save_roc_plot(path, fpr, tpr, title, min_far=1e-4):
    """TAR against FAR on a log FAR axis, the way face-verification ROCs are read, from `min_far` at most."""
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    keep = fpr > 0
    ax.semilogx(fpr[keep], tpr[keep], linewidth=2)
    # from the smallest FAR reached (not below min_far), and at least a decade wide: a perfect ROC reaches only FAR 1
    ax.set_xlim(min(max(fpr[keep].min(), min_far), 0.1) if keep.any() else min_far, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"ROC: {title}")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png"), "figure")
    plt.close(fig)
