"""What every bare loop shares: its arguments and its one line of output. Nothing of
deploy-eval is imported here or in the loops: they drive each engine directly."""
import argparse
import json
import time


def args():
    p = argparse.ArgumentParser(description="decode with the engine directly, no deploy-eval")
    p.add_argument("--model", required=True, help="the Hugging Face folder")
    p.add_argument("--artifact", help="the engine's own file (GGUF, ONNX folder) as the harness built it")
    p.add_argument("--prompt", required=True, help="JSON list of token ids (the harness's prompt)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    a.prompt = json.loads(a.prompt)
    return a


def timed(a, generate):
    """One untimed warm-up, then `repeats` timed requests; prints {"e2e_s": [...]}."""
    out = generate(a.prompt, a.new_tokens)
    assert len(out) == a.new_tokens, f"engine returned {len(out)} tokens, not {a.new_tokens}"
    e2e = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        generate(a.prompt, a.new_tokens)
        e2e.append(time.perf_counter() - t0)
    print(json.dumps({"e2e_s": e2e, "tokens": out}))
