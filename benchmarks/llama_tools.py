"""llama.cpp's own tools (llama-perplexity, llama-bench), built from the very source and flags of
the llamacpp backend's engine: the sdist its wheelhouse kept and the CMake options it recorded
(evaluator/envs.py), built by backends/llamacpp/source_build.py as llama-server is (run with the
engine's python: the host imports no backend code). deploy-eval's numbers are checked against what these
print (tests/test_llama_perplexity.py). Built once into .cache/llama-tools/<wheelhouse>/;
about 3 minutes on 2 cores (the tools' `common` library is most of it).

    .venvs/host/bin/python benchmarks/llama_tools.py            # prints the bin folder
"""
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluator import envs  # noqa: E402
from evaluator.catalog import backends  # noqa: E402
from evaluator.catalog.backends import REPO  # noqa: E402

BUILDER = REPO / "backends" / "llamacpp" / "source_build.py"

TOOLS = ("llama-perplexity", "llama-bench")


def build(log=print) -> Path:
    backend = backends.discover()[0]["llamacpp"]
    python = envs.python_for(backend, log)  # the engine first: its wheelhouse holds the sdist it was built from
    house = envs.wheelhouse(backend, log)
    found = sorted((house / "sdists").glob("llama_cpp_python-*.tar.gz")) if house else []
    if len(found) != 1 or not (house / "sdists" / "BUILD_FLAGS.json").is_file():
        sys.exit(f"no llama-cpp-python sdist and its BUILD_FLAGS.json in {house}/sdists: remove that folder and run again to rebuild it")
    if not shutil.which("cmake"):
        sys.exit("llama.cpp's tools need cmake and a C++ compiler: apt-get install cmake g++")
    sdist = found[0]
    home = REPO / ".cache" / "llama-tools" / house.name
    bin_dir = home / "build" / "bin"  # beside the shared libraries they were linked against
    if (home / "done").is_file():
        return bin_dir
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    # The engine's own flags, as its wheelhouse recorded them; the tools need llama.cpp's `common`.
    options = ["-DBUILD_SHARED_LIBS=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_SERVER=OFF"]
    argv = [str(python), str(BUILDER), str(sdist), str(house / "sdists" / "BUILD_FLAGS.json"), str(home),
            *(f"--target={t}" for t in TOOLS), *(f"--option={o}" for o in options)]
    log(f"building {', '.join(TOOLS)} from {sdist.name} with the engine's flags (once; log: {home / 'build.log'})")
    with open(home / "build.log", "w") as out:
        if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=3600).returncode != 0:
            sys.exit(f"building llama.cpp's tools failed; the log: {home / 'build.log'}")
    (home / "done").write_text(sdist.name + "\n")  # last: a half-built folder is never reused
    return bin_dir


if __name__ == "__main__":
    print(build(log=lambda m: print(m, file=sys.stderr)))
