"""vLLM's own offline API: LLM.generate on token ids, greedy, a fixed number of new tokens."""
import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

from vllm import LLM, SamplingParams  # noqa: E402

from common import args, timed  # noqa: E402

a = args()
llm = LLM(model=a.model, dtype="float32", max_model_len=2048, seed=0, skip_tokenizer_init=True, enforce_eager=True)


def generate(prompt, n):
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False)
    (res,) = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    return list(res.outputs[0].token_ids)


if __name__ == "__main__":
    timed(a, generate)
