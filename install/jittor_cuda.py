#!/usr/bin/env python3
"""Jittor 1.3.11 on current CUDA toolkits, offline: the compatibility patch and the CUDA home.

    python3 install/jittor_cuda.py patch   # apply jittor-1.3.11-cuda.patch to the installed Jittor, once
    python3 install/jittor_cuda.py home    # assemble a CUDA home and write the settings util/runtime.py applies
    python3 install/jittor_cuda.py home --require-all   # exit 1 when a library is missing (setup.sh then installs wheels)
    python3 install/jittor_cuda.py find    # print the CUDA toolkit's nvcc and version (exit 1: none)
    python3 install/jittor_cuda.py prove-build   # build Jittor's CUDA core and externs here, GPU or not

No command imports jittor in this process (its first import compiles it).

`patch` touches only Jittor 1.3.11.0 whose files are exactly the release's (checked by sha256); files
already patched are left as they are; anything else is refused with nothing changed. The patch
changes CUDA code paths only, so the CPU build computes as before.

`home`: Jittor derives every CUDA path from nvcc's folder (bin/.. -> include, lib64) and wants
unversioned library names (libcudnn.so), which NVIDIA's PyPI wheels do not ship. So the toolkit
and the libraries found are linked into one folder, ~/.cache/sface-jittor/cuda-<version>, whose
bin/nvcc is a script that runs the real nvcc (a link would resolve back to the toolkit). Search
order: the toolkit from $CUDA_HOME, then nvcc on PATH, /usr/local/cuda, the newest
/usr/local/cuda-*, /usr/bin/nvcc; each library (cuBLAS, cuRAND, cuDNN, NCCL) from the toolkit,
then the system's lib folders, then the nvidia-* wheels of this Python. The settings file
records the environment Jittor needs to start with no download: its own transpose library
(cutt 1.2, which reads clock fields CUDA 13 removed) and cutlass are off; NCCL comes from the
wheel or is off (MPI all-reduce then); without cuDNN, Jittor's own convolutions (conv_opt=1).

`prove-build` checks the CUDA build on any machine with the toolkit, GPU or not: a child Python
imports the installed (patched) Jittor with the recorded settings and HOME set to a Jittor home of
its own (~/.cache/sface-jittor/build-proof; HOME, not JITTOR_HOME, which Jittor would write into the
user's ~/.cache/jittor/config.json). The import compiles the CUDA core with nvcc and then the
cuBLAS, cuDNN, cuRAND and CUB externs, which must all load. Without a device the patched core then
reports no GPU and Jittor runs on the CPU; its JIT kernels (conv, softmax, reductions, ...) are
compiled only when run on a GPU, so the CUDA constructs the patch puts into them are compiled
from cccl_probe.cu instead. Objects stay cached in that home: a second run takes seconds.
"""
import argparse
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PATCH = os.path.join(HERE, "jittor-1.3.11-cuda.patch")
JITTOR_VERSION = "1.3.11.0"
SETTINGS = os.path.join(os.path.expanduser("~"), ".cache", "sface-jittor", "cuda.json")
PROOF_HOME = os.path.join(os.path.dirname(SETTINGS), "build-proof")
PROBE = os.path.join(HERE, "cccl_probe.cu")
EXTERNS = ("cublas", "cudnn", "curand", "cub")
SUPPORTED_CUDA = (12, 13)
ARCH_LIB = "/usr/lib/x86_64-linux-gnu"

