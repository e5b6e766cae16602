"""IJB-B / IJB-C: alignment, the meta-file reader, template pooling, TAR@FAR and the evaluation command.

The real sets cannot be had here: the tests build a small IJB-C folder in InsightFace's layout
from the demo LFW faces, each pasted into a larger "loose crop" by a known similarity transform,
its five landmarks the template points carried along by it.
"""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from backbone import build_backbone_from_config
from conftest import DEMO_ROOT, REPO_ROOT, oversized_png, shared_path
from data.alignment import ARCFACE_TEMPLATE, align_face, similarity_transform
from data.ijb_sets import load_ijb
from data.text import DataError
from evaluation.ijb_scoring import IJB_FAR_TARGETS, ijb_report, pool_templates, scf_pool_templates
from evaluation.scf_scoring import pair_scores, pool_template
from model.checkpoint import module_arrays, save_checkpoint

EVAL = os.path.join(REPO_ROOT, "eval_SFace_jittor.py")
IMPORT = os.path.join(REPO_ROOT, "tools", "import_weights.py")
MPI_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
LOOSE_SIZE = (200, 180)  # height, width of the synthetic loose crops


def random_similarity(rng):
    """A 2 x 3 similarity that puts a 112x112 crop, enlarged and turned, inside a LOOSE_SIZE image."""
    scale, angle = rng.uniform(1.1, 1.4), np.deg2rad(rng.uniform(-20, 20))
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([LOOSE_SIZE[1], LOOSE_SIZE[0]]) / 2 + rng.uniform(-8, 8, 2)
    return np.hstack([rotation, (centre - rotation @ np.array([56.0, 56.0]))[:, None]])


def loose_crop(face, matrix):
    """An aligned face pasted into a LOOSE_SIZE image by `matrix`, and its five landmarks there."""
    image = cv2.warpAffine(face, matrix, (LOOSE_SIZE[1], LOOSE_SIZE[0]), flags=cv2.INTER_LINEAR, borderValue=0)
    return image, ARCFACE_TEMPLATE @ matrix[:, :2].T + matrix[:, 2]


def demo_people(count=6, per_person=4):
    """{name: [image paths]} of the first `count` demo pair-set people with at least 3 images."""
    root = os.path.join(DEMO_ROOT, "lfw_demo", "images")
    people = {}
    for name in sorted(os.listdir(root)):
        files = sorted(os.listdir(os.path.join(root, name)))
        if len(files) >= 3:
            people[name] = [os.path.join(root, name, f) for f in files[:per_person]]
        if len(people) == count:
            return people
    raise AssertionError("the demo pair set has too few people with 3 images")


