#!/usr/bin/env bash
# Build deploy-eval's base image offline: Debian bookworm (minbase) with Python 3.11, venv and
# CA certificates, made by debootstrap from Debian's package mirror and loaded with
# `docker import`, because no image registry is reachable. Real users may pass any python:3.11
# base (or a CUDA one) to the backend Dockerfiles instead: `--build-arg BASE=...`.
#   docker/base.sh [amd64|arm64]   -> image deploy-eval/base:bookworm-<arch>
# arm64 runs under qemu-user-static (binfmt_misc with the F flag: see docker/qemu.sh).
set -euo pipefail
arch=${1:-amd64}
sock=${DEPLOY_EVAL_DOCKER_SOCK:-/run/deploy-eval/docker.sock}
tag=deploy-eval/base:bookworm-$arch
export DOCKER_HOST=unix://$sock
if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; exit 0; fi
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (Debian: apt-get install debootstrap)" >&2; exit 1; }
mirror=${DEBIAN_MIRROR:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
[ -n "$mirror" ] || mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
root=$(mktemp -d /var/tmp/deploy-eval-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --arch="$arch" --include=python3,python3-venv,python3-pip,ca-certificates,libgomp1 \
  bookworm "$root" "${mirror:-http://deb.debian.org/debian}" >&2
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import --platform "linux/$arch" - "$tag" >/dev/null
echo "$tag"
