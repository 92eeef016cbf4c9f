# syntax=docker/dockerfile:1.7
#
# Serving image for all three services (encoder, scorer, ranker): `xdrec serve <component>`.
# No PyTorch: the base dependencies of pyproject.toml are what serving needs (onnxruntime-gpu,
# grpcio, numpy, ...); torch lives in the `train` extra and never gets in here.
#
#   docker build -f k8s/images/serving.Dockerfile -t xdrec-serving:0.1.0 .
#   docker build -f k8s/images/serving.Dockerfile --build-arg VARIANT=gpu -t xdrec-serving:0.1.0-gpu .
#
# tests/k8s/test_images.py runs this file's build-stage RUN lines in a fresh virtual environment
# (no Docker engine on the test machines), so keep the install steps as plain RUN lines.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# cpu: onnxruntime-gpu alone (CPU provider; what CPU nodes need).
# gpu: plus the CUDA and cuDNN runtime libraries as pip wheels, so the CUDA provider loads
#      on GPU nodes without a CUDA base image.
ARG VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/xdrec
ENV PATH=/opt/xdrec/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY services ./services
COPY cli ./cli
COPY trainer ./trainer
COPY export ./export
# Pinned versions from constraints.txt; a non-editable install, so /src is not needed at run time.
RUN pip install -c constraints.txt .
RUN if [ "$VARIANT" = "gpu" ]; then pip install -c constraints.txt "onnxruntime-gpu[cuda,cudnn]"; fi
# Guard: serving must stay torch-free (a dependency pulling torch in would add ~1 GB).
RUN python -c "import importlib.util as u, sys; sys.exit('torch must not be installed' if u.find_spec('torch') else 0)"
RUN xdrec --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="xdrec-serving" \
      org.opencontainers.image.description="xdrec encoder, scorer and ranker gRPC services"
RUN groupadd --system --gid 10001 xdrec \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin xdrec
COPY --from=build /opt/xdrec /opt/xdrec
# gpu variant: make the pip-installed CUDA/cuDNN libraries (site-packages/nvidia/*/lib) visible to
# the dynamic loader, so ONNX Runtime's CUDA provider resolves them without LD_LIBRARY_PATH.
ARG VARIANT=cpu
RUN if [ "$VARIANT" = "gpu" ]; then \
      find /opt/xdrec/lib -type d -path '*/site-packages/nvidia/*/lib' > /etc/ld.so.conf.d/xdrec-nvidia.conf \
      && ldconfig; \
    fi
# XDREC_HOST: the services bind loopback unless told otherwise; a container must listen on its
# own interface (its network namespace is the boundary; the chart also sets it).
ENV PATH=/opt/xdrec/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDREC_HOST=0.0.0.0
WORKDIR /tmp
# Numeric uid, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
# grpc: encoder 50051, scorer 50052, ranker 50053; Prometheus metrics (chart default) 9090.
EXPOSE 50051 50052 50053 9090
# Exec form: xdrec is PID 1 and receives SIGTERM directly (graceful drain), no shell involved.
ENTRYPOINT ["xdrec"]
CMD ["--help"]
