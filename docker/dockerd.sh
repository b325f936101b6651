#!/usr/bin/env bash
# Start deploy-eval's own Docker engine if it is not answering: its own socket, data root and
# exec root, so it never touches a system engine. No registry is needed: base images are
# built offline by docker/base.sh. Bridge networking and iptables are off (this machine's
# sandbox has neither); builds that install packages use --network host, and measurement runs
# use --network none.
#   DEPLOY_EVAL_DOCKER_SOCK (default /run/deploy-eval/docker.sock)
#   DEPLOY_EVAL_DOCKER_ROOT (default /var/lib/deploy-eval-docker)
set -euo pipefail
sock=${DEPLOY_EVAL_DOCKER_SOCK:-/run/deploy-eval/docker.sock}
root=${DEPLOY_EVAL_DOCKER_ROOT:-/var/lib/deploy-eval-docker}
run=$(dirname "$sock")  # its exec root, pid file and log beside the socket: two engines never share them
if docker -H "unix://$sock" info >/dev/null 2>&1; then exit 0; fi
command -v dockerd >/dev/null || { echo "dockerd is not installed (Debian: apt-get install docker.io)" >&2; exit 1; }
mkdir -p "$run" "$root"
nohup dockerd --host "unix://$sock" --data-root "$root" --exec-root "$run/exec" \
  --pidfile "$run/dockerd.pid" --storage-driver overlay2 --iptables=false --bridge=none \
  >"$run/dockerd.log" 2>&1 &
for _ in $(seq 120); do
  docker -H "unix://$sock" info >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "dockerd did not answer on $sock within 60 s; its log: $run/dockerd.log" >&2
tail -5 "$run/dockerd.log" >&2
exit 1
