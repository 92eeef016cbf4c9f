"""Choosing ONNX Runtime execution providers without tripping over missing CUDA libraries.

Why probe first: ``onnxruntime-gpu`` lists CUDAExecutionProvider on every machine, and asking for
it where the driver or the CUDA libraries are missing makes ONNX Runtime log errors (and, on some
versions, fail the session). So the scorer asks for a GPU provider only after checking, with
ctypes, that (1) the driver ``libcuda.so.1`` loads and reports at least one device and (2) ORT's
own provider library loads, i.e. its CUDA dependencies (cuBLAS, cuRAND, cudart) resolve, after
preloading them from the ``nvidia-*`` wheels when those are installed. After the
session is created, ``session.get_providers()`` tells what ORT really uses; that is what is logged
and reported in ListModels.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
from dataclasses import dataclass
from functools import cache

import onnxruntime as ort

log = logging.getLogger("xdrec.scorer.providers")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
_PROVIDER_LIBS = {
    CUDA: "libonnxruntime_providers_cuda.so",
    TENSORRT: "libonnxruntime_providers_tensorrt.so",
}


@dataclass(frozen=True)
class ProbeResult:
    """Whether a GPU provider can be requested, and why not when it cannot."""

    usable: bool
    reason: str


@cache
def cuda_device_count() -> tuple[int, str]:
    """Number of CUDA devices the driver reports (0 with a reason when there is no usable driver)."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return 0, f"CUDA driver not loadable ({exc})"
    result = driver.cuInit(0)
    if result != 0:
        return 0, f"cuInit failed with CUDA error {result}"
    count = ctypes.c_int(0)
    result = driver.cuDeviceGetCount(ctypes.byref(count))
    if result != 0:
        return 0, f"cuDeviceGetCount failed with CUDA error {result}"
    return count.value, f"{count.value} CUDA device(s)"


@cache
def preload_cuda_libraries() -> None:
    """Loads CUDA/cuDNN from the ``nvidia-*`` pip wheels when present (the GPU image has them).

    The loader does not search site-packages, so without this the provider library would not
    find cuBLAS & co. ``onnxruntime.preload_dlls`` prints to stdout; that text goes to the debug log.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            preload(cuda=True, cudnn=True)
    except Exception as exc:  # best effort: the probe below decides
        log.debug("preloading CUDA libraries failed", extra={"error": str(exc)})
    if captured.getvalue().strip():
        log.debug("onnxruntime.preload_dlls", extra={"output": captured.getvalue().strip()})


@cache
def probe(provider: str) -> ProbeResult:
    """Checks that ``provider`` can be requested from ONNX Runtime on this machine."""
    if provider == CPU:
        return ProbeResult(True, "always available")
    if provider not in ort.get_available_providers():
        return ProbeResult(False, "not built into this onnxruntime package")
    devices, reason = cuda_device_count()
    if devices == 0:
        return ProbeResult(False, reason)
    preload_cuda_libraries()
    capi = os.path.join(os.path.dirname(ort.__file__), "capi")
    try:
        # ORT loads the shared bridge globally before a provider library; do the same.
        ctypes.CDLL(
            os.path.join(capi, "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL
        )
        ctypes.CDLL(os.path.join(capi, _PROVIDER_LIBS[provider]))
    except OSError as exc:
        message = str(exc)
        if "cannot open shared object file" in message:
            return ProbeResult(False, f"provider library dependencies missing ({message})")
        # Anything else (e.g. a symbol resolved only inside ORT) is inconclusive: let ORT try,
        # the provider list of the session is verified afterwards.
        log.debug("provider probe inconclusive", extra={"provider": provider, "error": message})
    return ProbeResult(True, reason)


def parse_providers(spec: str) -> list[str]:
    """Turns ``"cuda,cpu"`` / ``"auto"`` into ORT provider names, in priority order."""
    spec = spec.strip().lower()
    if spec in ("", "auto"):
        return [CUDA, CPU]
    names = []
    for token in spec.split(","):
        token = token.strip()
        if token not in _ALIASES:
            raise ValueError(
                f"unknown execution provider '{token}' (choose from tensorrt, cuda, cpu)"
            )
        names.append(_ALIASES[token])
    return names


def resolve_providers(spec: str, device_id: int = 0) -> list[str | tuple[str, dict[str, str]]]:
    """The providers to request: those in ``spec`` that pass the probe, CPU always last."""
    chosen: list[str | tuple[str, dict[str, str]]] = []
    for name in parse_providers(spec):
        if name == CPU:
            continue
        result = probe(name)
        if result.usable:
            chosen.append((name, {"device_id": str(device_id)}))
        else:
            log.info(
                "execution provider skipped", extra={"provider": name, "reason": result.reason}
            )
    chosen.append(CPU)
    return chosen
