#!/usr/bin/env bash
# Let this x86_64 machine run arm64 binaries (a stand-in for a Raspberry Pi 5): mount
# binfmt_misc and register Debian's qemu-aarch64-static with the F flag (the interpreter is
# opened once at registration, so it works inside containers and chroots that do not have it).
set -euo pipefail
[ "$(uname -m)" = aarch64 ] && exit 0
command -v qemu-aarch64-static >/dev/null || { echo "qemu-aarch64-static is missing (Debian: apt-get install qemu-user-static)" >&2; exit 1; }
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
if [ -e "$entry" ] && grep -q "flags: .*F" "$entry"; then exit 0; fi
[ -e "$entry" ] && echo -1 > "$entry"   # registered without F: replace it
magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
echo ":qemu-aarch64:M::${magic}:${mask}:$(command -v qemu-aarch64-static):F" > /proc/sys/fs/binfmt_misc/register
