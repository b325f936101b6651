"""What an evaluator keeps on a remote machine, and how it gets there: the SSH user's cache
(~/.cache/deploy-eval, theirs alone) holding the models, the runner library and what is
derived from models, each folder sent once as a tar stream over SSH and trusted by its content
(every file's sha256 against this machine's), never by a marker. Used by both remote transports
(`ssh-docker` mounts these folders into containers; `ssh` runs a runner beside them).
"""
import hashlib
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from evaluator.launch import bounded

RUNNER_UID = "1000:1000"  # containers never run as root: as the user who owns the caches, or this one
REMOTE_CACHE = ".cache/deploy-eval"  # on a remote target, under the SSH user's home: models, artifacts


class ImageFailed(Exception):
    """An image could not be built, or a model could not reach the target."""


def remote_cache(home: str) -> str:
    """A shell prefix that makes the SSH user's cache theirs alone (700), even if it existed."""
    return f"umask 077 && mkdir -p {home}/{REMOTE_CACHE} && chmod 700 {home}/{REMOTE_CACHE} && "


@dataclass(frozen=True)
class Owner:
    """Who owns the caches on an engine's machine, and as whom its containers run: the user
    (this one, or the SSH user), or RUNNER_UID when that user is root."""
    home: str
    user: str        # uid:gid for `docker run --user`
    chown: bool      # root: hand the artifact cache to RUNNER_UID


def owner(engine) -> Owner:
    if not engine.remote:
        uid, gid, home = os.getuid(), os.getgid(), str(Path.home())
    else:
        got = remote(engine, 'printf "%s %s %s" "$(id -u)" "$(id -g)" "$HOME"', bounded.QUICK_S)
        try:
            uid, gid, home = int(got.stdout.split()[0]), int(got.stdout.split()[1]), got.stdout.split(None, 2)[2]
        except (IndexError, ValueError):
            raise ImageFailed(f"cannot tell who {engine.host} logs in as: {(got.stdout + got.stderr).strip()[-200:]}") from None
    return Owner(home, RUNNER_UID if uid == 0 else f"{uid}:{gid}", uid == 0)


def _manifest_command(folder: str) -> str:
    """A shell command listing a folder's files with their sha256, in a fixed order."""
    return f"cd {shlex.quote(folder)} && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum"


def manifest(folder: Path) -> str:
    """The same listing, computed here: what a remote copy must match to be trusted."""
    lines = []
    for path in sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: "./" + str(p.relative_to(folder))):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        lines.append(f"{digest.hexdigest()}  ./{path.relative_to(folder)}")
    return "\n".join(lines)


def ship_model(engine, folder: Path, sha256: str, who: Owner, log=print) -> str:
    """The model's folder as the target's engine sees it: this machine's own path locally; on
    a remote target a copy under ~/.cache/deploy-eval/models/<model hash>/<folder> of the SSH
    user (ship_folder). The folder's name is part of the key: one model has several (hf/, gguf/)."""
    if not engine.remote:
        return str(folder)
    dest = f"{who.home}/{REMOTE_CACHE}/models/{sha256[:24]}/{re.sub(r'[^A-Za-z0-9._-]', '_', folder.name)}"
    return ship_folder(engine, folder, dest, who, log)


def ship_folder(engine, folder: Path, dest: str, who: Owner, log=print) -> str:
    """`folder` at `dest` on the remote machine, sent once (tar over SSH into a temporary folder,
    renamed into place). A copy is trusted by its content: every file's sha256 against this
    machine's, checked before each reuse and after each copy."""
    want = manifest(folder)
    if remote(engine, _manifest_command(dest), bounded.DOWNLOAD_S).stdout.strip() == want:
        return dest
    log(f"copying {folder.name} to {engine.host}:{dest} (once)")
    unpack = fed_a_tar(folder, engine.ssh(f"{remote_cache(who.home)}rm -rf {dest}.tmp && "
                                           f"mkdir -p {dest}.tmp && tar -x --no-same-permissions -C {dest}.tmp && "
                                           f"chmod -R a+rX {dest}.tmp && rm -rf {dest} && mv {dest}.tmp {dest}"),
                        bounded.DOWNLOAD_S, f"copying {folder.name} to {engine.host}")
    if unpack.returncode != 0:
        raise ImageFailed(f"copying {folder.name} to {engine.host} failed: {unpack.stderr.strip()[-300:]}")
    if remote(engine, _manifest_command(dest), bounded.DOWNLOAD_S).stdout.strip() != want:
        raise ImageFailed(f"the copy of {folder.name} on {engine.host} does not match this machine's files (sha256)")
    return dest


def artifact_cache(engine, local_root: Path, arch: str, who: Owner) -> str:
    """Where containers keep what they derive from models: per architecture, readable and
    writable by the containers' user only (mode 700); on this machine under the artifact cache,
    on a remote one under the SSH user's ~/.cache/deploy-eval."""
    uid, gid = (int(x) for x in who.user.split(":"))
    if not engine.remote:
        path = local_root / f"containers-{arch}"
        path.mkdir(parents=True, exist_ok=True)
        if who.chown:
            os.chown(path, uid, gid)
        path.chmod(0o700)
        return str(path)
    path = f"{who.home}/{REMOTE_CACHE}/artifacts-{arch}"
    chown = f"chown {uid}:{gid} {path} && " if who.chown else ""
    made = remote(engine, f"{remote_cache(who.home)}mkdir -p {path} && {chown}chmod 700 {path}", bounded.QUICK_S)
    if made.returncode != 0:
        raise ImageFailed(f"cannot make {path} on {engine.host}: {made.stderr.strip()[-300:]}")
    return path


def remote(engine, command: str, timeout_s: float) -> subprocess.CompletedProcess:
    try:
        return bounded.run(engine.ssh(command), timeout_s, f"ssh {engine.host}", capture_output=True, text=True)
    except bounded.Overdue as exc:
        raise ImageFailed(str(exc)) from None


def fed_a_tar(folder: Path, argv: list[str], timeout_s: float, what: str) -> subprocess.CompletedProcess:
    """argv reading a tar of `folder` on its stdin, both under the deadline."""
    tar = subprocess.Popen(["tar", "-C", str(folder), "-c", "."], stdout=subprocess.PIPE, start_new_session=True)
    try:
        return bounded.run(argv, timeout_s, what, stdin=tar.stdout, capture_output=True, text=True)
    except bounded.Overdue as exc:
        raise ImageFailed(str(exc)) from None
    finally:
        tar.stdout.close()
        try:
            tar.wait(timeout=bounded.REAP_S)  # it ends with its reader
        except subprocess.TimeoutExpired:
            bounded.kill_group(tar)
