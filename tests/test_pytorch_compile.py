"""pytorch_compile's CUDA-graph modes keep the KV cache out of graph memory. On a GPU,
reduce-overhead and max-autotune replay CUDA graphs whose outputs the next call overwrites; the
runner clones the logits and every cache layer after each call (seen failing on an H200 without
it). This CPU machine replays no graphs, so the test checks the clone itself on a real
transformers forward: every tensor that outlives the call is a new buffer holding the same values."""
import json
import subprocess

from evaluator import envs
from evaluator.catalog import backends
from tests.conftest import REPO, STORIES

CODE = """
import importlib.util, json, sys, torch, transformers
spec = importlib.util.spec_from_file_location("r", "backends/pytorch_compile/runner.py")
r = importlib.util.module_from_spec(spec); spec.loader.exec_module(r)
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
name = "cache" if "cache" in __import__("inspect").signature(model.forward).parameters else "past_key_values"
out = model(input_ids=torch.tensor([[1, 400, 401, 402]]), use_cache=True)
before = [(l.keys, l.values) for l in out.get(name).layers] + [(out.logits, out.logits)]
after = r._owned(out, name)
now = [(l.keys, l.values) for l in after.get(name).layers] + [(after.logits, after.logits)]
print(json.dumps({"layers": len(before) - 1,
                  "new": all(a.data_ptr() != b.data_ptr() for p, q in zip(before, now) for a, b in zip(p, q)),
                  "equal": all(torch.equal(a, b) for p, q in zip(before, now) for a, b in zip(p, q))}))
"""


def test_graph_modes_clone_the_cache_and_logits_out_of_the_call():
    python = envs.python_for(backends.discover()[0]["pytorch_compile"])
    out = subprocess.run([str(python), "-c", CODE, str(STORIES / "hf")], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"layers": 5, "new": True, "equal": True}
