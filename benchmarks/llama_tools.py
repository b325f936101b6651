"""llama.cpp's own tools (llama-perplexity, llama-bench), built from the very source and flags of
the llamacpp backend's engine: the sdist its wheelhouse kept (evaluator/envs.py), configured with
backend.toml's CMAKE_ARGS for this CPU. deploy-eval's numbers are checked against what these
print (tests/test_llama_perplexity.py). Built once into .cache/llama-tools/<wheelhouse>/;
about 3 minutes on 2 cores (the tools' `common` library is most of it).

    .venvs/host/bin/python benchmarks/llama_tools.py            # prints the bin folder
"""
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluator import envs  # noqa: E402
from evaluator.catalog import backends  # noqa: E402
from evaluator.catalog.backends import REPO  # noqa: E402

TOOLS = ("llama-perplexity", "llama-bench")


def build(log=print) -> Path:
    backend = backends.discover()[0]["llamacpp"]
    envs.python_for(backend, log)  # the engine first: its wheelhouse holds the sdist it was built from
    house = envs.wheelhouse(backend, log)
    found = sorted((house / "sdists").glob("llama_cpp_python-*.tar.gz")) if house else []
    if len(found) != 1:
        sys.exit(f"no llama-cpp-python sdist in {house}/sdists: remove that folder and run again to rebuild it")
    if not shutil.which("cmake"):
        sys.exit("llama.cpp's tools need cmake and a C++ compiler: apt-get install cmake g++")
    sdist = found[0]
    home = REPO / ".cache" / "llama-tools" / house.name
    bin_dir = home / "build" / "bin"  # beside the shared libraries they were linked against
    if (home / "done").is_file():
        return bin_dir
    shutil.rmtree(home, ignore_errors=True)
    src = home / "src"
    prefix = sdist.name.removesuffix(".tar.gz") + "/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(src, members=members, filter="data")
    # The engine's own flags; the tools need llama.cpp's `common` and nothing that reaches a network.
    flags = shlex.split(envs.build_flags(backend).get("CMAKE_ARGS", ""))
    flags = [f for f in flags if not f.startswith("-DLLAVA_BUILD")]  # llama-cpp-python's option, not llama.cpp's
    configure = ["cmake", "-S", str(src), "-B", str(home / "build"), "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON",
                 "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                 "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", *flags]
    log(f"building {', '.join(TOOLS)} from {sdist.name} with {' '.join(flags)} (once)")
    with open(home / "build.log", "w") as out:
        for step in (configure, ["cmake", "--build", str(home / "build"), "-j", str(os.cpu_count() or 2),
                                 "--target", *TOOLS]):
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=1800).returncode != 0:
                sys.exit(f"building llama.cpp's tools failed; the log: {home / 'build.log'}")
    (home / "done").write_text(sdist.name + "\n")  # last: a half-built folder is never reused
    return bin_dir


if __name__ == "__main__":
    print(build(log=lambda m: print(m, file=sys.stderr)))