def build_ijb(root, set_name="ijbc"):
    """A small IJB folder: per person two templates (its first two faces, one media; the rest, a media each),
    every pair of templates labelled. -> {template id: person}."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "meta"))
    os.makedirs(os.path.join(root, "loose_crop"))
    faces, landmarks, template_person = [], [], {}
    for person, (name, paths) in enumerate(demo_people().items()):
        for k, path in enumerate(paths):
            image, points = loose_crop(cv2.imread(path), random_similarity(rng))
            file_name = f"{len(faces) + 1}.jpg"
            cv2.imwrite(os.path.join(root, "loose_crop", file_name), image)
            template = 2 * person + 1 + (k >= 2)
            media = 1000 + 10 * person + (0 if k < 2 else k)
            template_person[template] = name
            faces.append(f"{file_name} {template} {media}\n")
            landmarks.append(file_name + " " + " ".join(f"{v:.3f}" for v in points.ravel())
                             + f" {rng.uniform(0.5, 1.0):.4f}\n")
    templates = sorted(template_person)
    pairs = [f"{a} {b} {int(template_person[a] == template_person[b])}\n"
             for i, a in enumerate(templates) for b in templates[i + 1:]]
    for pattern, lines in (("{}_face_tid_mid.txt", faces), ("{}_name_5pts_score.txt", landmarks),
                           ("{}_template_pair_label.txt", pairs)):
        with open(os.path.join(root, "meta", pattern.format(set_name)), "w") as f:
            f.writelines(lines)
    return template_person


# ---- alignment ----

def test_similarity_transform_recovers_a_known_one_and_is_the_least_squares_fit():
    rng = np.random.default_rng(1)
    matrix = random_similarity(rng)
    points = ARCFACE_TEMPLATE @ matrix[:, :2].T + matrix[:, 2]
    inverse = cv2.invertAffineTransform(matrix)
    np.testing.assert_allclose(similarity_transform(points, ARCFACE_TEMPLATE), inverse, atol=1e-9)
    # noisy landmarks: the same optimum as the linear least-squares fit of (a, b, tx, ty), x' = a x - b y + tx
    noisy = points + rng.normal(0, 2.0, points.shape)
    design = np.zeros((10, 4))
    design[0::2] = np.stack([noisy[:, 0], -noisy[:, 1], np.ones(5), np.zeros(5)], axis=1)
    design[1::2] = np.stack([noisy[:, 1], noisy[:, 0], np.zeros(5), np.ones(5)], axis=1)
    a, b, tx, ty = np.linalg.lstsq(design, ARCFACE_TEMPLATE.ravel(), rcond=None)[0]
    np.testing.assert_allclose(similarity_transform(noisy, ARCFACE_TEMPLATE), [[a, -b, tx], [b, a, ty]], atol=1e-9)
    with pytest.raises(ValueError, match="one point"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)


def test_alignment_recovers_the_aligned_face_from_a_loose_crop():
    face = cv2.imread(next(iter(demo_people().values()))[0])
    image, points = loose_crop(face, random_similarity(np.random.default_rng(2)))
    aligned = align_face(image, points)
    inner = (slice(8, 104), slice(8, 104))  # the border loses a pixel or two to resampling
    error = np.abs(aligned[inner].astype(float) - face[inner]).mean()
    assert aligned.shape == (112, 112, 3) and error < 4.0, error
    assert np.abs(align_face(image, points[[1, 0, 2, 4, 3]])[inner].astype(float) - face[inner]).mean() > 4 * error


# ---- reading the layout ----

def test_reader_gets_faces_templates_and_pairs(tmp_path):
    template_person = build_ijb(str(tmp_path))
    ijb = load_ijb(str(tmp_path))
    assert ijb.name == "IJBC" and len(ijb.images) == 21 and ijb.landmarks.shape == (21, 5, 2)
    assert set(ijb.templates) == set(template_person) and len(ijb.pairs) == 66
    assert ijb.issame.sum() == 6 and all(template_person[a] == template_person[b] for a, b in ijb.pairs[ijb.issame])
    assert ijb.sources[0].endswith("ijbc_name_5pts_score.txt:1") and np.all((ijb.scores >= 0.5) & (ijb.scores <= 1))
    face = ijb.aligned(0, (112, 112))
    original = cv2.cvtColor(cv2.imread(next(iter(demo_people().values()))[0]), cv2.COLOR_BGR2RGB)
    assert np.abs(face[8:104, 8:104].astype(float) - original[8:104, 8:104]).mean() < 6  # RGB, JPEG-compressed twice
    assert ijb.aligned(0, (112, 96)).shape == (112, 96, 3)
    with pytest.raises(DataError, match=r"1\.jpg \(.*:1\): faces are aligned to 112x112"):
        ijb.aligned(0, (128, 128))


def test_a_loose_crop_opencv_refuses_to_decode_is_named(tmp_path):
    build_ijb(str(tmp_path))
    with open(tmp_path / "loose_crop" / "2.jpg", "wb") as f:
        f.write(oversized_png())  # its header claims 40000x40000 pixels
    with pytest.raises(DataError, match=r"loose_crop/2\.jpg \(.*ijbc_name_5pts_score\.txt:2\): not a decodable image"):
        load_ijb(str(tmp_path)).aligned(1, (112, 112))


def rewrite_line(path, number, text):
    with open(path) as f:
        lines = f.readlines()
    lines[number - 1] = text
    with open(path, "w") as f:
        f.writelines(lines)


@pytest.mark.parametrize("meta, line, text, message", [
    ("ijbc_face_tid_mid.txt", 3, "3.jpg 1\n", r"ijbc_face_tid_mid.txt:3: expected 'image template_id media_id'"),
    ("ijbc_face_tid_mid.txt", 2, "2.jpg one 1\n", r"ijbc_face_tid_mid.txt:2: template and media ids must be integers"),
    ("ijbc_face_tid_mid.txt", 4, "99.jpg 2 1\n", r"ijbc_face_tid_mid.txt:4: image 99.jpg has no line in .*5pts"),
    ("ijbc_name_5pts_score.txt", 5, "5.jpg 1 2 3\n", r"ijbc_name_5pts_score.txt:5: expected 'image x1 y1"),
    ("ijbc_name_5pts_score.txt", 2, "2.jpg" + " nan" * 11 + "\n", r"ijbc_name_5pts_score.txt:2: .* finite numbers"),
    ("ijbc_name_5pts_score.txt", 2, "1.jpg" + " 1" * 11 + "\n", r"ijbc_name_5pts_score.txt:2: image 1.jpg is listed "
                                                                 r"again \(first at line 1\)"),
    ("ijbc_template_pair_label.txt", 7, "1 77 0\n", r"ijbc_template_pair_label.txt:7: template 77 has no faces"),
    ("ijbc_template_pair_label.txt", 1, "1 2 2\n", r"ijbc_template_pair_label.txt:1: label must be 1"),
])
def test_a_malformed_meta_line_is_named_by_file_and_line(tmp_path, meta, line, text, message):
    build_ijb(str(tmp_path))
    rewrite_line(str(tmp_path / "meta" / meta), line, text)
    with pytest.raises(DataError, match=message):
        load_ijb(str(tmp_path), "IJBC")


@pytest.mark.parametrize("label, counts", [("1", "6 same and 0 different"), ("0", "0 same and 60 different")])
def test_a_pair_file_of_one_kind_is_refused_before_any_embedding(tmp_path, label, counts):
    """With genuine pairs alone TAR would read 1.0 at every FAR and AUC nan; the command stops naming the file."""
    build_ijb(str(tmp_path / "IJBC"))
    pairs_file = tmp_path / "IJBC" / "meta" / "ijbc_template_pair_label.txt"
    pairs_file.write_text("".join(line for line in pairs_file.read_text().splitlines(True) if line.split()[2] == label))
    with pytest.raises(DataError, match=f"{pairs_file}: {counts} pairs; verification is scored on pairs of both kinds"):
        load_ijb(str(tmp_path / "IJBC"))
    plain, _ = write_checkpoints(tmp_path)
    result = subprocess.run([sys.executable, EVAL, "--checkpoint", plain, "--ijb", str(tmp_path / "IJBC"),
                             "--outdir", str(tmp_path / "out"), "--workers_id", "cpu"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == \
        f"error: {pairs_file}: {counts} pairs; verification is scored on pairs of both kinds"


def test_missing_images_and_missing_meta_files_stop_the_evaluation(tmp_path):
    build_ijb(str(tmp_path / "IJBB"), "ijbb")
    os.remove(tmp_path / "IJBB" / "loose_crop" / "4.jpg")
    os.remove(tmp_path / "IJBB" / "loose_crop" / "9.jpg")
    with pytest.raises(DataError, match=r"2 of the 21 face images are missing, e\.g\. .*4\.jpg "
                                        r"\(.*ijbb_name_5pts_score\.txt:4\)"):
        load_ijb(str(tmp_path / "IJBB"))
    with pytest.raises(DataError, match=r"meta/ijbc_name_5pts_score\.txt: no such file"):
        load_ijb(str(tmp_path / "IJBB"), "IJBC")
    with pytest.raises(DataError, match="expected one of"):
        load_ijb(str(tmp_path))


# ---- pooling and TAR@FAR ----

def test_template_pooling_by_hand():
    # template 7: media 1 holds faces [1, 0] and [0, 1] (mean [.5, .5]), media 2 holds [0, 2]: sum [.5, 2.5]
    # template 3: one face [3, 4]; its media id 1 is another media than template 7's media 1
    features = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [0.0, 2.0]])
    ids, unit = pool_templates(features, np.array([7, 7, 3, 7]), np.array([1, 1, 1, 2]))
    assert ids.tolist() == [3, 7]
    np.testing.assert_allclose(unit, [[0.6, 0.8], np.array([0.5, 2.5]) / np.sqrt(6.5)], atol=1e-12)


def reference_pooling(features, templates, medias):
    """arcface_torch's loops, written out: media means inside each template, summed, normalised."""
    ids = np.unique(templates)
    pooled = []
    for t in ids:
        inside = templates == t
        total = sum(features[inside & (medias == m)].mean(axis=0) for m in np.unique(medias[inside]))
        pooled.append(total / np.linalg.norm(total))
    return ids, np.array(pooled)


