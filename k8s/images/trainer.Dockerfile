# syntax=docker/dockerfile:1.7
#
# Training + export image: `xdrec train ...`, `xdrec export ...` on a GPU node (or CPU).
#
#   docker build -f k8s/images/trainer.Dockerfile -t xdrec-trainer:0.1.0 .
#   docker run --gpus all -v $PWD/artifacts:/work/artifacts xdrec-trainer:0.1.0 train --help
#
# constraints.txt pins torch to the CPU build (torch==2.13.0+cpu) that laptops and CI install.
# This image takes the CUDA build of the same torch version from the PyTorch index instead and
# keeps every other pin. The CUDA runtime base provides the driver hooks of the NVIDIA container
# toolkit; torch's CUDA wheels bring their own CUDA/cuDNN user-space libraries.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04

FROM ${CUDA_IMAGE}
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Python 3.11 (the project's version; Ubuntu 22.04 ships 3.10) from the deadsnakes archive.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gpg gpg-agent software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && apt-get purge -y software-properties-common gpg-agent \
 && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/xdrec
ENV PATH=/opt/xdrec/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY services ./services
COPY cli ./cli
COPY trainer ./trainer
COPY export ./export
RUN grep -v '^torch==' constraints.txt > /tmp/constraints-cuda.txt \
 && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && pip install -c /tmp/constraints-cuda.txt ".[train]" \
 && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
 && xdrec --help > /dev/null

RUN groupadd --system --gid 10001 xdrec \
 && useradd --system --uid 10001 --gid 10001 --home-dir /work --create-home --shell /usr/sbin/nologin xdrec
WORKDIR /work
USER 10001:10001
ENTRYPOINT ["xdrec"]
CMD ["--help"]
