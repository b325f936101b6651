"""transformers' model, greedy with its KV cache, as a user would write the loop by hand."""
import torch
import transformers

from common import args, timed


def run(compile_mode: str | None = None):
    a = args()
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa").eval()
    if compile_mode:  # as pytorch_compile's runner compiles it; the untimed warm-up compiles
        model.forward = torch.compile(model.forward, mode=compile_mode, dynamic=True)

    @torch.inference_mode()
    def generate(prompt, n):
        ids, cache, out = torch.tensor([prompt]), None, []
        for _ in range(n):
            r = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
            ids, cache = r.logits[:, -1].argmax(-1, keepdim=True), r.cache
            out.append(int(ids))
        return out

    timed(a, generate)


if __name__ == "__main__":
    run()
