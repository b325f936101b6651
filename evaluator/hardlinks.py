"""Identical files across the backend environments, stored once.

Every backend has its own virtual environment (envs.py), and most of them hold the same torch,
numpy and transformers wheels unpacked: eight copies of a 1 GB torch ran a clean machine out of
disk. After an environment is built, each large file that is byte-for-byte the one at the same
place in another environment becomes a hard link to it. Nothing changes for Python; pip never
writes into an installed file (it deletes and writes anew), so removing or rebuilding one
environment leaves the others whole.
"""
import filecmp
import os
import stat
from pathlib import Path

# Small files are most of a venv's count and little of its bytes: not worth reading twice.
MIN_BYTES = 64 * 1024


def share_identical(venv: Path, others: list[Path]) -> int:
    """Hard-link each file of `venv` of at least MIN_BYTES to a byte-identical file (same
    relative path, size and mode, same filesystem) in one of `others`; the bytes this saved."""
    others = [o for o in others if o.is_dir() and o.resolve() != venv.resolve()]
    saved = 0
    for path in venv.rglob("*"):
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size < MIN_BYTES:
            continue
        rel = path.relative_to(venv)
        for other in others:
            try:
                twin = (other / rel).lstat()
            except OSError:
                continue
            if (twin.st_dev, twin.st_ino) == (st.st_dev, st.st_ino):
                break  # already one file
            if (not stat.S_ISREG(twin.st_mode) or twin.st_size != st.st_size or twin.st_mode != st.st_mode
                    or twin.st_dev != st.st_dev or not filecmp.cmp(path, other / rel, shallow=False)):
                continue
            temporary = path.with_name(path.name + ".deploy-eval-link")
            temporary.unlink(missing_ok=True)
            os.link(other / rel, temporary)
            os.replace(temporary, path)  # atomic: the file is never missing
            saved += st.st_size
            break
    return saved
