"""Builds the container images with podman (``make images``), from the Dockerfiles as shipped.

Why a tool around ``podman build``: the project's machines reach package registries but no image
registry, and their podman needs settings that differ from its defaults. So this script

- uses ``python:3.11-slim-bookworm`` from the registry when it can be pulled, and otherwise the
  local base that ``k8s/images/make_base.sh`` makes with mmdebstrap (reused once it exists);
- points ``CONTAINERS_CONF`` at ``k8s/images/podman-containers.conf`` (runc, explicit ulimits);
- builds with ``--network host`` (pip reaches the package index as the host does) and, when the
  host's pip needs them, mounts its CA bundle and local wheelhouse read-only for the build only
  (``PIP_CERT`` / ``PIP_FIND_LINKS`` build arguments; nothing of them lands in an image);
- passes the ``.dockerignore`` next to each Dockerfile with ``--ignorefile`` (podman 4.3 does not
  look for it there as BuildKit does).

Usage::

    python k8s/tools/images.py build                       # serving (CPU) + trainer (CPU)
    python k8s/tools/images.py build serving serving-gpu   # chosen images
    python k8s/tools/images.py base                        # only the local base image
    python k8s/tools/images.py list                        # the images and their build arguments
"""

from __future__ import annotations

import argparse
import configparser
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO_ROOT / "k8s" / "images"
PODMAN_CONF = IMAGES_DIR / "podman-containers.conf"
MAKE_BASE = IMAGES_DIR / "make_base.sh"
REGISTRY_PYTHON_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
LOCAL_BASE_IMAGE = "localhost/xdrec-base:bookworm"
# Where the host's CA bundle appears inside a build container (a build-time volume only).
BUILD_CA_PATH = "/run/xdrec-build/ca-certificates.crt"


def project_version() -> str:
    with (REPO_ROOT / "pyproject.toml").open("rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


@dataclass(frozen=True)
class ImageSpec:
    """One image ``make images`` can build: which Dockerfile, which build arguments, which tag."""

    key: str
    dockerfile: str  # file name in k8s/images
    repository: str
    tag_suffix: str  # appended to the project version: "", "-gpu", "-cpu"
    build_args: Mapping[str, str] = field(default_factory=dict)
    base_arg: str = "PYTHON_IMAGE"  # the ARG that names the base image

    def tag(self, version: str) -> str:
        return f"{self.repository}:{version}{self.tag_suffix}"


IMAGE_SPECS: dict[str, ImageSpec] = {
    spec.key: spec
    for spec in (
        ImageSpec(
            "serving", "serving.Dockerfile", "localhost/xdrec-serving", "", {"VARIANT": "cpu"}
        ),
        ImageSpec(
            "serving-gpu",
            "serving.Dockerfile",
            "localhost/xdrec-serving",
            "-gpu",
            {"VARIANT": "gpu"},
        ),
        # CPU trainer: no CUDA base (none can be pulled here), the CPU torch pinned in
        # constraints.txt. The CUDA variant is the Dockerfile's default for real registries.
        ImageSpec(
            "trainer",
            "trainer.Dockerfile",
            "localhost/xdrec-trainer",
            "-cpu",
            {"TORCH_INDEX_URL": ""},
            base_arg="BASE_IMAGE",
        ),
    )
}
DEFAULT_IMAGES = ("serving", "trainer")


def podman_env() -> dict[str, str]:
    """The environment for every podman call: the project's containers.conf unless one is set."""
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(PODMAN_CONF))
    return env


def podman(*args: str, check: bool = True, timeout: float | None = None, quiet: bool = False):
    """Runs podman; output goes to our stdout unless ``quiet`` (then it is captured)."""
    return subprocess.run(
        ["podman", *args],
        env=podman_env(),
        check=check,
        timeout=timeout,
        text=True,
        capture_output=quiet,
    )


def image_exists(image: str) -> bool:
    return podman("image", "exists", image, check=False, quiet=True).returncode == 0


