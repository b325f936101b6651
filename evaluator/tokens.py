"""Tokenize once, on the host: every backend gets the same token ids.

The reference tokenizer is the `tokenizers` library with the model's tokenizer.json, special
tokens off; BOS is added here, from config.json. (For stories260K this equals SentencePiece
on every HellaSwag and WikiText line; transformers' AutoTokenizer does not: data/README.md.)
llama-perplexity's definition tokenizes the way llama.cpp does instead: `encode_as_llamacpp`.
"""
import hashlib
import json
from functools import cached_property
from pathlib import Path

from evaluator.catalog.backends import REPO
from evaluator.errors import UserError

PROMPT_TEXT = REPO / "data" / "wikitext-2" / "wiki.test.raw"


class HostTokenizer:
    def __init__(self, hf_path: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(hf_path / "tokenizer.json"))
        config = json.loads((hf_path / "config.json").read_text())
        bos = config.get("bos_token_id")
        if bos is None:
            bos = self._tok.token_to_id("<s>")
        if bos is None:
            raise UserError(f"{hf_path}: config.json has no bos_token_id and the tokenizer no <s>")
        self.bos = int(bos[0] if isinstance(bos, list) else bos)
        self.context_length = config.get("max_position_embeddings")
        self._json = hf_path / "tokenizer.json"

    def fingerprint(self) -> str:
        """The tokenizer as it encodes (vocabulary, merges, normalizer, BOS): two models with the
        same fingerprint see the same token ids, so their windows and distributions pair."""
        return hashlib.sha256(self._tok.to_str().encode() + f"|bos {self.bos}".encode()).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_cached(self, key: str, text: str, encode=None) -> list[int]:
        """Encode a large text once per run (WikiText-2 is ~800K tokens), with `encode` or encode()."""
        cache = self.__dict__.setdefault("_encoded", {})
        if key not in cache:
            cache[key] = (encode or self.encode)(text)
        return cache[key]

    def encode_as_llamacpp(self, text: str) -> list[int]:
        """`text` as llama.cpp's tokenizer reads it (llama-perplexity's tokens): SentencePiece
        vocabularies get no whitespace normalization and exactly one leading space (llama.cpp's
        add_space_prefix), where tokenizer.json strips, collapses runs of spaces, and skips the
        prefix when the text already starts with one. Byte-level vocabularies are unchanged.
        For stories260K this equals llama.cpp's own tokenizer on all of WikiText-2 (a test)."""
        from tokenizers import Tokenizer

        spec = json.loads(self._json.read_text())
        norm = spec.get("normalizer") or {}
        steps = [n for n in (norm.get("normalizers") if norm.get("type") == "Sequence" else [norm]) if n
                 and n.get("type") != "Strip" and not (n.get("type") == "Replace" and n.get("pattern") == {"Regex": " {2,}"})]
        spec["normalizer"] = {"type": "Sequence", "normalizers": steps} if steps else None
        pre = spec.get("pre_tokenizer") or {}
        if pre.get("type") == "Metaspace" and pre.get("prepend_scheme") != "never":
            pre["prepend_scheme"], text = "never", " " + text
        return Tokenizer.from_str(json.dumps(spec)).encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    @cached_property
    def _prompt_source(self) -> list[int]:
        # The first 512 KB of WikiText-2 test: real text, ~120,000 tokens for Llama 3's tokenizer,
        # enough for the throughput pool (64 prompts) up to 1,024 tokens each.
        return self.encode(PROMPT_TEXT.read_text(encoding="utf-8")[:524288])

    def prompts(self, length: int, count: int) -> list[list[int]]:
        """`count` distinct prompts of exactly `length` ids each, BOS first."""
        body = length - 1
        source = self._prompt_source
        if body * count > len(source):
            raise UserError(f"{count} distinct prompts of {length} tokens need more text than the prompt source holds "
                            f"({len(source)} tokens): lower --prompt-tokens")
        return [[self.bos] + source[i * body:(i + 1) * body] for i in range(count)]
