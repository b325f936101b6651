#!/usr/bin/env bash
# The Debian mirror docker/base.sh builds from, printed: the argument, else $DEBIAN_MIRROR, else
# the first one this machine's own apt configuration names ($APT_DIR, /etc/apt by default), in
# either format: one-line `deb [options] URI suite ...` lines, or deb822 `URIs:` fields.
set -euo pipefail
apt=${APT_DIR:-/etc/apt}
mirror=${1:-${DEBIAN_MIRROR:-}}
# the first field with a scheme: `deb [signed-by=... arch=amd64] http://...` has options first
[ -n "$mirror" ] || mirror=$(awk '/^deb[ \t]/{for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) {print $i; exit}}' \
  "$apt"/sources.list "$apt"/sources.list.d/*.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(sed -n 's/^URIs:[ \t]*//p' "$apt"/sources.list.d/*.sources 2>/dev/null | awk '{print $1; exit}' || true)
[ -n "$mirror" ] || { echo "no Debian mirror: $apt names none; pass one: docker/base.sh ARCH MIRROR_URL (or DEBIAN_MIRROR=...)" >&2; exit 1; }
echo "$mirror"
