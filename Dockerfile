# syntax=docker/dockerfile:1
# likeness on an NVIDIA GPU workstation: the engine service, the web TUI and the terminal TUI.
#
#   docker compose up            (see compose.yaml and the README's "GPU workstation")
#
# No CUDA base image: torch's PyPI wheel (docker/image-pins.txt) brings its own CUDA runtime and
# cuDNN as nvidia-*-cu12 wheels, and the NVIDIA Container Toolkit mounts the host's driver at run
# time; an nvidia/cuda base would add a second CUDA runtime that torch never loads. The plain Python
# image's Python is the 3.11 that CI and the Modal image run.
#
# Two stages: the builder holds build tools and pip's work; the runtime image gets only the
# finished virtual environment, and runs as a non-root user.

ARG PYTHON_BASE=python:3.11-slim-bookworm

FROM ${PYTHON_BASE} AS builder
# The base image's tag pins the distribution; exact apt versions would break on every Debian
# security update, so they are not pinned here (hadolint DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY tui ./tui
COPY docker/install.sh docker/image-pins.txt ./docker/
# The same script and pins `make image-venv` and CI run, so the image and the tests cannot drift
# apart. pip's cache lives in a BuildKit cache, not in a layer: a rebuild after a code change
# reinstalls the 4 GB of torch and CUDA wheels from it instead of downloading them again.
# The dependency list and the pins go along: "Continue on Modal" builds its image from them.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/venv \
 && PYTHON=/opt/venv/bin/python STACK=image EXTRAS=cloud INSTALL_MODE=package docker/install.sh \
 && mkdir -p /opt/venv/share/likeness/docker \
 && cp pyproject.toml /opt/venv/share/likeness/ \
 && cp docker/image-pins.txt /opt/venv/share/likeness/docker/

FROM ${PYTHON_BASE} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 likeness \
 && mkdir -p /data /hf-cache \
 && chown 1000:1000 /data /hf-cache
COPY --from=builder /opt/venv /opt/venv
# LIKENESS_TOKEN_FILE is where the service keeps its generated access token (a path, not a
# secret itself; hadolint DL3064 flags the word "TOKEN"). NVIDIA_* tell the Container Toolkit to
# mount the driver's compute libraries and nvidia-smi, which a CUDA base image would have set.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LIKENESS_HOME=/data \
    HF_HOME=/hf-cache \
    LIKENESS_TOKEN_FILE=/data/service-token \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 1000:1000
WORKDIR /home/likeness
VOLUME ["/data", "/hf-cache"]
EXPOSE 8000 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
CMD ["likeness", "serve", "--host", "0.0.0.0", "--port", "8000"]
