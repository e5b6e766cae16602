"""The 10-fold verification protocol against hand-computed cases and scikit-learn."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold

from evaluation.protocol import (EUCLIDEAN_THRESHOLDS, contiguous_folds, flip_fused, kfold_accuracy, pair_distances,
                                 roc_figures, score_thresholds, verification_report, xnorm)


def kfold_accuracy_by_the_book(distances, issame, thresholds, folds=10):
    """The protocol written out with scikit-learn's KFold and explicit loops."""
    accuracies, chosen = [], []
    for train, test in KFold(n_splits=folds, shuffle=False).split(distances):
        best_accuracy, best_threshold = -1, None
        for t in thresholds:
            accuracy = np.mean([(d < t) == s for d, s in zip(distances[train], issame[train])])
            if accuracy > best_accuracy:
                best_accuracy, best_threshold = accuracy, t
        accuracies.append(np.mean([(d < best_threshold) == s for d, s in zip(distances[test], issame[test])]))
        chosen.append(best_threshold)
    return np.array(accuracies), np.array(chosen)


@pytest.mark.parametrize("n", [10, 23, 600, 6000])
def test_folds_are_sklearn_contiguous_kfold(n):
    ours = contiguous_folds(n, 10)
    theirs = [test for _, test in KFold(n_splits=10, shuffle=False).split(np.arange(n))]
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_kfold_accuracy_matches_the_book_on_noisy_pairs():
    rng = np.random.default_rng(0)
    issame = rng.random(200) < 0.5
    distances = np.where(issame, rng.normal(0.8, 0.3, 200), rng.normal(1.6, 0.3, 200)).clip(0, 4)
    thresholds = np.arange(0, 4, 0.05)
    ours = kfold_accuracy(distances, issame, thresholds)
    theirs = kfold_accuracy_by_the_book(distances, issame, thresholds)
    np.testing.assert_allclose(ours[0], theirs[0])
    np.testing.assert_allclose(ours[1], theirs[1])


def test_hand_computed_case():
    # 10 folds of 2 pairs: same pairs at distance 0.5, different ones at 1.5, except fold 3 whose
    # different pair sits at 0.2 (always misjudged: its threshold is learnt on the clean folds).
    issame = np.tile([True, False], 10)
    distances = np.tile([0.5, 1.5], 10)
    distances[5] = 0.2
    accuracies, thresholds = kfold_accuracy(distances, issame)
    expected = np.ones(10)
    expected[2] = 0.5
    np.testing.assert_allclose(accuracies, expected)
    assert accuracies.mean() == pytest.approx(0.95)
    # With the stray pair in the training folds, the first threshold above 0.5 still wins (0.51);
    # without it (fold 3 itself) the lowest best threshold is also 0.51.
    np.testing.assert_allclose(thresholds, 0.51)


def test_tar_at_far_auc_and_eer():
    #            same pairs                 different pairs
    distances = np.array([0.1, 0.2, 0.3, 0.9, 0.4, 1.0, 1.1, 1.2])
    issame = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    roc = roc_figures(distances, issame, far_targets=(0.0, 0.25))
    assert roc["tar_at_far"][0.0] == pytest.approx(0.75)  # below 0.4: three of four same pairs
    assert roc["tar_at_far"][0.25] == pytest.approx(1.0)  # one false accept allowed: threshold past 0.9
    assert roc["auc"] == pytest.approx(roc_auc_score(issame, -distances)) == pytest.approx(15 / 16)
    assert roc["eer"] == pytest.approx(0.25)
    # accepting distance <= the threshold gives exactly that TAR at no more than that FAR
    assert roc["threshold_at_far"] == {0.0: pytest.approx(0.3), 0.25: pytest.approx(0.9)}
    assert roc_figures(distances[::-1], ~issame[::-1], far_targets=(0.0,))["threshold_at_far"] == {0.0: None}


def test_the_threshold_at_far_does_not_depend_on_which_roc_points_are_corners():
    # 2 same pairs then 8 different ones; FAR 0.5 allows 4 false accepts: accepting <= 0.7 does, 0.8 would not.
    # Moving one different pair from 0.6 to 0.65 changes which points are corners, not the operating point.
    issame = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], bool)
    distances = np.array([.1, .2, .5, .6, .6, .7, .8, .9, 1, 1.1])
    moved = np.where(np.arange(10) == 4, 0.65, distances)
    for d in (distances, moved):
        roc = roc_figures(d, issame, far_targets=(0.5,))
        assert roc["tar_at_far"] == {0.5: 1.0} and roc["threshold_at_far"] == {0.5: 0.7}


@pytest.mark.parametrize("same", [True, False])
def test_a_roc_of_one_kind_of_pairs_is_an_error_not_nan(same):
    with pytest.raises(ValueError, match="a ROC needs same and different pairs"):
        roc_figures(np.linspace(0, 2, 20), np.full(20, same))


