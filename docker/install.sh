#!/usr/bin/env bash
# The one place that installs likeness and its dependencies into a Python environment.
# `make install`, `make image-venv` (and so CI) and the Docker image all run it, so they cannot drift apart.
#
#   PYTHON       the environment's python (default: python3)
#   STACK        cpu (default): torch 2.13's CPU build, for development and the main test suite;
#                image: the Docker image's GPU stack, torch + xformers + bitsandbytes exactly as
#                docker/image-pins.txt pins them, from PyPI
#   WHEELHOUSE   STACK=image only: where the pinned stack's wheels are kept between installs
#                (default: likeness-image-wheels in pip's cache folder)
#   TORCH_SPEC   STACK=cpu only: which torch to put in first (default torch==2.13.0)
#   EXTRAS       extras of the likeness package to install with it (default: test)
#   TEST_EXTRAS  extras layered on top afterwards, held to the versions already installed: the test
#                tools go into the image's environment without moving anything the image has
#                (installed editable: the tests run the checkout)
#   INSTALL_MODE editable (default, for development) or package (the image: no source tree needed)
set -euo pipefail

PYTHON=${PYTHON:-python3}
STACK=${STACK:-cpu}
EXTRAS=${EXTRAS-test}
here=$(cd "$(dirname "$0")/.." && pwd)

pip() { "$PYTHON" -m pip --disable-pip-version-check "$@"; }

pip install --quiet --upgrade pip "setuptools<81" wheel
# torch first: an unpinned torch pulled in by another package would resolve to a multi-GB CUDA
# build; with the wanted build already present, later requirements are satisfied.
case "$STACK" in
    cpu) pip install --quiet "${TORCH_SPEC:-torch==2.13.0}" ;;
    image)
        # The 4 GB of torch and CUDA wheels are kept as files: pip's HTTP cache keeps a download
        # only when the server says it may, and a proxy in the way can strip that. `pip download`
        # fetches only what the folder lacks; the install then reads nothing but the folder.
        wheels=${WHEELHOUSE:-${PIP_CACHE_DIR:-$HOME/.cache/pip}/likeness-image-wheels}
        pip download --quiet -r "$here/docker/image-pins.txt" -d "$wheels"
        pip install --quiet --no-index --find-links "$wheels" -r "$here/docker/image-pins.txt"
        # A mirror could offer a CPU build under the same version number; the image must have CUDA's.
        want=$(sed -n 's/^# cuda: *//p' "$here/docker/image-pins.txt")
        got=$("$PYTHON" -c "import torch; print(torch.version.cuda)")
        if [ "$got" != "$want" ]; then
            echo "install.sh: torch's CUDA build is $got, docker/image-pins.txt wants $want" >&2
            exit 1
        fi ;;
    *) echo "install.sh: STACK=$STACK: use cpu or image" >&2; exit 2 ;;
esac
if [ "${INSTALL_MODE:-editable}" = package ]; then
    pip install --quiet --no-cache-dir "$here${EXTRAS:+[$EXTRAS]}"
else
    pip install --quiet -e "$here${EXTRAS:+[$EXTRAS]}"
fi
# face_recognition declares a dependency on `dlib`, which would compile from source for many minutes;
# the dlib-bin wheel installed above provides the same module.
pip install --quiet --no-deps "face-recognition==1.3.0"
if [ -n "${TEST_EXTRAS:-}" ]; then
    # Everything installed so far becomes a constraint: a test tool that wants another version of a
    # runtime package fails here, loudly, instead of testing an environment the image does not have.
    held=$(mktemp)
    trap 'rm -f "$held"' EXIT
    pip freeze --exclude-editable > "$held"
    pip install --quiet -c "$held" -e "$here[$TEST_EXTRAS]"
fi