# sha256 of each file the patch changes: (release 1.3.11.0, patched).
PATCHED_FILES = {
    "jittor/compiler.py": ("3398b120fb43014db85d0beaccfc9775088956e46cec0b16cf62cd8581dd6898",
                           "64049b1ddb5b2308f3389e330f8cb7997fcf1ed1ad6c3c55e5f4b2ab1b0ed53a"),
    "jittor/compile_extern.py": ("d1d02ba4314b3390f70a91d3347267920cb77999b1241d01849c85fbcaa7d56c",
                                 "080e42fd71c8c4465e292be58d924f14b55914102df784c46ecc6319e1865201"),
    "jittor/extern/cuda/inc/helper_cuda.h": ("5faa2b18470a970658cfc0b70504f98aa6fb85695b2a116408895ad11edc57da",
                                             "9b2232ed6cced85bf8bf4d139c581d72d99331eb17751596ff8d55ff7c40961f"),
    "jittor/other/code_softmax.py": ("d4d533239f569cbbc5586c7b72257bc59ad0359ca12f110710a5470fcb90cc40",
                                     "32d421e8e7f4d4c098c8c85bf8c3575f3dac2ccad0adefd7d48fc1942e9ae158"),
    "jittor/depthwise_conv.py": ("ca12ae9b7262844c0b89c3865ab71ff9b89bcdbf9bf815c19766ea3e9ade8ec1",
                                 "8c04e72777e68a37dcb42ac08b495b271b25359027bc66998f06caab59376b18"),
    "jittor/extern/cuda/cub/ops/cub_where_op.cc": ("b54b158ccab3204384b54728ed585f0a8c81e2575a23e867889acce5a98d7fe9",
                                                   "37956bdfcfb4da0656aa7995b0cd40ea781d79199f8ac50d5357d5e4b9ea02a8"),
    "jittor/src/misc/cuda_flags.cc": ("1bf8451968000bf0623e6127ead971092a557985e841c1bebc1661eabb03c3e4",
                                      "9a5f9f8ef3c89ce30f07d2d6d638403506afc0681c69d5b667c840cfc2b594c5"),
}
# Headers and libraries linked into the CUDA home, by library.
LIBRARIES = {
    "cublas": (["cublas*.h"], ["libcublas.so*", "libcublasLt.so*"]),
    "curand": (["curand*.h"], ["libcurand.so*"]),
    "cudnn": (["cudnn*.h"], ["libcudnn*.so*"]),
    "nccl": (["nccl*.h"], ["libnccl.so*"]),
}


class SetupError(Exception):
    pass


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def site_packages():
    """The folder holding the jittor package, found without importing it."""
    spec = importlib.util.find_spec("jittor")
    if spec is None or not spec.submodule_search_locations:
        raise SetupError("jittor is not installed in this Python")
    return os.path.dirname(list(spec.submodule_search_locations)[0])


def patch_state(root):
    """'release', 'patched' or a SetupError naming what differs."""
    version = importlib.metadata.version("jittor")
    if version != JITTOR_VERSION:
        raise SetupError(f"Jittor {version} is installed; the CUDA patch is for {JITTOR_VERSION} only, nothing changed")
    states = set()
    for name, (release, patched) in PATCHED_FILES.items():
        digest = sha256(os.path.join(root, name))
        if digest not in (release, patched):
            raise SetupError(f"{os.path.join(root, name)} differs from Jittor {JITTOR_VERSION} and from its patched form; "
                             "reinstall jittor (pip install --force-reinstall --no-deps jittor==1.3.11.0), nothing changed")
        states.add("release" if digest == release else "patched")
    if len(states) > 1:
        raise SetupError(f"{root}/jittor is partly patched; reinstall jittor, nothing changed")
    return states.pop()


def apply_patch():
    root = site_packages()
    if patch_state(root) == "patched":
        print(f"Jittor CUDA patch: already applied in {root}/jittor")
        return
    for args in (["--dry-run"], []):
        out = subprocess.run(["patch", "-p1", "--forward", "--no-backup-if-mismatch", "-d", root, "-i", PATCH, *args],
                             capture_output=True, text=True)
        if out.returncode:
            raise SetupError(f"{PATCH} does not apply to {root}: {out.stdout}{out.stderr}")
    if patch_state(root) != "patched":
        raise SetupError(f"{PATCH} applied but the files' hashes are not the expected ones")
    print(f"Jittor CUDA patch: applied to {root}/jittor")


def nvcc_version(nvcc):
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release (\d+)\.(\d+)", out)
    if not match:
        raise SetupError(f"{nvcc} --version printed no release number")
    return int(match.group(1)), int(match.group(2))


def toolkit_lib(toolkit):
    """The toolkit's library folder: the one holding libcudart.so."""
    for lib in (os.path.join(toolkit, "lib64"), os.path.join(toolkit, "lib"), ARCH_LIB):
        if os.path.exists(os.path.join(lib, "libcudart.so")):
            return lib
    return None


