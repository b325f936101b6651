#!/usr/bin/env bash
# The GPU paths on a real card, in about seven minutes: ../shared/device-check.md's stages, for an
# NVIDIA box without network whose python3 already holds CUDA torch and transformers (nothing is
# installed: every backend runs with --python). Each stage has its own time limit, so one that
# hangs costs its limit and the others still run.
#
#   benchmarks/gpu_check.sh OUT_DIR [PYTHON]       (PYTHON: the prepared interpreter, python3)
#   STAGES=probe,compile benchmarks/gpu_check.sh OUT_DIR      (some stages only: rerun one that failed)
#
# On an H200 in a gVisor sandbox (2026-12-04) every cell spent ~15 s starting its runner and
# loading (importing torch and transformers, creating the CUDA context), so all stages together
# take about 11 minutes; within a 10-minute call, leave the rest out with STAGES.
#
# OUT_DIR receives stages.txt (one line per stage: exit status, seconds), probe.json, targets.toml and
# check.tgz (each stage's log and its run folder without raw/, report.html included).
set -uo pipefail
fail() { echo "error: $*" >&2; exit 2; }
[ $# -ge 1 ] && [ -n "$1" ] || fail "usage: benchmarks/gpu_check.sh OUT_DIR [PYTHON] (OUT_DIR: a new or empty folder)"
out=$(realpath -m "$1")
if [ -e "$out" ] && { [ ! -d "$out" ] || [ -n "$(ls -A "$out")" ]; }; then
    fail "$out is not a new or empty folder: nothing there is overwritten"
fi
py=${2:-python3}
command -v "$py" >/dev/null || fail "$py: no such interpreter (the prepared python that holds CUDA torch, e.g. python3)"
host=${HOST_PYTHON:-$py}  # the evaluator's interpreter, where it is not the same
"$host" -c 'import plotly, pydantic, tqdm, jinja2, tokenizers' 2>/dev/null ||
    fail "$host lacks the evaluator's packages (plotly, pydantic, tqdm, jinja2, tokenizers): carry their wheels (README: A GPU box without network)"
cd "$(dirname "$0")/.."
mkdir -p "$out/logs" "$out/reports"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
failed=0

# every stage's evaluation: prepared environments, reports under OUT_DIR, short loops
eval_=("$host" -m evaluator eval --python "pytorch_eager=$py" --reports "$out/reports" --max-time 5)

only=",${STAGES:-probe,stories-latency,stories-quality,synthetic-1b,serving,compile,techniques},"

stage() {  # stage NAME SECONDS COMMAND...: run it with a limit, log it, note status and time
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    [[ $only == *",$name,"* ]] || return 0
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" >"$out/logs/$name.log" 2>&1
    local rc=$?
    [ $rc -eq 0 ] || failed=1
    echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$out/stages.txt"
    tail -n 25 "$out/logs/$name.log"
}

if [[ $only == *",probe,"* ]]; then
    echo "== probe"
    timeout 60 "$py" benchmarks/gpu_probe.py >"$out/probe.json" 2>"$out/logs/probe.log"
    rc=$?
    [ $rc -eq 0 ] || failed=1
    echo "probe rc=$rc ${SECONDS}s" | tee -a "$out/stages.txt"
    cat "$out/probe.json"
    # The local target's decode ceiling is the card's copy bandwidth as the probe measured it (the
    # evaluator probes only a CPU target's DRAM itself).
    gbs=$("$host" -c 'import json, sys; print(json.load(open(sys.argv[1]))["copy_bandwidth"]["gbs"])' "$out/probe.json" 2>/dev/null) &&
        printf '[local]\ndescription = "this machine (GPU ceiling: probed copy bandwidth)"\ntransport = "local"\narch = "auto"\naccelerator = "auto"\nmemory_gb = "auto"\nmemory_bandwidth_gbs = %s\n' \
            "$gbs" >"$out/targets.toml" && export DEPLOY_EVAL_TARGETS=$out/targets.toml
fi

# stories260K: the precision ladder, the attention kernel and the KV cache; the published text
# checks fp32, J/token from NVML; then fidelity of fp16 and bf16 to fp32 on a subset.
stage stories-latency 170 "${eval_[@]}" stories260k --backends pytorch_eager \
    --variants 'fp32-sdpa-kv,bf16-sdpa-kv,fp16-sdpa-kv,fp32-eager-kv,fp32-sdpa-nokv' --scenarios latency
stage stories-quality 100 "${eval_[@]}" stories260k --backends pytorch_eager \
    --variants 'fp32-sdpa-kv,bf16-sdpa-kv,fp16-sdpa-kv' --scenarios quality --quality-items 100 --ppl-tokens 10000

# 1.24 B parameters: device memory against the weights, the decode ceiling from the card's
# bandwidth, bf16 throughput at batch 1 and 16.
stage synthetic-1b 150 "${eval_[@]}" synthetic-llama3.2-1b --backends pytorch_eager \
    --variants 'fp32-sdpa-kv,bf16-sdpa-kv' --scenarios latency,throughput --batch-sizes 1,16

# Serving under load through transformers' continuous batching on the card (paged KV cache).
stage serving 120 "${eval_[@]}" synthetic-llama3.2-1b --backends pytorch_eager --variants bf16-sdpa-kv \
    --scenarios serving --rates 4,16,64 --serving-requests 40 --slo ttft:200,tpot:50

# torch.compile on the card: compile time apart, decode against eager's.
stage compile 150 "${eval_[@]}" synthetic-tiny --backends pytorch_eager,pytorch_compile --python "pytorch_compile=$py" \
    --variants 'fp32-sdpa-kv,fp32-default,fp32-reduce-overhead' --scenarios latency

# The article's techniques: attention sweep (n^2 against n memory), mixed-precision training, FLOPs.
stage techniques 90 "${eval_[@]}" stories260k --backends pytorch_eager --variants 'fp32-sdpa-kv,bf16-sdpa-kv' \
    --scenarios attention,train,flops

# torchao int4 weight-only (tinygemm, the card's own kernel) on the student, whose widths the
# layout holds, against fp32 item by item. Not in the default stages: torchao must be importable
# by $py (carry its wheel; STAGES=int4).
stage int4 120 "${eval_[@]}" stories260k-student --backends pytorch_eager,pytorch_quant --python "pytorch_quant=$py" \
    --variants 'fp32-sdpa-kv,torchao-int4wo' --scenarios latency,quality --quality-items 200 --ppl-tokens 10000

for run in "$out"/reports/*/; do  # a stage stopped at its limit wrote no report: build it from its cells
    [ -f "$run/index.html" ] || timeout 60 "$host" -m evaluator report "$run" >>"$out/logs/reports.log" 2>&1
done
find "$out/reports" -type d -name raw -prune -exec rm -rf {} +
tar -czf "$out/check.tgz" -C "$out" logs reports && rm -rf "$out/logs" "$out/reports"
cat "$out/stages.txt"
exit $failed