def test_template_pooling_matches_a_loop_implementation_and_scf_pools_by_kappa():
    rng = np.random.default_rng(3)
    features, templates, medias = rng.normal(size=(300, 16)), rng.integers(0, 40, 300), rng.integers(0, 5, 300)
    for got, expected in zip(pool_templates(features, templates, medias), reference_pooling(features, templates, medias)):
        np.testing.assert_allclose(got, expected, atol=1e-12)
    mu = features / np.linalg.norm(features, axis=1, keepdims=True)
    kappa = rng.uniform(10, 500, 300)
    ids, pooled_mu, pooled_kappa = scf_pool_templates(mu, kappa, templates)
    for row, t in enumerate(ids):
        expected_mu, expected_kappa = pool_template(mu[templates == t], kappa[templates == t])
        np.testing.assert_allclose(pooled_mu[row], expected_mu, atol=1e-12)
        assert pooled_kappa[row] == pytest.approx(expected_kappa)


def test_tar_at_far_by_hand():
    # 4 genuine and 10 impostor distances. FAR <= 0.1 allows one false accept (0.3): accepting <= 0.5 takes 3 of 4
    # genuine pairs. Any lower FAR target allows none: accepting <= 0.2 takes 2 of 4.
    genuine, impostor = [0.1, 0.2, 0.5, 0.9], [0.3, 0.6, 0.7, 0.8, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5]
    report = ijb_report(np.array(genuine + impostor), np.array([True] * 4 + [False] * 10), "IJBC", {})
    assert list(report["tar_at_far"]) == ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    assert report["tar_at_far"] == {"1e-06": 0.5, "1e-05": 0.5, "0.0001": 0.5, "0.001": 0.5, "0.01": 0.5, "0.1": 0.75}
    assert report["threshold_at_far"]["0.01"] == pytest.approx(0.2) and report["threshold_at_far"]["0.1"] == 0.5
    assert report["auc"] == pytest.approx(1 - (2 + 3) / 40)  # impostor pairs scored closer than genuine: 5 of 40


