"""Which training set a data root holds: an imgs.txt list, or InsightFace's train.rec + train.idx."""
import os

import numpy as np

from .image_list import LIST_NAME, ImageListDataset, read_image_list
from .rec import IDX_NAME, REC_NAME, RecDataset
from .text import DataError


def open_training_set(root, input_size=(112, 112)):
    """The dataset of `root`: its imgs.txt list when it has one, else its .rec/.idx pair read directly."""
    if os.path.isfile(os.path.join(root, LIST_NAME)):
        return ImageListDataset(read_image_list(root), input_size)
    if os.path.isfile(os.path.join(root, REC_NAME)) and os.path.isfile(os.path.join(root, IDX_NAME)):
        return RecDataset(root, input_size)
    raise DataError(f"{root}: holds neither {LIST_NAME} nor {REC_NAME} + {IDX_NAME} (a training set needs one of them)")


def classes_with_images(dataset):
    """How many classes at least one labelled image of `dataset` belongs to."""
    return len(np.unique(dataset.labels[dataset.labels >= 0]))


def check_trainable(dataset):
    """A recognition model learns to tell classes apart: a DataError naming the list unless it has images of 2 or more.

    (With one class a softmax head's loss is constant, SFace's only pulls the images to their centre, and
    the angle diagnostics have no other class to draw.)
    """
    found = classes_with_images(dataset)
    if found < 2:
        raise DataError(f"{dataset.source}: images of {found} class{'' if found == 1 else 'es'} "
                        f"({dataset.num_classes} declared); training a recognition model needs images of at least "
                        "2 classes to tell apart")


def data_identity(dataset):
    """What makes two data roots one training set: image and class counts, and a fingerprint of names and labels."""
    return {"images": len(dataset), "classes": int(dataset.num_classes), "fingerprint": dataset.fingerprint()}


def check_resumed_data(dataset, stored, old_root, moved):
    """A resumed run must read the data it was trained on (`stored`): at its root, or at a new one it `moved` to.

    Its position (epoch, batch) means the same images only in the same list, so a list edited in place
    is refused too.
    """
    if stored is None:
        if moved:
            raise DataError(f"{dataset.source}: the run read {old_root}, and its checkpoint predates data "
                            "fingerprints, so this cannot be checked to be the same data; resume with the original "
                            "--data_root")
        return  # a checkpoint from before data fingerprints, at its own root: nothing to compare with
    found = data_identity(dataset)
    if found == stored:
        return
    if moved:
        raise DataError(f"{dataset.source}: not the data the run was trained on ({old_root}): {describe(found)} here, "
                        f"{describe(stored)} there")
    raise DataError(f"{dataset.source}: changed since the run read it: {describe(found)} now, {describe(stored)} "
                    "then; a resumed run needs its own data (to train on the new list, start a new run from these "
                    "weights with --resume_backbone and --resume_head)")


def describe(identity):
    return f"{identity['images']} images of {identity['classes']} classes, fingerprint {identity['fingerprint']}"
