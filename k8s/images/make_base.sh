#!/usr/bin/env bash
# Makes the local Python base image (a stand-in for python:3.11-slim-bookworm) when no image
# registry is reachable: a minimal Debian bookworm (mmdebstrap --variant=minbase) with python3,
# python3-venv and `python` on PATH, from the apt sources this machine already uses, imported
# into podman's local storage.
#
#   k8s/images/make_base.sh [IMAGE]          # default IMAGE: localhost/xdrec-base:bookworm
#   FORCE=1 k8s/images/make_base.sh          # rebuild even if the image exists
#
# The image is reused when it already exists (a second run costs nothing). Needs root (or a
# working unshare mode), mmdebstrap and podman: .ci/run installs them on a fresh Debian machine.
#
# What keeps it small (the serving image budget is 350 MB): minbase (Priority: required only, no
# recommends), no documentation, man pages, locales or apt lists, no bytecode caches.
set -euo pipefail

IMAGE="${1:-localhost/xdrec-base:bookworm}"
SUITE="${SUITE:-bookworm}"

if [[ -z "${FORCE:-}" ]] && podman image exists "$IMAGE"; then
  echo "make_base: $IMAGE exists, reused (FORCE=1 rebuilds)"
  exit 0
fi

# The machine's own Debian sources (a mirror or proxy that is reachable from here). Only the
# files that point at a Debian archive: third-party repositories need keys the chroot lacks.
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [[ -f "$f" ]] && grep -Eq '^[^#]*(/debian|/debian-security)([[:space:]/]|$)' "$f" && sources+=("$f")
done
if [[ ${#sources[@]} -eq 0 ]]; then
  sources=("http://deb.debian.org/debian")  # mmdebstrap adds updates and security for stable
fi

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
start=$SECONDS
echo "make_base: mmdebstrap $SUITE (minbase + python3, python3-venv) from ${sources[*]}"
mmdebstrap --quiet --variant=minbase \
  --include=python3,python3-venv,python-is-python3 \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --customize-hook='find "$1/usr/lib/python3"* -name __pycache__ -type d -prune -exec rm -rf {} +' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
  "$SUITE" "$workdir/rootfs.tar" "${sources[@]}"
podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$workdir/rootfs.tar" "$IMAGE" > /dev/null
echo "make_base: $IMAGE built in $((SECONDS - start)) s, $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
