#!/usr/bin/env bash
# One-command setup on Debian/Ubuntu: system packages, pinned Python packages, Jittor pointed at the
# system oneDNN (no download), Jittor patched for current CUDA and, where a CUDA toolkit is found, NVIDIA's
# CUDA libraries and a CUDA home for Jittor; then Jittor's kernel cache warmed. Safe to re-run.
#   PYTHON=/path/to/python bash setup.sh    # to install into another interpreter or venv
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

# OpenMPI: mpirun and Jittor's MPI ops (mpicc). oneDNN: Jittor's fast CPU convolutions. patch: install/.
missing=()
for pkg in openmpi-bin libopenmpi-dev libdnnl-dev patch; do
  # `dpkg -s` also succeeds for removed packages whose config files remain: check the status.
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

"$PYTHON" -m pip install -q --disable-pip-version-check -r requirements.txt

# Jittor downloads oneDNN 2.2 on first import unless it finds lib/libmkldnn.so in this folder;
# Debian's oneDNN 2.6 works in its place (its include and lib paths variables do not).
arch=$(uname -m)
suffix=""; [ "$arch" = "aarch64" ] && suffix="_aarch64"
mkl_dir="$HOME/.cache/jittor/mkl/dnnl_lnx_2.2.0_cpu_gomp$suffix"
if [ ! -e "$mkl_dir/lib/libmkldnn.so" ]; then
  libdnnl=$(ls /usr/lib/*/libdnnl.so 2>/dev/null | head -n 1)
  [ -n "$libdnnl" ] || { echo "setup.sh: libdnnl.so not found after installing libdnnl-dev" >&2; exit 1; }
  mkdir -p "$mkl_dir/lib"
  ln -sfn /usr/include/oneapi/dnnl "$mkl_dir/include"
  ln -sf "$libdnnl" "$mkl_dir/lib/libmkldnn.so"
fi

# Jittor 1.3.11 cannot build with CUDA 13 / cuDNN 9 as released: apply the reviewed patch (CUDA code only).
"$PYTHON" install/jittor_cuda.py patch
# A CUDA toolkit (GPU or not): the CUDA home Jittor uses, after installing NVIDIA's library wheels for the
# toolkit's major version if the toolkit, the system or earlier wheels lack one of them.
if toolkit=$("$PYTHON" install/jittor_cuda.py find); then
  if ! "$PYTHON" install/jittor_cuda.py home --require-all 2>/dev/null; then
    cuda_wheels="install/requirements-cuda$(echo "$toolkit" | awk '{print $2}' | cut -d. -f1).txt"
    [ -f "$cuda_wheels" ] && "$PYTHON" -m pip install -q --disable-pip-version-check -r "$cuda_wheels"
    "$PYTHON" install/jittor_cuda.py home
  fi
fi

"$PYTHON" install/warmup.py
