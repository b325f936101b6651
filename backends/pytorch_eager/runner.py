"""pytorch_eager: Hugging Face transformers models in plain PyTorch, the reference backend.

Greedy decoding is a hand-written loop rather than model.generate(), so the runner sees each
step's token the moment it exists (for TTFT and inter-token latency) and so "KV cache off"
means exactly that: the whole sequence is recomputed at every step.

It runs on every transformers 5.x a prepared environment may hold: 5.24 renamed the forward's
`past_key_values` (and its output field) to `cache`, so the name is read from the loaded
model's signature, never assumed from a pin.
"""
import copy
import inspect
import os
import sys

sys.path.insert(0, os.environ.get("DEPLOY_EVAL_RUNNER_LIB", os.path.join(os.path.dirname(__file__), "..", "..")))

import torch  # noqa: E402
import transformers  # noqa: E402

from evaluator.runner import Engine, RunnerError, check_options, choice, score_groups_as_rows, serve  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving  # noqa: E402  (beside this file, in every image and on every target)
import techniques  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OPTIONS = {"dtype", "attn", "kv_cache", "device", "threads", "allow_pickle", "trust_remote_code", "weight_noise"}


class TorchEngine(Engine):
    def __init__(self):
        self.model = None
        self.device = "cpu"
        self.kv_cache = True
        self.cache_name = "cache"  # the forward's KV-cache keyword and output field (past_key_values before 5.24)
        self.batching = None       # transformers' continuous batching, from the first served request of a load

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
            "supports": {"score": True, "batch": True, "techniques": ["attention", "train", "flops", "kv"]},
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
        self._stop_serving()
        path = model["path"]
        if not os.path.isdir(path):
            raise RunnerError("bad_request", f"model folder {path} does not exist")
        if not options.get("allow_pickle") and not any(f.endswith(".safetensors") for f in os.listdir(path)):
            raise RunnerError("unsupported", f"{path} has no .safetensors weights; pickle checkpoints load only with allow_pickle")
        self.model = None
        self.model = self._from_pretrained(path, dict(
            dtype=DTYPES[dtype], attn_implementation=attn, use_safetensors=not options.get("allow_pickle"),
            trust_remote_code=bool(options.get("trust_remote_code")))).eval()
        self.cache_name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        if options.get("weight_noise"):
            self._damage(float(options["weight_noise"]))
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        return {
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "vocab_size": self.model.config.vocab_size,
            "device": self.device,
            "settings": {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                         "dtype": dtype, "attn": attn, "kv_cache": self.kv_cache, "cache_keyword": self.cache_name,
                         "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                         "continuous_batching": self._serving_settings(),
                         **({"serves_through": "transformers' continuous batching (its manager's thread, paged KV cache), "
                                               "not the runner's own decode loop"}
                            if model.get("scenario") == "serving" else {})},
        }

    def _from_pretrained(self, path: str, kwargs: dict):
        """The model on its device; an engine that loads it another way (quantized) overrides this."""
        return transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs).to(self.device)

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
        self._stop_serving()
        ids = torch.tensor(prompts, device=self.device)
        out = []
        past = None
        step_input = ids
        for _ in range(max_new_tokens):
            result = self.model(input_ids=step_input, **{self.cache_name: past}, use_cache=self.kv_cache, logits_to_keep=1)
            next_ids = result.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            out.append(next_ids.squeeze(1).tolist())  # .tolist() waits for the device
            on_token()
            if self.kv_cache:
                past, step_input = getattr(result, self.cache_name), next_ids
            else:
                ids = torch.cat([ids, next_ids], dim=1)
                step_input = ids
        return [list(row) for row in zip(*out)]

    @torch.inference_mode()
    def _score_rows(self, sequences, starts, top_k, want=None):
        """One forward for the whole batch, the log-probabilities gathered on the device: only
        the asked-for numbers come back to the host, never the full logits. Right padding is
        invisible to a causal model: real positions never attend to later ones, and padded
        positions are never read."""
        width = max(len(s) for s in sequences)
        batch = torch.tensor([s + [0] * (width - len(s)) for s in sequences], device=self.device)
        logits = self.model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        norm = torch.logsumexp(logits, dim=-1)
        picked = (logits.gather(2, batch[:, 1:, None])[..., 0] - norm).tolist()
        results = [{"logprobs": picked[i][start - 1: len(s) - 1], "top": [[] for _ in range(len(s) - start)]}
                   for i, (s, start) in enumerate(zip(sequences, starts))]
        if top_k:
            values, indices = (logits - norm[..., None]).topk(top_k, dim=-1)
            values, indices = values.tolist(), indices.tolist()
            for i, (s, start) in enumerate(zip(sequences, starts)):
                results[i]["top"] = [list(zip(indices[i][p], values[i][p])) for p in range(start - 1, len(s) - 1)]
        for i, (s, start) in enumerate(zip(sequences, starts)):
            if want:  # chosen ids per position, gathered on the device like the rest
                rows = logits[i, start - 1: len(s) - 1]
                ids = torch.tensor(want[i], device=self.device)
                results[i]["wanted"] = (rows.gather(1, ids) - norm[i, start - 1: len(s) - 1, None]).tolist()
        return results

    def score(self, sequences, start, top_k, want=None):
        self._stop_serving()
        return self._score_rows(sequences, [start] * len(sequences), top_k, want)

    def score_continuations(self, prefix, continuations, top_k):
        return self.score_groups([(prefix, continuations)], top_k)[0]

    def score_groups(self, groups, top_k):
        """Many HellaSwag items in few forwards, each context computed once. The variant without
        a KV cache scores every context + ending as its own row, as it would without one."""
        self._stop_serving()
        if top_k or not self.kv_cache:
            return score_groups_as_rows(groups, top_k, self._score_rows, max_tokens=SHARED_TOKENS)
        order = sorted(range(len(groups)), key=lambda i: len(groups[i][0]))  # similar contexts pad little
        answers = [None] * len(groups)
        for chunk in _cut(order, lambda i: len(groups[i][0])):
            for i, entries in zip(chunk, self._score_shared([groups[i] for i in chunk])):
                answers[i] = entries
        return answers

    @torch.inference_mode()
    def _score_shared(self, groups):
        """The contexts as one right-padded batch into a KV cache; the endings, sorted by length
        so that each batch of them pads little, as further batches after a copy of that cache
        holding each ending's own context. An attention mask hides each context's padding from
        its endings and position ids continue each context where it ends, so every ending sees
        exactly its own context (checked against plain rows in the tests)."""
        device, longest = self.device, max(len(p) for p, _ in groups)
        contexts = torch.tensor([p + [0] * (longest - len(p)) for p, _ in groups], device=device)
        out = self.model(input_ids=contexts, use_cache=True)
        ends = torch.tensor([len(p) for p, _ in groups], device=device)
        last = out.logits[torch.arange(len(groups), device=device), ends - 1].float()  # predicts each first token
        rows = [(g, c) for g, (_, conts) in enumerate(groups) for c in conts]
        by_length = sorted(range(len(rows)), key=lambda r: len(rows[r][1]))
        picked = [None] * len(rows)
        for batch in _cut(by_length, lambda r: longest + len(rows[r][1])):
            owner = torch.tensor([rows[r][0] for r in batch], device=device)
            cache = _rows_of(getattr(out, self.cache_name), owner)
            width = max(len(rows[r][1]) for r in batch)
            endings = torch.tensor([rows[r][1] + [0] * (width - len(rows[r][1])) for r in batch], device=device)
            visible = torch.cat([torch.arange(longest, device=device)[None, :] < ends[owner][:, None],
                                 torch.ones(len(batch), width, dtype=torch.bool, device=device)], dim=1)
            positions = ends[owner][:, None] + torch.arange(width, device=device)[None, :]
            logits = self.model(input_ids=endings, attention_mask=visible.long(), position_ids=positions,
                                **{self.cache_name: cache}, use_cache=True).logits.float()
            logits = torch.cat([last[owner][:, None], logits[:, :-1]], dim=1)  # row j: the distribution of token j
            values = (logits.gather(2, endings[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)).tolist()
            for r, row in zip(batch, values):
                picked[r] = row[: len(rows[r][1])]
        entries = iter({"logprobs": p, "top": [[] for _ in p]} for p in picked)
        return [[next(entries) for _ in conts] for _, conts in groups]

    def technique(self, name, params, batches):
        self._stop_serving()
        if name == "attention":
            return techniques.attention(self.device, params)
        if name == "train":
            return techniques.train(self.model, self.device, batches, params)
        if name == "kv":
            return techniques.kv(self, params)
        return techniques.flops(self.model, self.device, params)

    def _serving_settings(self):
        """What serving would run with (recorded at load), or why it cannot."""
        if not self.kv_cache:
            return None
        try:
            return serving.settings(self.model)
        except (RunnerError, AttributeError, TypeError) as exc:  # an old transformers, or a config without the sizes
            return {"unavailable": str(exc)[:200]}

    def submit(self, rid, prompt, max_new_tokens):
        if not self.kv_cache:
            raise RunnerError("unsupported", "continuous batching keeps a paged KV cache: a kv_cache=nokv variant has "
                              "nothing to serve with")
        if self.batching is None:
            self.batching = serving.ContinuousBatching(self.model)
        self.batching.submit(rid, prompt, max_new_tokens)

    def step(self, wait_s=None):
        return self.batching.step(wait_s)

    def request_stats(self, rid):
        return self.batching.request_stats(rid) if self.batching else {}

    def _stop_serving(self):
        """Before any other use of the model: the manager's thread shares it, and may have set a
        paged attention implementation that a plain forward must not run."""
        if self.batching is not None:
            self.batching.stop()
            self.batching = None

    def close(self):
        self._stop_serving()

    def device_memory(self):
        if self.device == "cuda":
            return torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()
        return None, None

    def is_out_of_memory(self, exc):
        return isinstance(exc, torch.OutOfMemoryError)


def _rows_of(cache, owner: torch.Tensor):
    """A new cache holding the contexts' rows `owner` (each ending batch's own contexts), the
    contexts' cache left as it is for the next batch. Indexing makes the new rows, and a forward
    only rebinds a layer's tensors, never writes into them: copying the layer objects suffices,
    not every context's keys and values (what a deep copy did, once per ending batch)."""
    if not hasattr(cache, "layers"):  # another cache class: copy it whole
        cache = copy.deepcopy(cache)
    else:
        cache = copy.copy(cache)
        cache.layers = [copy.copy(layer) for layer in cache.layers]
    cache.batch_select_indices(owner)
    return cache


SHARED_TOKENS = 16384  # padded tokens per batch of contexts or of endings (an ending counts its context's keys)


def _cut(order: list[int], size) -> list[list[int]]:
    """`order` cut into batches whose padded size (rows x the longest row's `size`) stays
    within SHARED_TOKENS: larger ones pad more than they save; sorted input pads little."""
    batches, batch, longest = [], [], 0
    for i in order:
        if batch and (len(batch) + 1) * max(longest, size(i)) > SHARED_TOKENS:
            batches.append(batch)
            batch, longest = [], 0
        batch.append(i)
        longest = max(longest, size(i))
    return batches + [batch] if batch else batches


if __name__ == "__main__":
    serve(TorchEngine())
