"""pytorch_eager: Hugging Face transformers models in plain PyTorch, the reference backend.

Greedy decoding is a hand-written loop rather than model.generate(), so the runner sees each
step's token the moment it exists (for TTFT and inter-token latency) and so "KV cache off"
means exactly that: the whole sequence is recomputed at every step.
"""
import os
import sys

sys.path.insert(0, os.environ.get("DEPLOY_EVAL_RUNNER_LIB", os.path.join(os.path.dirname(__file__), "..", "..")))

import torch  # noqa: E402
import transformers  # noqa: E402

from evaluator.runner import Engine, RunnerError, check_options, choice, serve  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OPTIONS = {"dtype", "attn", "kv_cache", "device", "threads", "allow_pickle", "trust_remote_code", "weight_noise"}


class TorchEngine(Engine):
    def __init__(self):
        self.model = None
        self.device = "cpu"
        self.kv_cache = True

    def describe(self):
        cuda = torch.cuda.is_available()
        return {
            "engine": "pytorch_eager",
            "engine_version": torch.__version__,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "devices_available": ["cpu"] + (["cuda"] if cuda else []),
            "available": True,
            "unavailable_reason": None,
            "supports": {"score": True, "batch": True},
            "build": {"cuda": torch.version.cuda, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
            "threads": torch.get_num_threads(),
        }

    def load(self, model, options):
        check_options(options, OPTIONS, model, ("hf",), "pytorch_eager")
        dtype = choice(options, "dtype", DTYPES, "fp32")
        attn = choice(options, "attn", ("sdpa", "eager"), "sdpa")
        self.device = options.get("device", "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RunnerError("unsupported", "device cuda requested but torch sees no CUDA device here")
        if options.get("threads"):
            torch.set_num_threads(int(options["threads"]))
        self.kv_cache = options.get("kv_cache", "kv") == "kv"
        path = model["path"]
        if not os.path.isdir(path):
            raise RunnerError("bad_request", f"model folder {path} does not exist")
        if not options.get("allow_pickle") and not any(f.endswith(".safetensors") for f in os.listdir(path)):
            raise RunnerError("unsupported", f"{path} has no .safetensors weights; pickle checkpoints load only with allow_pickle")
        self.model = None
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[dtype], attn_implementation=attn,
            use_safetensors=not options.get("allow_pickle"),
            trust_remote_code=bool(options.get("trust_remote_code")),
        ).to(self.device).eval()
        if options.get("weight_noise"):
            self._damage(float(options["weight_noise"]))
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        return {
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "vocab_size": self.model.config.vocab_size,
            "device": self.device,
            "settings": {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                         "dtype": dtype, "attn": attn, "kv_cache": self.kv_cache,
                         "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        }

    @torch.no_grad()
    def _damage(self, scale):
        """Deliberately damage the model: Gaussian noise of `scale` x each tensor's own std,
        seeded. Only for proving that fidelity metrics and the quality gate catch a bad path."""
        gen = torch.Generator().manual_seed(0)
        for p in self.model.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * (scale * p.float().std())
            p.add_(noise.to(p.dtype).to(p.device))

    @torch.inference_mode()
    def generate(self, prompts, max_new_tokens, on_token):
        ids = torch.tensor(prompts, device=self.device)
        out = []
        past = None
        step_input = ids
        for _ in range(max_new_tokens):
            result = self.model(input_ids=step_input, cache=past, use_cache=self.kv_cache, logits_to_keep=1)
            next_ids = result.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            out.append(next_ids.squeeze(1).tolist())  # .tolist() waits for the device
            on_token()
            if self.kv_cache:
                past, step_input = result.cache, next_ids
            else:
                ids = torch.cat([ids, next_ids], dim=1)
                step_input = ids
        return [list(row) for row in zip(*out)]

    @staticmethod
    def _entry(logits, target, top_k):
        """Log-probabilities of `target` under each row of `logits`, plus the top-k."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        entry = {"logprobs": logprobs.gather(1, target[:, None])[:, 0].tolist(), "top": [[] for _ in range(len(target))]}
        if top_k:
            values, indices = logprobs.topk(top_k, dim=-1)
            entry["top"] = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
        return entry

    @torch.inference_mode()
    def score(self, sequences, start, top_k):
        # One forward for the whole batch. Right padding is invisible to a causal model: real
        # positions never attend to later ones, and padded positions are never read.
        width = max(len(s) for s in sequences)
        batch = torch.tensor([s + [0] * (width - len(s)) for s in sequences], device=self.device)
        logits = self.model(input_ids=batch, use_cache=False).logits
        return [self._entry(logits[i, start - 1 : len(s) - 1], batch[i, start : len(s)], top_k)
                for i, s in enumerate(sequences)]

    @torch.inference_mode()
    def score_continuations(self, prefix, continuations, top_k):
        if not self.kv_cache:  # the variant without a KV cache recomputes everything, honestly
            return super().score_continuations(prefix, continuations, top_k)
        out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True, logits_to_keep=1)
        cache = out.cache
        cache.batch_repeat_interleave(len(continuations))
        width = max(len(c) for c in continuations)
        batch = torch.tensor([c + [0] * (width - len(c)) for c in continuations], device=self.device)
        logits = self.model(input_ids=batch, cache=cache, use_cache=True).logits
        first = out.logits[0, -1:]
        return [self._entry(torch.cat([first, logits[i, : len(c) - 1]]), batch[i, : len(c)], top_k)
                for i, c in enumerate(continuations)]

    def device_memory(self):
        if self.device == "cuda":
            return torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()
        return None, None

    def is_out_of_memory(self, exc):
        return isinstance(exc, torch.OutOfMemoryError)


if __name__ == "__main__":
    serve(TorchEngine())
