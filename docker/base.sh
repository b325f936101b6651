#!/usr/bin/env bash
# Build deploy-eval's base image offline: Debian bookworm (minbase) with Python 3.11, venv and
# CA certificates, made by debootstrap from Debian's package mirror and loaded with
# `docker import`, because no image registry is reachable. Real users may pass any python:3.11
# base (or a CUDA one) to the backend Dockerfiles instead: `--build-arg BASE=...`.
#   docker/base.sh [amd64|arm64] [MIRROR_URL]   -> image deploy-eval/base:bookworm-<arch>
# The Debian mirror is the argument, else $DEBIAN_MIRROR, else the first one this machine's own
# apt configuration names (docker/mirror.sh; so it works behind a local mirror); the repo names no host.
# arm64 runs under qemu-user-static (binfmt_misc with the F flag: see docker/qemu.sh).
set -euo pipefail
arch=${1:-amd64}
sock=${DEPLOY_EVAL_DOCKER_SOCK:-/run/deploy-eval/docker.sock}
tag=deploy-eval/base:bookworm-$arch
export DOCKER_HOST=unix://$sock
if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; exit 0; fi
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (Debian: apt-get install debootstrap)" >&2; exit 1; }
mirror=$("$(dirname "$0")/mirror.sh" "${2:-}")
root=$(mktemp -d /var/tmp/deploy-eval-base.XXXXXX)
trap 'rm -rf "$root" "$root.layer.tar" "$root.image.tar"' EXIT
debootstrap --variant=minbase --arch="$arch" --include=python3,python3-venv,python3-pip,ca-certificates,libgomp1 \
  bookworm "$root" "$mirror" >&2
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
# `docker load` of a one-layer image whose config names its architecture: `docker import`
# labels everything with the engine's own architecture, and builds for linux/arm64 then
# refuse an arm64 base that says amd64.
tar -C "$root" --numeric-owner -cf "$root.layer.tar" .
python3 - "$root.layer.tar" "$arch" "$tag" "$root.image.tar" <<'PY'
import hashlib, io, json, sys, tarfile, time
layer, arch, tag, out = sys.argv[1:]
digest = hashlib.sha256()
with open(layer, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
diff_id = "sha256:" + digest.hexdigest()
config = json.dumps({"architecture": arch, "os": "linux", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/bash"]},
                     "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
config_name = hashlib.sha256(config).hexdigest() + ".json"
manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": ["layer/layer.tar"]}]).encode()
with tarfile.open(out, "w") as tar:
    for name, data in ((config_name, config), ("manifest.json", manifest)):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    tar.add(layer, "layer/layer.tar")
PY
docker load -i "$root.image.tar" >/dev/null
rm -f "$root.layer.tar" "$root.image.tar"
echo "$tag"