def test_tar_at_far_matches_sklearn_roc_and_a_brute_force_count():
    from sklearn.metrics import roc_curve
    rng = np.random.default_rng(4)
    issame = rng.random(20000) < 0.05
    distances = np.round(np.where(issame, rng.normal(0.8, 0.3, 20000), rng.normal(1.6, 0.25, 20000)), 3)  # ties
    report = ijb_report(distances, issame, "IJBC", {})
    fpr, tpr, _ = roc_curve(issame, -distances, drop_intermediate=False)
    candidates = np.unique(distances)
    accepted = distances[None, :] <= candidates[:, None]  # accept when distance <= threshold
    far = (accepted & ~issame).sum(axis=1) / (~issame).sum()
    tar = (accepted & issame).sum(axis=1) / issame.sum()
    for target in IJB_FAR_TARGETS:
        expected = tpr[fpr <= target].max()
        assert report["tar_at_far"][f"{target:g}"] == pytest.approx(expected, abs=1e-12), target
        assert expected == pytest.approx(max(tar[far <= target], default=0.0), abs=1e-12), target


# ---- the command ----

def write_checkpoints(folder):
    """A random MobileFaceNet and an SCF checkpoint on it (a random confidence head)."""
    from head.scf import ConfidenceHead
    cfg = {"net": "MobileFaceNet", "input_hw": [112, 112], "embedding_size": 64, "input_norm": [127.5, 1 / 128]}
    backbone = build_backbone_from_config(cfg)
    plain, scf = str(folder / "model.npz"), str(folder / "scf.npz")
    save_checkpoint(plain, {"config": cfg}, module_arrays(backbone), {})
    head = ConfidenceHead(backbone.feature_channels, cfg["embedding_size"])
    save_checkpoint(scf, {"config": dict(cfg, scf=True, radius=64.0)}, module_arrays(backbone), module_arrays(head))
    return plain, scf


