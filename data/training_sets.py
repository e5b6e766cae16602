"""Which training set a data root holds: an imgs.txt list, or InsightFace's train.rec + train.idx."""
import os

from .image_list import LIST_NAME, DataError, ImageListDataset, read_image_list
from .rec import IDX_NAME, REC_NAME, RecDataset


def open_training_set(root, input_size=(112, 112)):
    """The dataset of `root`: its imgs.txt list when it has one, else its .rec/.idx pair read directly."""
    if os.path.isfile(os.path.join(root, LIST_NAME)):
        return ImageListDataset(read_image_list(root), input_size)
    if os.path.isfile(os.path.join(root, REC_NAME)) and os.path.isfile(os.path.join(root, IDX_NAME)):
        return RecDataset(root, input_size)
    raise DataError(f"{root}: holds neither {LIST_NAME} nor {REC_NAME} + {IDX_NAME} (a training set needs one of them)")


def data_identity(dataset):
    """What makes two data roots one training set: image and class counts, and a fingerprint of names and labels."""
    return {"images": len(dataset), "classes": int(dataset.num_classes), "fingerprint": dataset.fingerprint()}


def check_moved_data(dataset, stored, old_root):
    """A resumed run reading its data from a new root: it must find the data it was trained on (`stored`)."""
    if stored is None:
        raise DataError(f"{dataset.source}: the run read {old_root}, and its checkpoint predates data fingerprints, so "
                        "this cannot be checked to be the same data; resume with the original --data_root")
    found = data_identity(dataset)
    if found != stored:
        raise DataError(f"{dataset.source}: not the data the run was trained on ({old_root}): {describe(found)} here, "
                        f"{describe(stored)} there")


def describe(identity):
    return f"{identity['images']} images of {identity['classes']} classes, fingerprint {identity['fingerprint']}"
