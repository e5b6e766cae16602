"""Angle statistics (evaluation/angles.py) against plain numpy on known cosines, the per-window record
in training (train/logger.py) and the angles a training step reads from its cosines (train/steps.py)."""
import json
import math
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest

from data.label_noise import other_classes
from evaluation.angles import angle_summary, angles, fraction_unpulled, histogram, percentiles, suggest_ab
from train.logger import TrainWindow, describe_record


def test_angles_of_known_cosines_with_rounding_past_one_clamped():
    cos = np.array([1.0, math.sqrt(3) / 2, 0.5, 0.0, -0.5, -1.0, 1.0000001, -1.0000002], np.float32)
    expected = [0.0, math.pi / 6, math.pi / 3, math.pi / 2, 2 * math.pi / 3, math.pi, 0.0, math.pi]
    np.testing.assert_allclose(angles(cos), expected, atol=1e-6)
    assert not np.isnan(angles(cos)).any()


def test_percentiles_and_histogram_against_numpy():
    theta = np.random.default_rng(0).uniform(0, math.pi, 1001)
    got = percentiles(theta)
    assert list(got) == ["p5", "p25", "p50", "p75", "p95"]
    np.testing.assert_allclose(list(got.values()), np.percentile(theta, [5, 25, 50, 75, 95]))
    # 18 bins of 10 degrees over [0, pi]: bin = floor(degrees / 10), pi itself in the last bin
    counts = histogram(theta)
    expected = np.bincount(np.minimum(np.floor(np.degrees(theta) / 10).astype(int), 17), minlength=18)
    assert counts == expected.tolist() and sum(counts) == len(theta)
    edges = np.radians([0.0, 9.99, 10.01, 95.0, 179.99]).tolist() + [math.pi]
    assert histogram(edges) == [2, 1] + [0] * 7 + [1] + [0] * 7 + [2]


def test_unpulled_fraction_is_the_share_with_r_intra_below_one_half():
    theta = np.random.default_rng(1).uniform(0, math.pi, 5000)
    for a in (0.5, 0.87, 1.3):
        r_intra = 1.0 / (1.0 + np.exp(-80.0 * (theta - a)))  # independent of the module's r_intra
        assert fraction_unpulled(theta, a) == pytest.approx(np.mean(r_intra < 0.5))
        assert fraction_unpulled(theta, a) == pytest.approx(np.mean(theta < a))


def test_summary_and_suggestion():
    rng = np.random.default_rng(2)
    theta_y, theta_j = rng.normal(0.7, 0.1, 400), rng.normal(1.5, 0.05, 4000)
    summary = angle_summary(theta_y, theta_j, a=0.87)
    assert summary["theta_target"]["count"] == 400 and summary["theta_other"]["count"] == 4000
    assert summary["unpulled"] == pytest.approx(np.mean(theta_y < 0.87))
    assert "unpulled" not in angle_summary(theta_y, theta_j)  # a head without an a
    a, b = suggest_ab(theta_y, theta_j, k=80)
    assert a == round(np.percentile(theta_y, 90), 2) and b == round(np.percentile(theta_j, 1) - 3 / 80, 2)


def test_other_classes_are_uniform_over_the_others_and_never_the_label():
    labels = np.repeat(np.arange(5), 4000)
    drawn = other_classes(labels, 5, np.random.default_rng(3))
    assert not (drawn == labels).any() and drawn.min() >= 0 and drawn.max() < 5
    for c in range(5):  # each of the 4 other classes about a quarter of the time
        counts = np.bincount(drawn[labels == c], minlength=5)
        assert counts[c] == 0 and np.all(np.abs(counts[np.arange(5) != c] - 1000) < 120)


def test_window_logs_the_angles_of_its_steps_and_resumes_exactly():
    rng = np.random.default_rng(4)
    steps = [{"loss": float(rng.normal()), "samples": 3, "correct": 1, "steps": 1,
              "theta_target": rng.uniform(0, 2, 3).tolist(), "theta_other": rng.uniform(1, 2, 3).tolist()}
             for _ in range(4)]
    summarise = partial(angle_summary, a=0.87)
    whole = TrainWindow(None, summarise)
    for s in steps:
        whole.add(s)
    half = TrainWindow(None, summarise)
    for s in steps[:2]:
        half.add(s)
    resumed = TrainWindow(json.loads(json.dumps(half.sums)), summarise)  # the sums' round trip through a checkpoint
    for s in steps[2:]:
        resumed.add(s)
    progress = {"step": 4, "epoch": 0}
    a, b = whole.record(progress, 0.1), resumed.record(progress, 0.1)
    a.pop("img_per_s"), b.pop("img_per_s")
    assert a == b
    theta_y = np.concatenate([s["theta_target"] for s in steps])
    assert a["angles"] == angle_summary(theta_y, np.concatenate([s["theta_other"] for s in steps]), 0.87)
    assert a["loss"] == pytest.approx(np.mean([s["loss"] for s in steps]))
    assert "theta_target" not in a and "unpulled" in describe_record(dict(a, img_per_s=1.0))


def test_the_window_throughput_leaves_out_the_time_of_an_evaluation(monkeypatch):
    from train import logger
    clock = iter([100.0, 104.0, 134.0, 138.0, 138.0])  # start; an evaluation from 104 s to 134 s; the record
    monkeypatch.setattr(logger, "time", SimpleNamespace(time=lambda: next(clock)))
    window = TrainWindow(None, None)
    window.add({"loss": 1.0, "samples": 160, "steps": 5})
    with window.paused():
        pass
    assert window.record({"step": 5, "epoch": 0}, 0.1)["img_per_s"] == pytest.approx(160 / 8.0)


def test_a_step_reads_the_target_and_one_sampled_other_cosine_per_sample():
    import jittor as jt

    from train.steps import ANGLE_DRAW, step_angles
    rng = np.random.default_rng(5)
    cos = rng.uniform(-1, 1, (6, 9)).astype(np.float32)
    labels = rng.integers(0, 9, 6)
    got = step_angles(SimpleNamespace(sharded=False), jt.array(cos), labels, seed=3, step=7)
    others = other_classes(labels, 9, np.random.default_rng([3, 7, ANGLE_DRAW]))
    np.testing.assert_allclose(got["theta_target"], np.arccos(cos[np.arange(6), labels].astype(np.float64)))
    np.testing.assert_allclose(got["theta_other"], np.arccos(cos[np.arange(6), others].astype(np.float64)))
    # A sharded head's block (one rank: every class) gives the same angles.
    head = SimpleNamespace(sharded=True, num_classes=9, start=0, stop=9)
    padded = np.concatenate([cos, np.full((6, 2), 0.1, np.float32)], axis=1)  # padding rows count for nothing
    assert step_angles(head, jt.array(padded), labels, seed=3, step=7) == got
