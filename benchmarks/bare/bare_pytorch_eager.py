"""transformers' model, greedy with its KV cache, as a user would write the loop by hand."""
import torch
import transformers

from common import args, timed

a = args()
model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa").eval()


@torch.inference_mode()
def generate(prompt, n):
    ids, cache, out = torch.tensor([prompt]), None, []
    for _ in range(n):
        r = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        ids, cache = r.logits[:, -1].argmax(-1, keepdim=True), r.cache
        out.append(int(ids))
    return out


timed(a, generate)
