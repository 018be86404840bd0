# likeness on an NVIDIA GPU workstation: the engine service, the web TUI and the terminal TUI.
#
#   docker compose up            (see compose.yaml and the README's "GPU workstation")
#
# Two stages: the builder holds build tools and pip's work; the runtime image gets only the
# finished virtual environment on top of the CUDA runtime, and runs as a non-root user.

ARG CUDA_BASE=nvidia/cuda:12.6.3-runtime-ubuntu24.04

FROM ${CUDA_BASE} AS builder
# The base image's tag pins the distribution; exact apt versions would break on every Ubuntu
# security update, so they are not pinned here (hadolint DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
# torch and xformers must match exactly: each xformers wheel is built against one torch release.
ARG TORCH_SPEC="torch==2.5.1"
ARG XFORMERS_SPEC="xformers==0.0.28.post3"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY tui ./tui
COPY docker/install.sh ./docker/install.sh
# The same script `make install` and CI run, so the image and the tests cannot drift apart.
RUN python3 -m venv /opt/venv \
 && PYTHON=/opt/venv/bin/python TORCH_SPEC="$TORCH_SPEC" TORCH_INDEX="$TORCH_INDEX" \
    XFORMERS_SPEC="$XFORMERS_SPEC" EXTRAS="" INSTALL_MODE=package docker/install.sh

FROM ${CUDA_BASE} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && (userdel --remove ubuntu 2>/dev/null || true) \
 && useradd --create-home --uid 1000 likeness \
 && mkdir -p /data /hf-cache \
 && chown 1000:1000 /data /hf-cache
COPY --from=builder /opt/venv /opt/venv
# LIKENESS_TOKEN_FILE is where the service keeps its generated access token (a path, not a
# secret itself; hadolint DL3064 flags the word "TOKEN").
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LIKENESS_HOME=/data \
    HF_HOME=/hf-cache \
    LIKENESS_TOKEN_FILE=/data/service-token
USER 1000:1000
WORKDIR /home/likeness
VOLUME ["/data", "/hf-cache"]
EXPOSE 8000 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
CMD ["likeness", "serve", "--host", "0.0.0.0", "--port", "8000"]
