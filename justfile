# deploy-eval: `just eval stories260k` measures the built-in model; `just test` runs the tests.
# Every recipe sets up what it needs first: .venvs/host for the evaluator (from pyproject.toml),
# and each backend's own environment on first use (from backends/<name>/requirements.txt).

set positional-arguments
set shell := ["bash", "-euo", "pipefail", "-c"]

host := ".venvs/host/bin/python"

# List the recipes
default:
    @just --list

# Evaluate a model: just eval MODEL [--targets a,b] [--backends x,y] [--variants GLOB] (--help for all)
eval *args: _host
    {{host}} -m evaluator eval "$@"

# The article's techniques on your hardware, in one run and one report: attention sweep, training
# (precision, checkpointing, accumulation), FLOPs and MFU, KV cache on/off, torch.compile's modes,
# attention kernel and bf16 in the model: just techniques MODEL [--targets a,b] (eval's options apply)
techniques model *args: _host
    {{host}} -m evaluator eval {{model}} --backends pytorch_eager,pytorch_compile --scenarios latency,attention,train,flops,kv \
        --variants 'fp32-sdpa-kv,fp32-eager-kv,bf16-sdpa-kv,fp32-default,fp32-reduce-overhead,fp32-max-autotune' {{args}}

# List backends (from backends/*/backend.toml) and report broken manifests
backends *args: _host
    {{host}} -m evaluator backends "$@"

# List the model catalog
models *args: _host
    {{host}} -m evaluator models "$@"

# List targets
targets *args: _host
    {{host}} -m evaluator targets "$@"

# Rebuild a run's HTML report from its stored results: just report RUN_ID
report *args: _host
    {{host}} -m evaluator report "$@"

# A run's results as one tidy table: just export RUN_ID [--format csv|parquet|md] [--out FILE]
export *args: _host
    {{host}} -m evaluator export "$@"

# What changed between two runs, beyond their own noise: just compare RUN_A RUN_B [--changed-only]
compare *args: _host
    {{host}} -m evaluator compare "$@"

# Run the test suite (sets up the backend environments it needs); extra args go to pytest
test *args: _host
    {{host}} -m pytest "$@"

# The Debian packages the whole test suite needs (a browser, a Docker engine, debootstrap, an SSH
# server; `-m slow` also qemu-user-static and an arm64 cross compiler); needs root
system-deps *extra:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=""
    need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || missing="$missing $2"; }
    need chromium chromium; need dockerd docker.io; need debootstrap debootstrap; need sshd openssh-server
    for p in {{extra}}; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"; done
    [ -z "$missing" ] && { echo "system packages: all present"; exit 0; }
    sudo=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
    echo "installed:$missing"

# Lint: ruff (pyproject.toml's rules), and no module over 400 lines (split it where it has two concerns)
lint: _host
    {{host}} -m ruff check evaluator backends tests benchmarks recipes
    @{{host}} -c 'import pathlib, sys; big = [f"{p}: {n} lines" for d in ("evaluator", "backends", "tests", "benchmarks", "recipes") for p in sorted(pathlib.Path(d).rglob("*.py")) if (n := len(p.read_text().splitlines())) > 400]; print(*big, sep="\n"); sys.exit(1 if big else 0)'

# Speed and memory figures, run on demand (not part of the tests)
bench *args: _host
    {{host}} benchmarks/harness_overhead.py "$@"

# Each backend through the harness next to a bare loop of the same engine, on a >= 1 B synthetic model
bench-backends *args: _host
    {{host}} benchmarks/backend_overhead.py "$@"

# Rebuild data/stories260k-student (the distilled student every CPU engine runs) with its recipe, in pytorch_eager's environment
distill *args: _host
    #!/usr/bin/env bash
    set -euo pipefail
    py=$({{host}} -c 'import sys; from evaluator import envs; from evaluator.catalog import backends; print(envs.python_for(backends.select(["pytorch_eager"])[0], log=lambda m: print(m, file=sys.stderr)))')
    "$py" recipes/distill.py "$@"

# Build (or reuse) the evaluator's environment; rebuilt when pyproject.toml changes
_host:
    #!/usr/bin/env bash
    set -euo pipefail
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ -x .venvs/host/bin/python ] && [ "$(cat .venvs/host/.stamp 2>/dev/null)" = "$want" ]; then exit 0; fi
    echo "setting up the evaluator environment in .venvs/host (once)" >&2
    rm -rf .venvs/host
    python3 -m venv .venvs/host
    .venvs/host/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
    echo "$want" > .venvs/host/.stamp