def run_eval(args, mpi_ranks=0):
    command = [sys.executable, EVAL, *args, "--workers_id", "cpu", "--num_workers", "2", "--batch_size", "8"]
    if mpi_ranks:
        command = ["mpirun", "-np", str(mpi_ranks), "--oversubscribe", *command]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=MPI_ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def scf_run(tmp_path_factory):
    """The synthetic IJB-C scored with an SCF checkpoint in one process: (folder, checkpoint, stdout, results)."""
    root = tmp_path_factory.mktemp("ijb")
    build_ijb(str(root / "IJBC"))
    _, scf = write_checkpoints(root)
    out = run_eval(["--checkpoint", scf, "--ijb", str(root / "IJBC"), "--outdir", str(root / "out"), "--save_features"])
    with open(root / "out" / "results.json") as f:
        return root, scf, out, json.load(f)


def test_command_writes_ijb_rows_roc_and_features(scf_run):
    root, _, out, results = scf_run
    assert "TAR@1e-06" in out and "IJBC-scf" in out and results["results"] == []
    rows = {r["target"]: r for r in results["ijb"]}
    assert set(rows) == {"IJBC", "IJBC-scf"}
    for row in rows.values():
        assert (row["faces"], row["templates"], row["pairs"], row["genuine_pairs"]) == (21, 12, 66, 6)
        assert list(row["tar_at_far"]) == ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
        assert all(0 <= v <= 1 for v in row["tar_at_far"].values()) and 0 <= row["auc"] <= 1
        with open(root / "out" / f"roc_{row['target']}.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    saved = np.load(root / "out" / "features_IJBC.npz")
    assert saved["embeddings"].shape == (21, 64) and saved["kappa"].shape == (21,)
    np.testing.assert_allclose(np.linalg.norm(saved["embeddings"], axis=1), 1, atol=1e-5)
    assert str(saved["sources"][0]).endswith(os.path.join("loose_crop", "1.jpg"))
    # the SCF row, recomputed from the saved per-face features: faces, templates and pairs were matched up
    ijb = load_ijb(str(root / "IJBC"))
    ids, mu, kappa = scf_pool_templates(saved["embeddings"], saved["kappa"], ijb.templates)
    a, b = np.searchsorted(ids, ijb.pairs).T
    expected = ijb_report(-pair_scores(mu[a], kappa[a], mu[b], kappa[b], 64.0), ijb.issame, "IJBC-scf", {})
    assert rows["IJBC-scf"]["tar_at_far"] == pytest.approx(expected["tar_at_far"], abs=1e-9)
    assert rows["IJBC-scf"]["auc"] == pytest.approx(expected["auc"], abs=1e-9)


def test_mpirun_splits_the_faces_and_scores_the_same(scf_run):
    root, scf, _, single = scf_run
    run_eval(["--checkpoint", scf, "--ijb", str(root / "IJBC"), "--outdir", str(root / "mpi")], mpi_ranks=2)
    with open(root / "mpi" / "results.json") as f:
        mpi = json.load(f)
    for a, b in zip(single["ijb"], mpi["ijb"]):
        assert a["target"] == b["target"] and a["faces"] == b["faces"]
        for far, tar in a["tar_at_far"].items():
            assert b["tar_at_far"][far] == pytest.approx(tar, abs=1e-9), (a["target"], far)
        assert b["auc"] == pytest.approx(a["auc"], abs=1e-9)


def test_a_published_model_tells_the_synthetic_templates_apart(tmp_path):
    """Real MobileFaceNet weights (../shared/data): alignment and pooling keep each person's templates together."""
    folder = shared_path("insightface-mobilefacenet")
    model = str(tmp_path / "model.npz")
    subprocess.run([sys.executable, IMPORT, "insightface", "--params", os.path.join(folder, "model-y1-test2_params.npz"),
                    "--symbol", os.path.join(folder, "model-symbol.json"), "--out", model], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    build_ijb(str(tmp_path / "IJBC"))
    run_eval(["--checkpoint", model, "--ijb", str(tmp_path / "IJBC"), "--outdir", str(tmp_path / "out")])
    with open(tmp_path / "out" / "results.json") as f:
        row = json.load(f)["ijb"][0]
    assert row["auc"] > 0.99 and row["tar_at_far"]["0.1"] > 0.8, row  # measured: AUC 1, TAR 1 at every FAR


def test_command_needs_a_target_or_an_ijb_folder(tmp_path):
    result = subprocess.run([sys.executable, EVAL, "--checkpoint", "x.npz", "--workers_id", "cpu"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "give --target, --ijb or both" in result.stderr