def find_nvcc():
    """(nvcc path, (major, minor)) of the first toolkit in the search order, or None.

    A candidate counts only with a toolkit around it (include/cuda_runtime.h, libcudart.so):
    wrapper scripts on PATH that exec an nvcc elsewhere are passed over.
    """
    candidates = [os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")] if os.environ.get("CUDA_HOME") else []
    candidates += [shutil.which("nvcc") or "", "/usr/local/cuda/bin/nvcc"]
    candidates += sorted(glob.glob("/usr/local/cuda-*/bin/nvcc"), key=lambda p: [int(v) for v in
                         re.findall(r"\d+", p)], reverse=True)
    candidates.append("/usr/bin/nvcc")
    for nvcc in candidates:
        if not nvcc or not os.access(nvcc, os.X_OK):
            continue
        nvcc = os.path.realpath(nvcc)
        toolkit = os.path.dirname(os.path.dirname(nvcc))
        if os.path.exists(os.path.join(toolkit, "include", "cuda_runtime.h")) and toolkit_lib(toolkit):
            return nvcc, nvcc_version(nvcc)
    return None


def settings_folder():
    return os.path.dirname(SETTINGS)


def wheel_folders():
    """include/lib folder pairs of the nvidia-* wheels installed in this Python."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    return [(os.path.join(d, "include"), os.path.join(d, "lib")) for root in roots
            for d in sorted(glob.glob(os.path.join(root, "*"))) if os.path.isdir(os.path.join(d, "lib"))]


def find_library(name, toolkit):
    """(headers, libraries) of the first place in the search order that has both, or None."""
    header_patterns, lib_patterns = LIBRARIES[name]
    places = [(os.path.join(toolkit, "include"), toolkit_lib(toolkit)), ("/usr/include", ARCH_LIB)]
    for include, lib in places + wheel_folders():
        headers = [p for pattern in header_patterns for p in glob.glob(os.path.join(include, pattern))]
        libs = [p for pattern in lib_patterns for p in glob.glob(os.path.join(lib, pattern))]
        if headers and libs:
            return headers, libs
    return None


def link(target, link_path):
    if os.path.lexists(link_path):
        os.remove(link_path)
    os.symlink(target, link_path)


def unversioned(name):
    """'libcudnn.so.9' -> 'libcudnn.so'; names without a version stay."""
    return re.sub(r"\.so(\.\d+)+$", ".so", name)


def cudnn_version(headers):
    text = "".join(open(h).read() for h in headers if os.path.basename(h) == "cudnn_version.h")
    parts = [re.search(rf"#define CUDNN_{k}\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCHLEVEL")]
    return ".".join(p.group(1) for p in parts) if all(parts) else "unknown"


def assemble_home(nvcc, version):
    toolkit = os.path.dirname(os.path.dirname(nvcc))
    home = os.path.join(settings_folder(), f"cuda-{version[0]}.{version[1]}")
    if os.path.isdir(home):
        shutil.rmtree(home)
    for sub in ("bin", "include", "lib64"):
        os.makedirs(os.path.join(home, sub))
    wrapper = os.path.join(home, "bin", "nvcc")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nexec "{nvcc}" "$@"\n')
    os.chmod(wrapper, 0o755)
    for sub, folder in (("include", os.path.join(toolkit, "include")), ("lib64", toolkit_lib(toolkit))):
        for entry in glob.glob(os.path.join(folder, "*")):
            link(entry, os.path.join(home, sub, os.path.basename(entry)))
    found = {}
    for name in LIBRARIES:
        files = find_library(name, toolkit)
        if files is None:
            continue
        headers, libs = files
        for header in headers:
            link(header, os.path.join(home, "include", os.path.basename(header)))
        for lib in libs:
            link(lib, os.path.join(home, "lib64", os.path.basename(lib)))
            if not os.path.lexists(os.path.join(home, "lib64", unversioned(os.path.basename(lib)))):
                link(lib, os.path.join(home, "lib64", unversioned(os.path.basename(lib))))
        found[name] = os.path.dirname(libs[0])
    return home, found


def write_home_settings(require_all=False):
    located = find_nvcc()
    if located is None:
        raise SetupError("no CUDA toolkit found (looked at $CUDA_HOME, PATH, /usr/local/cuda, /usr/local/cuda-*, "
                         "/usr/bin/nvcc)")
    nvcc, version = located
    if version[0] not in SUPPORTED_CUDA:
        raise SetupError(f"{nvcc} is CUDA {version[0]}.{version[1]}; this set-up supports CUDA 12 and 13")
    home, found = assemble_home(nvcc, version)
    if require_all and set(LIBRARIES) - set(found):
        raise SetupError(f"CUDA {version[0]}.{version[1]} at {nvcc}: no {', '.join(sorted(set(LIBRARIES) - set(found)))} "
                         "in the toolkit, the system or the nvidia-* wheels")
    for name in ("cublas", "curand"):
        if name not in found:
            raise SetupError(f"CUDA {version[0]}.{version[1]} at {nvcc}: {name} not found in the toolkit, the system "
                             "or the nvidia-* wheels (setup.sh installs the wheels)")
    env = {"nvcc_path": os.path.join(home, "bin", "nvcc"), "use_cutt": "0", "use_cutlass": "0"}
    if "nccl" in found:
        env.update(nccl_include_path=os.path.join(home, "include"), nccl_lib_path=os.path.join(home, "lib64"))
    else:
        env["use_nccl"] = "0"
    if "cudnn" not in found:
        env["conv_opt"] = "1"
    settings = {"cuda": f"{version[0]}.{version[1]}", "toolkit_nvcc": nvcc, "home": home,
                "cudnn": cudnn_version(glob.glob(os.path.join(home, "include", "cudnn*.h"))) if "cudnn" in found
                else None, "libraries": found, "env": env}
    with open(SETTINGS + ".tmp", "w") as f:
        json.dump(settings, f, indent=2)
    os.replace(SETTINGS + ".tmp", SETTINGS)
    print(f"CUDA {settings['cuda']} home {home}: " + ", ".join(f"{k} from {v}" for k, v in found.items())
          + ("" if "cudnn" in found else "; no cuDNN: Jittor's own convolutions (slower)"))
    return settings


def load_settings():
    try:
        with open(SETTINGS) as f:
            return json.load(f)
    except FileNotFoundError:
        raise SetupError(f"{SETTINGS} is missing: run `bash setup.sh` (or `install/jittor_cuda.py home`) first") from None


def import_in_proof_home(settings, home):
    """Import Jittor in a child with its own home; -> {extern: loaded}. Re-runs once after Jittor's
    "jit_utils updated, please rerun your command", which it prints when nvcc changed."""
    env = dict(os.environ, HOME=home, use_mkl="0", **settings["env"])
    code = ("import json, jittor; from jittor import compile_extern as ce; "
            f"print('EXTERNS', json.dumps({{n: getattr(ce, n, None) is not None for n in {EXTERNS!r}}}))")
    os.makedirs(home, exist_ok=True)
    log = os.path.join(home, "import.log")
    for _ in range(2):
        with open(log, "w") as f:
            done = subprocess.run([sys.executable, "-c", code], env=env, stdout=f, stderr=subprocess.STDOUT, cwd=home)
        text = open(log, errors="replace").read()
        if "please rerun your command" not in text:
            break
    found = re.search(r"^EXTERNS (.*)$", text, re.M)
    if done.returncode or not found:
        raise SetupError(f"importing Jittor with CUDA {settings['cuda']} failed (log: {log}):\n{text[-3000:]}")
    return json.loads(found.group(1))


def prove_build(home=PROOF_HOME):
    root = site_packages()
    if patch_state(root) != "patched":
        raise SetupError(f"{root}/jittor is not patched: run `python3 install/jittor_cuda.py patch` first")
    settings = load_settings()
    loaded = import_in_proof_home(settings, home)
    probe = subprocess.run([settings["env"]["nvcc_path"], "-std=c++17", "-x", "cu", "-c", PROBE, "-o",
                            os.path.join(home, "cccl_probe.o")], capture_output=True, text=True)
    rows = [("CUDA core (nvcc " + settings["cuda"] + ")", True)] + [(f"{n} extern", ok) for n, ok in loaded.items()]
    rows.append(("patched kernel constructs (cccl_probe.cu)", probe.returncode == 0))
    for name, ok in rows:
        print(f"{name:<45} {'built' if ok else 'FAILED'}")
    if probe.returncode:
        print(probe.stderr[-3000:], file=sys.stderr)
    if not all(ok for _, ok in rows):
        raise SetupError("the CUDA build is incomplete (see above)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["patch", "home", "find", "prove-build"])
    parser.add_argument("--require_all", "--require-all", action="store_true",
                        help="home: fail unless cuBLAS, cuRAND, cuDNN and NCCL are all found")
    args = parser.parse_args(argv)
    try:
        if args.command == "patch":
            apply_patch()
        elif args.command == "home":
            write_home_settings(args.require_all)
        elif args.command == "prove-build":
            prove_build()
        else:
            located = find_nvcc()
            if located is None:
                return 1
            print(located[0], "%d.%d" % located[1])
    except SetupError as e:
        print(f"install/jittor_cuda.py {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
