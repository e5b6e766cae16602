"""Face verification protocol (LFW / CFP-FP / AgeDB-30 ...), as pure numpy functions.

The standard protocol of every paper table: each image is embedded together with its
horizontal flip, the two embeddings are summed and L2-normalised, and a pair's distance is
the squared Euclidean distance (0..4). Pairs are cut into 10 contiguous folds; for each
fold the threshold (0, 0.01, ..., 3.99) that is most accurate on the other 9 folds is
applied to it. Accuracy is reported as mean +- std over the folds.

Cosine scoring gives the same accuracies: for unit vectors |a - b|^2 = 2 - 2 cos(a, b).
"""
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from data.verification_sets import PROTOCOL_FOLDS

EUCLIDEAN_THRESHOLDS = np.arange(0, 4, 0.01)
FAR_TARGETS = (1e-2, 1e-3, 1e-4)  # TAR@FAR reported at these (1e-2: small sets, e.g. 600 impostor pairs)


def l2_normalize(x, eps=1e-12):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def flip_fused(embeddings, flipped=None):
    """Unit embeddings from the raw ones (and those of the flipped images, when given)."""
    return l2_normalize(embeddings if flipped is None else embeddings + flipped)


def xnorm(*raw_embeddings):
    """Mean L2 norm of raw (un-normalised) embeddings, a common training health figure."""
    return float(np.mean(np.concatenate([np.linalg.norm(e, axis=1) for e in raw_embeddings])))


def pair_distances(unit_embeddings, pairs):
    """Squared Euclidean distance of each pair; `pairs` is P x 2 indices into the embeddings."""
    diff = unit_embeddings[pairs[:, 0]] - unit_embeddings[pairs[:, 1]]
    return np.sum(diff * diff, axis=1)


def contiguous_folds(num_pairs, num_folds=PROTOCOL_FOLDS):
    """Test-index arrays of KFold(num_folds, shuffle=False): contiguous, the first ones one longer."""
    sizes = np.full(num_folds, num_pairs // num_folds)
    sizes[:num_pairs % num_folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(num_folds)]


def accuracy_per_threshold(distances, issame, thresholds):
    """Accuracy of "same when distance < threshold" for each threshold."""
    predicted_same = distances[None, :] < thresholds[:, None]
    return np.mean(predicted_same == issame[None, :], axis=1)


def kfold_accuracy(distances, issame, thresholds=EUCLIDEAN_THRESHOLDS, num_folds=PROTOCOL_FOLDS):
    """-> (accuracy of each fold, threshold chosen for each fold)."""
    issame = np.asarray(issame, dtype=bool)
    if len(issame) < num_folds:
        raise ValueError(f"{len(issame)} pairs cannot be split into {num_folds} folds")
    accuracies, chosen = [], []
    for test in contiguous_folds(len(issame), num_folds):
        train = np.setdiff1d(np.arange(len(issame)), test)
        best = thresholds[np.argmax(accuracy_per_threshold(distances[train], issame[train], thresholds))]
        accuracies.append(np.mean((distances[test] < best) == issame[test]))
        chosen.append(best)
    return np.array(accuracies), np.array(chosen)


def roc_figures(distances, issame, far_targets=FAR_TARGETS):
    """ROC over all pairs: fpr, tpr (the points where the curve turns), AUC, EER, and TAR at each FAR target
    with its distance threshold.

    TAR@FAR is the highest true-accept rate whose false-accept rate does not exceed the
    target; with few negative pairs (3000 on LFW) FAR below 1/3000 means zero false accepts.
    Its threshold, for "accept when distance <= threshold", is the loosest one that keeps the
    false accepts within the target: the largest pair distance d at which accepting every pair
    with distance <= d has a FAR not above the target (d is the distance of the last pair so
    accepted). Every threshold from the distance of the last genuine pair accepted to just below
    the next larger distance gives the same TAR; d is the largest pair distance of that range, a
    function of the distances and the target alone. None when accepting even the closest pair(s)
    exceeds the target (only accepting nothing keeps the false accepts that low).
    """
    issame = np.asarray(issame, dtype=bool)
    if issame.all() or not issame.any():  # the pair-set readers refuse such sets, naming the file
        raise ValueError(f"a ROC needs same and different pairs, got {issame.sum()} same of {len(issame)}")
    # A point per distinct distance: of a curve of corners alone (drop_intermediate), the point at a FAR
    # is whichever happens to be a corner, and its threshold jumps with the smallest change of a distance.
    fpr, tpr, score_thresholds = roc_curve(issame, -distances, drop_intermediate=False)
    at_far = {far: np.searchsorted(fpr, far, side="right") - 1 for far in far_targets}  # fpr is non-decreasing
    tar = {far: float(tpr[i]) for far, i in at_far.items()}
    threshold = {far: float(-score_thresholds[i]) if i > 0 else None for far, i in at_far.items()}
    # fpr - (1 - tpr) rises from -1 to 1 along the curve; the EER is where it crosses 0.
    eer = float(np.interp(0.0, fpr - (1.0 - tpr), fpr))
    turns = curve_turns(fpr, tpr)
    return {"fpr": fpr[turns], "tpr": tpr[turns], "auc": float(roc_auc_score(issame, -distances)), "eer": eer,
            "tar_at_far": tar, "threshold_at_far": threshold}


def curve_turns(fpr, tpr):
    """Indices of the ROC points where the curve changes direction, and its ends: the same line, drawn with
    a point per corner instead of one per distinct distance (millions on IJB-C)."""
    straight = (np.diff(fpr, 2) == 0) & (np.diff(tpr, 2) == 0)
    return np.flatnonzero(np.concatenate([[True], ~straight, [True]]))


def score_thresholds(distances):
    """Candidate thresholds for distances on no fixed scale (e.g. negated SCF scores): every midpoint."""
    values = np.unique(distances)
    return np.concatenate([[values[0] - 1.0], (values[1:] + values[:-1]) / 2, [values[-1] + 1.0]])


def verification_report(distances, issame, thresholds=EUCLIDEAN_THRESHOLDS, raw_embeddings=(),
                        num_folds=PROTOCOL_FOLDS):
    """Everything a verification table shows, for one target's pair distances (smaller = same)."""
    accuracies, thresholds = kfold_accuracy(distances, issame, thresholds, num_folds=num_folds)
    roc = roc_figures(distances, issame)
    return {
        "accuracy": float(accuracies.mean()),
        "accuracy_std": float(accuracies.std()),
        "fold_accuracies": accuracies.tolist(),
        "threshold": float(thresholds.mean()),
        "xnorm": xnorm(*raw_embeddings) if raw_embeddings else None,
        "auc": roc["auc"],
        "eer": roc["eer"],
        "tar_at_far": {f"{far:g}": tar for far, tar in roc["tar_at_far"].items()},
        "threshold_at_far": {f"{far:g}": t for far, t in roc["threshold_at_far"].items()},
        "roc": (roc["fpr"], roc["tpr"]),
    }
