"""llama.cpp's own programs built from the very source and flags of this backend's engine.

The llama-cpp-python sdist the engine was compiled from holds llama.cpp under vendor/llama.cpp/,
and BUILD_FLAGS.json beside it (evaluator/envs.py writes it into the wheelhouse) holds the CMake
options it was compiled with. One place unpacks and builds them for every user: the HF -> GGUF
converter (post_install.py, unpacked only), llama-server (server.py) and the benchmarks'
llama-perplexity and llama-bench (benchmarks/llama_tools.py, which runs this file as a script
with the engine's own python: the host never imports backend code).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tarfile

# What every build leaves out: tests, examples, the web UI and whatever reaches a network.
QUIET = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_UI=OFF",
         "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF"]


def unpack(sdist: str, dest: str, only: tuple[str, ...] = ()) -> None:
    """The sdist's vendor/llama.cpp/ into `dest` (only the paths starting with one of `only`,
    where given): plain files and folders, nothing outside `dest`."""
    prefix = os.path.basename(sdist).removesuffix(".tar.gz") + "/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())
                   and (not only or m.name[len(prefix):].startswith(only))]
        for m in members:
            m.name = m.name[len(prefix):]
        # The "data" filter (no links, no paths out of the folder) exists from Python 3.11.4;
        # Debian bookworm's 3.11.2 lacks it, and the members are already plain files and folders.
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **safe)


def engine_flags(flags_file: str) -> list[str]:
    """The CMake options the engine was compiled with (BUILD_FLAGS.json's CMAKE_ARGS), less
    llama-cpp-python's own option, which llama.cpp's CMake does not know."""
    with open(flags_file) as f:
        args = json.load(f).get("CMAKE_ARGS", "")
    return [x for x in shlex.split(args) if not x.startswith("-DLLAVA_BUILD")]


def build(sdist: str, flags: list[str], options: list[str], targets: list[str], work: str, run) -> str:
    """`targets` built from the sdist's llama.cpp in `work` (src/ and build/) with the engine's
    `flags` and this build's `options`, each step through run(argv, what); the folder the
    programs are in."""
    src, out = os.path.join(work, "src"), os.path.join(work, "build")
    unpack(sdist, src)
    run(["cmake", "-S", src, "-B", out, *QUIET, *options, *flags], f"configuring {', '.join(targets)}")
    run(["cmake", "--build", out, "-j", str(os.cpu_count() or 2), "--target", *targets], f"building {', '.join(targets)}")
    return os.path.join(out, "bin")


def _run(argv: list[str], what: str) -> None:
    if subprocess.run(argv).returncode != 0:
        sys.exit(f"{what} failed")


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description="Build llama.cpp programs from the engine's sdist with its flags; "
                                              "prints the folder they are in.")
    cli.add_argument("sdist")
    cli.add_argument("flags_file", help="BUILD_FLAGS.json recorded beside the sdist")
    cli.add_argument("work", help="the folder the sources and the build go to")
    cli.add_argument("--target", action="append", required=True, help="a CMake target (repeat)")
    cli.add_argument("--option", action="append", default=[], help="a CMake option of this build, as --option=-DX=Y")
    args = cli.parse_args()
    print(build(args.sdist, engine_flags(args.flags_file), args.option, args.target, args.work, _run))