def roc_by_brute_force(distances, issame, far_targets):
    """Every distinct distance tried as "accept when distance <= threshold" -> ({far: TAR}, {far: threshold})."""
    candidates = np.unique(distances)
    accepted = distances[None, :] <= candidates[:, None]
    far = (accepted & ~issame).sum(axis=1) / (~issame).sum()
    tar = (accepted & issame).sum(axis=1) / issame.sum()
    within = {target: far <= target for target in far_targets}
    return ({target: float(tar[ok].max()) if ok.any() else 0.0 for target, ok in within.items()},
            {target: float(candidates[ok].max()) if ok.any() else None for target, ok in within.items()})


@pytest.mark.parametrize("seed", range(6))
def test_tar_threshold_auc_and_eer_against_every_threshold_with_ties(seed):
    rng = np.random.default_rng(seed)
    issame = rng.random(300) < rng.uniform(0.2, 0.6)
    # on a coarse grid: ties within and across the classes, and runs of collinear ROC points
    distances = np.round(np.where(issame, rng.normal(0.9, 0.35, 300), rng.normal(1.5, 0.3, 300)), 2)
    negatives = (~issame).sum()
    far_targets = (0.0, 1 / negatives, 3 / negatives, 0.01, 0.05, 0.1, 0.3, 0.5, 1.0)
    roc = roc_figures(distances, issame, far_targets)
    tar, threshold = roc_by_brute_force(distances, issame, far_targets)
    assert roc["tar_at_far"] == tar and roc["threshold_at_far"] == threshold
    assert roc["auc"] == pytest.approx(roc_auc_score(issame, -distances), abs=1e-12)
    corners_fpr, corners_tpr, _ = roc_curve(issame, -distances)  # scikit-learn's own curve of corners
    assert roc["eer"] == pytest.approx(np.interp(0.0, corners_fpr - (1.0 - corners_tpr), corners_fpr), abs=1e-12)
    # the curve returned for plots is the whole curve's line, through fewer of its points; both coordinates rise
    # along it, so their sum places a point on it
    full_fpr, full_tpr, _ = roc_curve(issame, -distances, drop_intermediate=False)
    assert set(zip(roc["fpr"], roc["tpr"])) <= set(zip(full_fpr, full_tpr)) and len(roc["fpr"]) < len(full_fpr)
    for drawn, full in ((roc["fpr"], full_fpr), (roc["tpr"], full_tpr)):
        np.testing.assert_allclose(np.interp(full_fpr + full_tpr, roc["fpr"] + roc["tpr"], drawn), full, atol=1e-12)


def test_flip_fusion_distances_and_xnorm():
    raw = np.array([[3.0, 4.0], [0.0, 2.0]])
    flipped = np.array([[1.0, 0.0], [0.0, 1.0]])
    unit = flip_fused(raw, flipped)
    np.testing.assert_allclose(unit, [[4 / np.sqrt(32), 4 / np.sqrt(32)], [0, 1]])
    assert xnorm(raw, flipped) == pytest.approx((5 + 2 + 1 + 1) / 4)
    d = pair_distances(unit, np.array([[0, 1]]))
    np.testing.assert_allclose(d, 2 - 2 * (4 / np.sqrt(32)))


def test_cosine_scoring_gives_the_same_accuracy():
    rng = np.random.default_rng(1)
    unit = flip_fused(rng.normal(size=(40, 8)))
    pairs = np.arange(40).reshape(20, 2)
    issame = rng.random(20) < 0.5
    euclid = kfold_accuracy(pair_distances(unit, pairs), issame)
    cosine_distance = 1 - np.sum(unit[pairs[:, 0]] * unit[pairs[:, 1]], axis=1)  # = euclidean / 2
    cosine = kfold_accuracy(cosine_distance, issame, EUCLIDEAN_THRESHOLDS / 2)
    np.testing.assert_allclose(euclid[0], cosine[0])


def test_report_fields():
    rng = np.random.default_rng(2)
    raw = rng.normal(size=(60, 16))
    unit = flip_fused(raw)
    report = verification_report(pair_distances(unit, np.arange(60).reshape(30, 2)), rng.random(30) < 0.5,
                                 raw_embeddings=[raw])
    assert set(report) >= {"accuracy", "accuracy_std", "threshold", "xnorm", "auc", "eer", "tar_at_far", "roc"}
    assert report["accuracy"] == pytest.approx(np.mean(report["fold_accuracies"]))
    with pytest.raises(ValueError, match="cannot be split"):
        kfold_accuracy(np.zeros(5), np.zeros(5, bool))


def test_thresholds_for_unscaled_scores_separate_every_pair():
    distances = np.array([-3.0, 5.0, -3.0, 0.5])
    np.testing.assert_allclose(score_thresholds(distances), [-4.0, -1.25, 2.75, 6.0])
    issame = np.array([True, False, True, False] * 5)
    accuracies, _ = kfold_accuracy(np.tile(distances, 5), issame, score_thresholds(np.tile(distances, 5)))
    assert accuracies.mean() == 1.0
