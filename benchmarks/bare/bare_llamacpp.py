"""llama-cpp-python's Llama over the harness's GGUF: eval the prompt, argmax, eval the token."""
import os

import llama_cpp
import numpy as np

from common import args, timed

a = args()
# f32 runs as the runner runs it: f32 KV cache, no flash attention; quantized types with both.
exact = os.path.basename(a.artifact).startswith(("llamacpp-f32-", "llamacpp-converted-f32-"))
kv = llama_cpp.GGML_TYPE_F32 if exact else llama_cpp.GGML_TYPE_F16
llm = llama_cpp.Llama(model_path=a.artifact, n_ctx=0, n_batch=512, n_threads=os.cpu_count(),
                      n_threads_batch=os.cpu_count(), type_k=kv, type_v=kv, flash_attn=not exact,
                      logits_all=True, verbose=False)


def generate(prompt, n):
    llm.reset()
    llm.eval(prompt)
    out = []
    for step in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        if step + 1 < n:
            llm.eval([token])
    return out


timed(a, generate)
