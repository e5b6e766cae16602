"""The layering ARCHITECTURE.md describes, checked on the source: training is imported only from above it."""
import ast
import os

from util.files import REPO_ROOT

MAY_IMPORT_TRAIN = ("train/", "tests/", "train_SFace_jittor.py", "train_SCF_jittor.py", "benchmark.py")


def python_files():
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("results", "__pycache__")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, REPO_ROOT).replace(os.sep, "/"), path


def imported_packages(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_nothing_below_the_training_scripts_imports_train():
    checked, offenders = 0, []
    for name, path in python_files():
        checked += 1
        if not name.startswith(MAY_IMPORT_TRAIN) and "train" in imported_packages(path):
            offenders.append(name)
    assert checked > 50 and offenders == []
