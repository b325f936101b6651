"""Wheels for another CPU architecture, made on this machine, for an image that runs there (an
arm64 image for a Raspberry Pi 5, built and tested here under qemu emulation).

Two sources, no compiler run under emulation (that is ten times slower) and no pip inside the
emulated root (its TLS verification failed here):
- binary wheels of the target platform, fetched here by pip (`--platform manylinux_*_aarch64`);
- packages that compile (llama-cpp-python: a ctypes binding around llama.cpp's shared
  libraries, so no Python ABI is involved) built here with Debian's cross compiler and CMake's
  cross-compiling variables, then retagged for the target platform.
Only the engine's own packages are staged (`[image] engine_packages` in the manifest): what
the runner imports, not the tools around it (llama.cpp's HF converter needs torch, whose
aarch64 2.13 wheel on PyPI is a CUDA build).
"""
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from evaluator.envs import WHEELS
from evaluator.launch import bounded

TRIPLE = {"arm64": "aarch64-linux-gnu"}
PLATFORMS = {"arm64": ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"]}
CMAKE_PROCESSOR = {"arm64": "aarch64"}


class CrossFailed(Exception):
    pass


def _retag(wheel: Path, platform_tag: str) -> Path:
    """The same wheel, tagged for another platform: WHEEL's Tag line, RECORD's hash of WHEEL,
    and the file name (a wheel is a zip with a manifest of hashes)."""
    name, version, py, abi, _ = wheel.name[:-4].split("-")
    out = wheel.with_name(f"{name}-{version}-{py}-{abi}-{platform_tag}.whl")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        info_dir = f"{name}-{version}.dist-info"
        wheel_meta = src.read(f"{info_dir}/WHEEL").decode()
        wheel_meta = "".join(f"Tag: {py}-{abi}-{platform_tag}\n" if line.startswith("Tag:") else line
                             for line in wheel_meta.splitlines(keepends=True)).encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(wheel_meta).digest()).rstrip(b"=").decode()
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == f"{info_dir}/WHEEL":
                data = wheel_meta
            elif item.filename == f"{info_dir}/RECORD":
                data = "".join(f"{info_dir}/WHEEL,sha256={digest},{len(wheel_meta)}\n" if line.startswith(f"{info_dir}/WHEEL,")
                               else line for line in data.decode().splitlines(keepends=True)).encode()
            dst.writestr(item, data)
    wheel.unlink()
    return out


def wheelhouse(packages: list[str], arch: str, cmake_args: str = "", log=print) -> Path:
    """Wheels of `packages` (pinned requirement strings) and their dependencies for `arch`,
    cached in .cache/wheels/cross-<arch>-<key>/ and reused."""
    if arch not in TRIPLE:
        raise CrossFailed(f"no cross toolchain known for {arch}; known: {', '.join(TRIPLE)}")
    triple = TRIPLE[arch]
    key = hashlib.sha256(f"{packages}|{cmake_args}|{arch}".encode()).hexdigest()[:16]
    house = WHEELS / f"cross-{arch}-{key}"
    if house.is_dir():
        return house
    if not shutil.which(f"{triple}-g++"):
        raise CrossFailed(f"{triple}-g++ is missing (Debian: apt-get install g++-{triple})")
    tmp = house.with_name(house.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    logfile = house.with_name(house.name + ".log")
    platforms = [a for p in PLATFORMS[arch] for a in ("--platform", p)]
    with open(logfile, "w") as out:
        def pip(*args, env=None):
            if _bounded([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], bounded.BUILD_S,
                        f"pip {args[0]} for {arch}", out, env=env) != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise CrossFailed(f"pip {args[0]} for {arch} failed; log: {logfile}")

        compiled = []
        for requirement in packages:
            fetched = _bounded([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                                *platforms, "--python-version", "3.11", "--implementation", "cp",
                                requirement, "-d", str(tmp)], bounded.DOWNLOAD_S, f"pip download {requirement}", out)
            if fetched != 0:  # no binary for this platform: cross-compile it
                compiled.append(requirement)
        for requirement in compiled:
            log(f"cross-compiling {requirement} for {arch} with {triple}-gcc (once)")
            flags = (f"-DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR={CMAKE_PROCESSOR[arch]} "
                     f"-DCMAKE_C_COMPILER={triple}-gcc -DCMAKE_CXX_COMPILER={triple}-g++ {cmake_args}")
            built = tmp / "built"
            pip("wheel", "--no-deps", "--no-cache-dir", requirement, "-w", str(built),
                env=dict(os.environ, CMAKE_ARGS=flags))
            for wheel in built.glob("*.whl"):
                if not wheel.name.endswith("-none-any.whl"):
                    wheel = _retag(wheel, f"linux_{CMAKE_PROCESSOR[arch]}")
                shutil.move(wheel, tmp / wheel.name)
            shutil.rmtree(built)
            # its dependencies, as binaries of the target platform (the retagged wheel is found locally)
            pip("download", "--quiet", "--only-binary=:all:", *platforms, "--platform", f"linux_{CMAKE_PROCESSOR[arch]}",
                "--python-version", "3.11", "--implementation", "cp", "--find-links", str(tmp), requirement, "-d", str(tmp))
    os.replace(tmp, house)
    return house


def _bounded(argv: list, timeout_s: float, what: str, out, **kwargs) -> int:
    try:
        return bounded.run(argv, timeout_s, what, stdout=out, stderr=subprocess.STDOUT, **kwargs).returncode
    except bounded.Overdue as exc:
        raise CrossFailed(str(exc)) from None
