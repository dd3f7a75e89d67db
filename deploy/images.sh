#!/usr/bin/env bash
# `make images`: the PostLens images built with podman where no image registry is reachable (this machine).
# Once: podman, runc and debootstrap from Debian, and podman's system-wide settings this machine needs
# (default_ulimits = []: raising RLIMIT_NPROC is not allowed; runc: crun refuses the hybrid cgroup layout). Then a
# Debian 12 base by debootstrap + podman import, the Python base on it (deploy/docker/base/), and the images on
# that base, worker first. Builds use the host's network (PyPI, Debian) and the host's uv cache (`make setup` fills
# it): mounted as an overlay (the builds' writes to it are discarded), so no wheel is downloaded twice.
set -euo pipefail
cd "$(dirname "$0")/.."
images="${IMAGES:-worker triton-cpu trainer}"   # triton.Dockerfile, the GPU one, needs NVIDIA's base (not reachable here)
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap
fi
if ! grep -qs '^default_ulimits = \[\]' /etc/containers/containers.conf; then
  mkdir -p /etc/containers
  printf '%s\n' '# PostLens (deploy/images.sh): RLIMIT_NPROC cannot be raised here; crun refuses the hybrid cgroups.' \
    '[containers]' 'default_ulimits = []' '' '[engine]' 'runtime = "runc"' >/etc/containers/containers.conf
fi
timed() { local start; start=$(date +%s); "$@"; echo "$* — $(( $(date +%s) - start )) s" >&2; }
if ! podman image exists localhost/debian:bookworm; then
  root="$(mktemp -d)"
  timed debootstrap --variant=minbase bookworm "$root" >/dev/null
  tar -C "$root" -c . | timed podman import - localhost/debian:bookworm >/dev/null
  rm -rf "$root"
fi
context="$(mktemp -d)"; mkdir "$context/ca"
cp /usr/local/share/ca-certificates/*.crt "$context/ca/" 2>/dev/null || true   # the host's extra CAs, if any
timed podman build --network host -f deploy/docker/base/debian-python.Dockerfile -t localhost/postlens-python:3.11-bookworm "$context"
rm -rf "$context"
uv_cache="${UV_CACHE_DIR:-$HOME/.cache/uv}"
cache_mount=()
if [ -d "$uv_cache" ]; then cache_mount=(-v "$uv_cache:/uv-cache:O" --build-arg UV_CACHE_DIR=/uv-cache); fi
for image in $images; do
  timed podman build --network host --build-arg PYTHON_IMAGE=localhost/postlens-python:3.11-bookworm \
    "${cache_mount[@]}" -f "deploy/docker/$image.Dockerfile" -t "localhost/postlens-$image:local" .
done
# A rebuild leaves the image it replaced untagged: removed, or every source change keeps gigabytes (the trainer's
# 6.9 GB). Layers the new images still use stay, so the next build's cache stays too.
podman image prune -f >/dev/null
