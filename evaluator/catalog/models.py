"""Model resolution: a catalog name, a hub id or a local path becomes files on this machine.

Hub models go through huggingface_hub's own cache (HF_HUB_CACHE / HF_HOME), so a model
downloaded once by any Hugging Face tool is found here without the network.
"""
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from evaluator.catalog import schema, synthetic
from evaluator.catalog.backends import REPO
from evaluator.errors import UserError, unknown

CATALOG = Path(__file__).with_name("models.toml")
# What a causal LM needs; *.bin / *.pt (pickle) are left out on purpose: safetensors only.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt"]


@dataclass(frozen=True)
class Model:
    name: str
    hf_path: Path | None       # Hugging Face folder (config.json, weights, tokenizer.json)
    gguf_path: Path | None
    source: str                # "catalog", "hub:<id>@<revision>", "path"
    reference_greedy: Path | None = None
    synthetic: bool = False    # random weights (catalog/synthetic.py): speed and memory only

    def artifact(self, fmt: str) -> Path | None:
        return {"hf": self.hf_path, "gguf": self.gguf_path}.get(fmt)

    @property
    def formats(self) -> tuple:
        return tuple(f for f in ("hf", "gguf") if self.artifact(f))

    def config(self) -> dict:
        return json.loads((self.hf_path / "config.json").read_text()) if self.hf_path else {}

    def weight_files(self) -> list[Path]:
        if self.hf_path:
            return sorted(p for p in self.hf_path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
        return [self.gguf_path]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.weight_files())

    def content_hash(self) -> str:
        """sha256 over every file of the model, names included: a changed model is a new key."""
        h = hashlib.sha256()
        files = sorted(p for p in self.hf_path.iterdir() if p.is_file()) if self.hf_path else []
        files += [self.gguf_path] if self.gguf_path else []
        for p in files:
            h.update(p.name.encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
        return h.hexdigest()


def catalog() -> dict[str, dict]:
    entries = tomllib.loads(CATALOG.read_text())
    for name, entry in entries.items():
        schema.parse(schema.CatalogEntry, entry, f"models.toml [{name}]")
    return entries


def _check_hf_folder(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face model folder: it has no config.json")
    if not (path / "tokenizer.json").is_file():
        raise UserError(f"{path} has no tokenizer.json: deploy-eval tokenizes once on the host with it")


def _from_hub(name: str, repo_id: str, revision: str | None) -> Path:
    """Cache first, so an offline machine with the model never touches the network."""
    from huggingface_hub import snapshot_download

    # Read the cache location now, not at huggingface_hub's import (it freezes its constants then).
    cache = os.path.expanduser(os.environ.get("HF_HUB_CACHE")
                               or os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub"))
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS, cache_dir=cache,
                                      local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        why = "HF_HUB_OFFLINE is set"
    else:
        try:
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS, cache_dir=cache))
        except Exception as exc:
            why = f"the hub could not be reached ({type(exc).__name__})"
    raise UserError(
        f"model {name!r} ({repo_id}) is not in the local Hugging Face cache ({cache}) and {why}; "
        f"download it on a machine with access (`hf download {repo_id}`) and copy the cache, "
        f"or pass --model-path /path/to/folder"
    )


def is_synthetic(name: str, model_path: str | None = None) -> bool:
    if model_path:
        return False
    return name.startswith("synthetic:") or "synthetic" in catalog().get(name, {})


def _synthetic(name: str, shape: dict) -> Model:
    """Build (once, cached by its config) and return a synthetic model."""
    from tqdm import tqdm

    from evaluator.store import ARTIFACTS

    cfg = synthetic.config(shape)
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    folder = ARTIFACTS / "synthetic" / f"{name.replace(':', '-').replace('=', '').replace(',', '_')[:80]}-{key}"
    if not (folder / "model.safetensors").is_file():
        gib = synthetic.parameters(cfg) * 4 / 2**30
        print(f"building synthetic model {name} ({synthetic.parameters(cfg) / 1e6:,.1f} M parameters, "
              f"{gib:.2f} GiB fp32) in {folder} (once)", flush=True)
        with tqdm(total=1, unit="tensor", leave=False) as bar:
            def step(done, total):
                bar.total = total
                bar.update(1)
            synthetic.build(cfg, folder, step)
    return Model(name, folder, None, "synthetic", synthetic=True)


def resolve(name: str, model_path: str | None = None) -> Model:
    """A catalog name, an `org/name` hub id, `synthetic:<shape>`, or any label with --model-path."""
    if name.startswith("synthetic:") and not model_path:
        return _synthetic(name, synthetic.parse_shape(name.split(":", 1)[1]))
    if model_path:
        path = Path(model_path).expanduser().resolve()
        if not path.exists():
            raise UserError(f"--model-path {model_path}: no such file or folder")
        if path.is_file():
            if path.suffix != ".gguf":
                raise UserError(f"--model-path {model_path}: a file must be a .gguf; otherwise give a Hugging Face folder")
            raise UserError(f"--model-path {model_path}: a bare GGUF has no tokenizer.json for host-side tokenizing; "
                            "give the Hugging Face folder it came from")
        _check_hf_folder(path)
        ggufs = sorted(path.glob("*.gguf"))
        return Model(name, path, ggufs[0] if ggufs else None, "path")
    entries = catalog()
    if name not in entries and "/" in name:
        entries[name] = {"hub": name}
    if name not in entries:
        raise unknown("model", name, entries)
    entry = entries[name]
    if "synthetic" in entry:
        return _synthetic(name, entry["synthetic"])
    if "path" in entry:
        hf = REPO / entry["path"]
        _check_hf_folder(hf)
        return Model(name, hf, REPO / entry["gguf"] if "gguf" in entry else None, "catalog",
                     REPO / entry["reference_greedy"] if "reference_greedy" in entry else None)
    path = _from_hub(name, entry["hub"], entry.get("revision"))
    _check_hf_folder(path)
    ggufs = sorted(path.glob("*.gguf"))
    return Model(name, path, ggufs[0] if ggufs else None, f"hub:{entry['hub']}@{path.name}")
