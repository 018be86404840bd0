#!/usr/bin/env bash
# The one place that installs likeness and its dependencies into a Python environment.
# `make install` (and so CI) and the Docker image both run it, so they cannot drift apart.
#
#   PYTHON       the environment's python (default: python3)
#   TORCH_SPEC   which torch to put in first (default torch==2.13.0, the CPU build on this
#                project's CI machines; the image passes a CUDA build and its index URL)
#   TORCH_INDEX  optional --index-url for torch (e.g. https://download.pytorch.org/whl/cu124)
#   EXTRAS       extras of the likeness package to install (default: test)
#   XFORMERS_SPEC optional xformers release built for exactly that torch (the image sets it)
#   INSTALL_MODE editable (default, for development) or package (the image: no source tree needed)
set -euo pipefail

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-test}
here=$(cd "$(dirname "$0")/.." && pwd)

pip() { "$PYTHON" -m pip --disable-pip-version-check "$@"; }

pip install --quiet --upgrade pip "setuptools<81" wheel
# torch first and alone: an unpinned torch pulled in by another package would resolve to a
# multi-GB CUDA build; with the wanted build already present, later requirements are satisfied.
if [ -n "${TORCH_INDEX:-}" ]; then
    pip install --quiet "$TORCH_SPEC" --index-url "$TORCH_INDEX"
else
    pip install --quiet "$TORCH_SPEC"
fi
if [ -n "${XFORMERS_SPEC:-}" ]; then
    pip install --quiet "$XFORMERS_SPEC" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
fi
if [ "${INSTALL_MODE:-editable}" = package ]; then
    pip install --quiet --no-cache-dir "$here${EXTRAS:+[$EXTRAS]}"
else
    pip install --quiet -e "$here${EXTRAS:+[$EXTRAS]}"
fi
# face_recognition declares a dependency on `dlib`, which would compile from source for many minutes;
# the dlib-bin wheel installed above provides the same module.
pip install --quiet --no-deps "face-recognition==1.3.0"
