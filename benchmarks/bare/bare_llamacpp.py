"""llama-cpp-python's Llama over the harness's GGUF on llama.cpp's own fast path: a context just
long enough for the request (not the model's training context), the output layer computed for the
last position only; eval the prompt, argmax, eval the token."""
import os

import llama_cpp
import numpy as np

from common import args, timed

a = args()
# f32 runs as the runner runs it: f32 KV cache, no flash attention; quantized types with both.
exact = os.path.basename(a.artifact).startswith(("llamacpp-f32-", "llamacpp-converted-f32-"))
kv = llama_cpp.GGML_TYPE_F32 if exact else llama_cpp.GGML_TYPE_F16
llm = llama_cpp.Llama(model_path=a.artifact, n_ctx=len(a.prompt) + a.new_tokens, n_batch=512, n_threads=os.cpu_count(),
                      n_threads_batch=os.cpu_count(), type_k=kv, type_v=kv, flash_attn=not exact,
                      logits_all=False, verbose=False)


def generate(prompt, n):
    llm.reset()
    llm.eval(prompt)
    out = []
    for step in range(n):
        last = llama_cpp.llama_get_logits_ith(llm.ctx, -1)  # the one row llama.cpp computed
        token = int(np.argmax(np.ctypeslib.as_array(last, shape=(llm.n_vocab(),))))
        out.append(token)
        if step + 1 < n:
            llm.eval([token])
    return out


timed(a, generate)
