"""Fetch llama.cpp's own HF -> GGUF converter, matching the engine just installed, and keep the
engine's sources for llama-server.

convert_hf_to_gguf.py (with its `conversion` package and the vendored gguf-py it needs; PyPI's
gguf is too old for it) ships in the llama-cpp-python sdist, not in the wheel. Take them from
the sdist of the installed version, into <venv>/share/llama.cpp-convert/.

The sdist itself, and the flags its engine was compiled with, go to <venv>/share/llama.cpp-src/:
a serving cell builds llama.cpp's own server from exactly that source, the same way, on first use
(server.py). Where the engine compiled natively (no wheelhouse), its flags are this build's
CMAKE_ARGS, as pip saw them.
"""
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile

import source_build  # beside this file: run as a script, its folder is on sys.path

version = importlib.metadata.version("llama-cpp-python")
dest = os.path.join(sys.prefix, "share", "llama.cpp-convert")
sources = os.path.join(sys.prefix, "share", "llama.cpp-src")
wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")

with tempfile.TemporaryDirectory() as tmp:
    # An image build brings the sdist along (the wheelhouse keeps the sources of what it
    # compiled: evaluator/envs.py); elsewhere pip fetches it.
    shipped = os.path.join(os.environ.get("DEPLOY_EVAL_SDISTS", "/nonexistent"), f"llama_cpp_python-{version}.tar.gz")
    if os.path.isfile(shipped):
        sdist = shipped
    else:
        # --no-binary for this package only: pip still builds the sdist's metadata, and with
        # :all: its build requirements (cmake among them) would be compiled from source too.
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "llama-cpp-python",
                        f"llama-cpp-python=={version}", "-d", tmp], check=True)
        (sdist,) = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".tar.gz")]
    staging = os.path.join(tmp, "out")
    source_build.unpack(sdist, staging, only=wanted)
    if not os.path.isfile(os.path.join(staging, "convert_hf_to_gguf.py")):
        sys.exit(f"llama-cpp-python {version}'s sdist has no vendor/llama.cpp/convert_hf_to_gguf.py")
    with open(os.path.join(staging, "VERSION"), "w") as f:
        f.write(f"llama-cpp-python {version}\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.move(staging, dest)

    shutil.rmtree(sources, ignore_errors=True)
    os.makedirs(sources)
    try:
        os.link(sdist, os.path.join(sources, os.path.basename(sdist)))  # the wheelhouse's copy: no second 76 MB
    except OSError:
        shutil.copy(sdist, sources)
    flags_file = os.path.join(os.path.dirname(sdist), "BUILD_FLAGS.json")
    if os.path.isfile(flags_file):
        shutil.copy(flags_file, sources)
    else:
        with open(os.path.join(sources, "BUILD_FLAGS.json"), "w") as f:
            json.dump({"CMAKE_ARGS": os.environ.get("CMAKE_ARGS", "")}, f)
print(f"llama.cpp converter from llama-cpp-python {version} in {dest}; its sources in {sources}")
