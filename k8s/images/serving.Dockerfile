# syntax=docker/dockerfile:1.7
#
# Serving image for all three services (encoder, scorer, ranker): `xdrec serve <component>`.
# No PyTorch: the base dependencies of pyproject.toml are what serving needs (ONNX Runtime,
# grpcio, numpy, ...); torch lives in the `train` extra and never gets in here.
#
#   docker build -f k8s/images/serving.Dockerfile -t xdrec-serving:0.1.0 .
#   docker build -f k8s/images/serving.Dockerfile --build-arg VARIANT=gpu -t xdrec-serving:0.1.0-gpu .
#
# `make images` builds it with podman (k8s/tools/images.py), on a locally made Debian base when
# no registry is reachable (PYTHON_IMAGE=localhost/xdrec-base:bookworm, k8s/images/make_base.sh).
# Keep the install steps as plain RUN lines: tests/k8s/test_images.py replays them in a virtual
# environment on machines without podman.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# cpu: the CPU-only `onnxruntime` package (what CPU nodes need; a third of onnxruntime-gpu's size).
# gpu: `onnxruntime-gpu` plus the CUDA and cuDNN runtime libraries as pip wheels, so the CUDA
#      provider loads on GPU nodes without a CUDA base image.
ARG VARIANT=cpu
# Build-time only, for machines whose package index needs a private CA or a local wheelhouse
# (empty: pip's defaults). Nothing of them ends up in the runtime stage.
ARG PIP_CERT=
ARG PIP_FIND_LINKS=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/xdrec
ENV PATH=/opt/xdrec/bin:$PATH
WORKDIR /src
# Dependencies first, in their own layer: a code change rebuilds only the last install step.
# pyproject.toml names onnxruntime-gpu (the package that serves both CPU and GPU nodes); the
# variant picks the ONNX Runtime package, every other dependency comes from pyproject.toml, all
# pinned by constraints.txt.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if not d.startswith('onnxruntime')))" > /tmp/requirements.txt \
 && if [ "$VARIANT" = "gpu" ]; then ort="onnxruntime-gpu[cuda,cudnn]"; else ort="onnxruntime"; fi \
 && pip install -c constraints.txt -r /tmp/requirements.txt "$ort"
# The project without dependencies (non-editable, so /src is not needed at run time). The context
# is filtered by serving.Dockerfile.dockerignore (an allow-list of the packages).
COPY . ./
RUN pip install --no-deps .
# Guard: serving must stay torch-free (a dependency pulling torch in would add ~1 GB).
RUN python -c "import importlib.util as u, sys; sys.exit('torch must not be installed' if u.find_spec('torch') else 0)"
RUN xdrec --help > /dev/null
# Nothing the runtime does not need: pip and setuptools (no installs at run time), test suites
# shipped inside wheels.
RUN pip uninstall -y -q pip setuptools \
 && find /opt/xdrec -depth -type d \( -name tests -o -name testing \) -path '*/site-packages/numpy/*' -exec rm -rf {} +

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