def image_id(image: str) -> str | None:
    proc = podman("image", "inspect", "--format", "{{.Id}}", image, check=False, quiet=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def image_size(image: str) -> int:
    out = podman("image", "inspect", "--format", "{{.Size}}", image, quiet=True).stdout
    return int(out.strip())


def ensure_base(python_image: str | None = None) -> str:
    """The base image to build on: the given one, the registry's, or the local mmdebstrap base."""
    if python_image:
        return python_image
    if image_exists(REGISTRY_PYTHON_IMAGE):
        return REGISTRY_PYTHON_IMAGE
    pulled = podman("pull", "-q", REGISTRY_PYTHON_IMAGE, check=False, quiet=True, timeout=120)
    if pulled.returncode == 0:
        return REGISTRY_PYTHON_IMAGE
    print(f"images: {REGISTRY_PYTHON_IMAGE} cannot be pulled here; using {LOCAL_BASE_IMAGE}")
    subprocess.run([str(MAKE_BASE), LOCAL_BASE_IMAGE], env=podman_env(), check=True)
    return LOCAL_BASE_IMAGE


def _host_pip_setting(env_name: str, config_key: str) -> str:
    """A pip setting of this host: the environment variable, else the pip configuration files."""
    if os.environ.get(env_name):
        return os.environ[env_name]
    parser = configparser.ConfigParser()
    parser.read(
        ["/etc/pip.conf", Path.home() / ".config/pip/pip.conf", Path.home() / ".pip/pip.conf"]
    )
    return parser.get("global", config_key, fallback="").strip()


def host_build_inputs() -> tuple[list[str], dict[str, str]]:
    """Volumes and build arguments that let pip in the build behave as pip on this host."""
    volumes: list[str] = []
    args: dict[str, str] = {}
    cert = _host_pip_setting("PIP_CERT", "cert")
    if cert and Path(cert).is_file():
        volumes.append(f"{Path(cert).resolve()}:{BUILD_CA_PATH}:ro")
        args["PIP_CERT"] = BUILD_CA_PATH
    links = [
        p for p in _host_pip_setting("PIP_FIND_LINKS", "find-links").split() if Path(p).is_dir()
    ]
    if links:
        volumes += [f"{p}:{p}:ro" for p in links]
        args["PIP_FIND_LINKS"] = " ".join(links)
    return volumes, args


def build_command(spec: ImageSpec, base: str, version: str) -> list[str]:
    volumes, host_args = host_build_inputs()
    dockerfile = IMAGES_DIR / spec.dockerfile
    argv = [
        "build",
        "--network",
        "host",
        "--file",
        str(dockerfile),
        "--ignorefile",
        str(dockerfile.with_name(dockerfile.name + ".dockerignore")),
        "--tag",
        spec.tag(version),
    ]
    for volume in volumes:
        argv += ["--volume", volume]
    for name, value in {spec.base_arg: base, **host_args, **spec.build_args}.items():
        argv += ["--build-arg", f"{name}={value}"]
    return [*argv, str(REPO_ROOT)]


def build(keys: Sequence[str], python_image: str | None = None) -> dict[str, dict[str, object]]:
    """Builds the images; returns {key: {tag, seconds, bytes}} and prints a summary line each."""
    version = project_version()
    started = time.monotonic()
    base = ensure_base(python_image)
    print(f"images: base {base} ready in {time.monotonic() - started:.0f} s", flush=True)
    report: dict[str, dict[str, object]] = {}
    for key in keys:
        spec = IMAGE_SPECS[key]
        argv = build_command(spec, base, version)
        print(f"images: podman {' '.join(argv)}", flush=True)
        previous = image_id(spec.tag(version))
        t0 = time.monotonic()
        podman(*argv)
        seconds = time.monotonic() - t0
        if previous and previous != image_id(spec.tag(version)):
            # The image this build replaced lost its tag: remove it, or every rebuild on a CI
            # machine leaves one more untagged copy (2.4 GB for the trainer). Fails harmlessly
            # while a container still uses it.
            podman("rmi", previous, check=False, quiet=True)
        size = image_size(spec.tag(version))
        report[key] = {"tag": spec.tag(version), "seconds": round(seconds, 1), "bytes": size}
        print(
            f"images: {spec.tag(version)} built in {seconds:.0f} s, {size / 1e6:.0f} MB", flush=True
        )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build images (default: serving and trainer, CPU)")
    p_build.add_argument(
        "images", nargs="*", metavar="IMAGE", help=f"one of {', '.join(IMAGE_SPECS)}"
    )
    p_build.add_argument(
        "--python-image", help="base image to build on (default: registry, else the local base)"
    )
    sub.add_parser("base", help="make (or reuse) the local mmdebstrap base image")
    sub.add_parser("list", help="the images this tool builds")
    args = parser.parse_args(argv)
    unknown = sorted(set(getattr(args, "images", [])) - set(IMAGE_SPECS))
    if unknown:
        parser.error(f"unknown image(s) {', '.join(unknown)}: choose from {', '.join(IMAGE_SPECS)}")
    try:
        if args.command == "build":
            build(args.images or DEFAULT_IMAGES, args.python_image)
        elif args.command == "base":
            subprocess.run([str(MAKE_BASE), LOCAL_BASE_IMAGE], env=podman_env(), check=True)
        else:
            for spec in IMAGE_SPECS.values():
                print(f"{spec.key:12} {spec.tag(project_version()):40} {dict(spec.build_args)}")
    except FileNotFoundError as exc:
        print(f"images: {exc.filename} not found: install podman and mmdebstrap", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"images: {' '.join(map(str, exc.cmd))} failed ({exc.returncode})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
