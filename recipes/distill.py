"""Distil stories260K into a student that every CPU engine accepts: the recipe behind
data/stories260k-student/ (run it with `just distill`; it takes about 15 minutes on
two cores and rewrites that folder).

Why a student: stories260K's attention heads are 8 wide and its hidden sizes (64, 172) are not
multiples of 256, so vLLM's CPU kernels refuse it and llama.cpp's k-quants fall back on most
tensors. The student keeps the teacher's tokenizer and architecture (Llama) with shapes every
engine takes: heads 32 wide, hidden and FFN sizes multiples of 256 (k-quants' super-blocks,
GPTQ/AWQ groups of 128), about 3.3 M parameters.

What it learns from: text the teacher itself samples from BOS (temperature 1, no top-k, seeded),
with the teacher's whole next-token distribution at every position as the target (soft-label
distillation, KL(teacher || student)). No other text is involved, so the evaluation sets
(HellaSwag, WikiText-2) stay disjoint from the training data. 5% of the sampled sequences are
held out; the log reports the student's KL from the teacher and both models' cross-entropy on
them.

Checked before anything is written: the student's greedy text from BOS (256 tokens, the
catalog's published reference) is the same with and without its KV cache, and the weights
reload to the same logits.
"""
import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "data" / "stories260k" / "hf"
OUT = REPO / "data" / "stories260k-student"
BOS = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")

STUDENT = dict(vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
               num_key_value_heads=4, head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
               hidden_act="silu", tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


@torch.no_grad()
def sample(teacher, sequences: int, length: int, seed: int, batch: int = 256) -> torch.Tensor:
    """`sequences` texts of `length` tokens sampled from the teacher, each starting at BOS."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, sequences, batch):
        n = min(batch, sequences - start)
        ids = torch.full((n, 1), BOS)
        step = teacher(input_ids=ids, use_cache=True)
        for _ in range(length - 1):
            nxt = torch.multinomial(torch.softmax(step.logits[:, -1].float(), -1), 1, generator=gen)
            ids = torch.cat([ids, nxt], 1)
            step = teacher(input_ids=nxt, past_key_values=step.past_key_values, use_cache=True)
        out.append(ids)
        print(f"sampled {start + n}/{sequences} sequences", flush=True)
    return torch.cat(out)


def kl_and_ce(student, teacher, ids: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """(KL(teacher || student) per token, for the gradient; student and teacher cross-entropy
    per token on the sampled next tokens, in nats)."""
    with torch.no_grad():
        t = F.log_softmax(teacher(input_ids=ids).logits[:, :-1].float(), -1)
    s = F.log_softmax(student(input_ids=ids).logits[:, :-1].float(), -1)
    kl = F.kl_div(s, t, log_target=True, reduction="sum") / s.shape[0] / s.shape[1]
    target = ids[:, 1:, None]
    return kl, -s.gather(-1, target).mean().item(), -t.gather(-1, target).mean().item()


@torch.no_grad()
def greedy(model, new_tokens: int, cache: bool) -> list[int]:
    ids = torch.tensor([[BOS]])
    if cache:
        step = model(input_ids=ids, use_cache=True)
        for _ in range(new_tokens):
            nxt = step.logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            step = model(input_ids=nxt, past_key_values=step.past_key_values, use_cache=True)
    else:
        for _ in range(new_tokens):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids[0, 1:].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=8192, help="teacher samples (default 8192)")
    ap.add_argument("--length", type=int, default=256, help="tokens per sample, BOS included (default 256)")
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps (default 1500)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, cosine to 10%% (default 2e-3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT.relative_to(REPO)})")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(args.seed)
    t0 = time.time()
    log_lines = []

    def log(line: str) -> None:
        line = f"[{time.time() - t0:7.1f} s] {line}"
        print(line, flush=True)
        log_lines.append(line)

    teacher = LlamaForCausalLM.from_pretrained(TEACHER, dtype=torch.float32).eval()
    data = sample(teacher, args.sequences, args.length, args.seed + 1)
    held = max(1, len(data) // 20)
    train, val = data[held:], data[:held]
    log(f"teacher samples: {len(data)} x {args.length} tokens from BOS (temperature 1, seed {args.seed + 1}); "
        f"{len(train)} for training, {held} held out")

    student = LlamaForCausalLM(LlamaConfig(**STUDENT)).train()
    params = sum(p.numel() for p in student.parameters())
    log(f"student: {params:,} parameters, {json.dumps(STUDENT)}")
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
    gen = torch.Generator().manual_seed(args.seed + 2)
    for step in range(1, args.steps + 1):
        batch = train[torch.randint(0, len(train), (args.batch,), generator=gen)]
        kl, ce, teacher_ce = kl_and_ce(student, teacher, batch)
        opt.zero_grad(set_to_none=True)
        kl.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or step == 1:
            log(f"step {step}/{args.steps}: KL {kl.item():.4f}, student CE {ce:.4f}, teacher CE {teacher_ce:.4f} nats/token, "
                f"lr {sched.get_last_lr()[0]:.2e}")
    student.eval()
    with torch.no_grad():
        parts = [kl_and_ce(student, teacher, val[i: i + 32]) for i in range(0, len(val), 32)]
    kl = sum(p[0].item() * len(val[i * 32: i * 32 + 32]) for i, p in enumerate(parts)) / len(val)
    ce = sum(p[1] * len(val[i * 32: i * 32 + 32]) for i, p in enumerate(parts)) / len(val)
    teacher_ce = sum(p[2] * len(val[i * 32: i * 32 + 32]) for i, p in enumerate(parts)) / len(val)
    log(f"held out ({held} sequences): KL(teacher || student) {kl:.4f} nats/token; cross-entropy student {ce:.4f}, "
        f"teacher {teacher_ce:.4f} nats/token")

    tokens = greedy(student, 256, cache=True)
    if tokens != greedy(student, 256, cache=False):
        sys.exit("the student's greedy text differs with and without its KV cache: not written")
    from tokenizers import Tokenizer
    text = Tokenizer.from_file(str(TEACHER / "tokenizer.json")).decode(tokens)
    log(f"greedy from BOS, 256 tokens, the same with and without the KV cache: {text[:80]!r}...")

    hf = args.out / "hf"
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(tmp / "hf", safe_serialization=True)
    reloaded = LlamaForCausalLM.from_pretrained(tmp / "hf", dtype=torch.float32).eval()
    probe = val[:2]
    with torch.no_grad():
        if not torch.equal(reloaded(input_ids=probe).logits, student(input_ids=probe).logits):
            sys.exit("the saved weights do not reload to the same logits: not written")
    for name in TOKENIZER_FILES:
        shutil.copy(TEACHER / name, tmp / "hf" / name)
    (tmp / "expected_greedy_t0_256.txt").write_text(text)
    shutil.copy(TEACHER.parent / "LICENSE", tmp / "LICENSE")
    log(f"done in {time.time() - t0:.0f} s on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"torch {torch.__version__}, transformers {transformers.__version__}")
    (tmp / "train.log").write_text("\n".join(log_lines) + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    print(f"wrote {args.out} ({hf.relative_to(REPO) if hf.is_relative_to(REPO) else hf})")


if __name__ == "__main__":
    main()
