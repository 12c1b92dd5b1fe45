"""A backbone's own tokenizer (open_clip's, chosen from the model config as ``open_clip.get_tokenizer``
does) and the facts prompt learning needs from it.

- ``start``: the special tokens before the first word (CLIP's start token, BERT's ``[CLS]``,
  XLM's ``<s>``: 1; T5/Gemma SentencePiece as SigLIP uses it: 0). Learned context replaces the
  tokens ``start .. start + n_ctx - 1``.
- ``pad_id``: the padding id (``Backbone.eot`` finds each row's last real token with it).
- ``n_tokens(text)``: the tokens of a text without special tokens.

Hugging Face tokenizers (SigLIP, SigLIP 2, CLIPA, MetaCLIP 2 worldwide, the Hugging Face text
towers) need the ``transformers`` package and the tokenizer's files: ``check`` says in one line
what to install or fetch before anything loads; a cached tokenizer loads without the network.
``local-dir:`` folders use the tokenizer files inside them (open_clip's convention), else the
config's ``hf_tokenizer_name``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from cpbench.errors import UserError

TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def hf_source(cfg: dict, folder: Path | None = None) -> str | None:
    """Where a Hugging Face tokenizer comes from: the local folder or the hub name; None = CLIP BPE."""
    name = cfg.get("text_cfg", {}).get("hf_tokenizer_name")
    if not name:
        return None
    if folder is not None and any((folder / f).is_file() for f in TOKENIZER_FILES):
        return str(folder)
    return name


def _need_transformers(backbone: str, what: str) -> None:
    if importlib.util.find_spec("transformers") is None:
        raise UserError(f"{backbone}'s {what} needs the transformers package: pip install 'cpbench[hf]' "
                        "(or pip install transformers)")


def _repo_plan(backbone: str, repo: str, files: tuple[str, ...], what: str, probe=None) -> str:
    from cpbench.models import hub

    how = hub.repo_plan(repo, files, **({"probe": probe} if probe else {}))
    if how.startswith("unavailable"):
        raise UserError(f"{backbone}'s {what} ({repo} on the Hugging Face hub) is not in the local cache and "
                        f"{how.split(': ', 1)[1]}; fetch it once where the hub is reachable: hf download {repo} "
                        "(it lands in the cache, $HF_HOME, default ~/.cache/huggingface)")
    return how


def check(backbone: str, cfg: dict, folder: Path | None = None, probe=None) -> dict[str, str]:
    """One line if the tokenizer (or a Hugging Face text tower's config) cannot be had now; else how
    each loads: {repo: "cache" | "download"} (a local folder needs nothing)."""
    plans: dict[str, str] = {}
    t = cfg.get("text_cfg", {})
    src = hf_source(cfg, folder)
    if src is not None:
        _need_transformers(backbone, "tokenizer")
        if not Path(src).is_dir():
            plans[src] = _repo_plan(backbone, src, TOKENIZER_FILES, "tokenizer", probe)
    if t.get("hf_model_name"):
        _need_transformers(backbone, "text tower")
        if not Path(t["hf_model_name"]).is_dir():
            plans[t["hf_model_name"]] = _repo_plan(backbone, t["hf_model_name"], ("config.json",),
                                                   "text tower config", probe)
    return plans


class PromptTokenizer:
    """open_clip's tokenizer for one model plus ``start`` / ``pad_id`` / ``n_tokens`` (module docstring)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        hf = self.hf
        self.pad_id = int(hf.pad_token_id) if hf is not None and hf.pad_token_id is not None else 0
        self._start_at: int | None = None

    @property
    def hf(self):
        """The Hugging Face tokenizer inside open_clip's HFTokenizer (None for CLIP's BPE)."""
        return getattr(self.tokenizer, "tokenizer", None)

    @property
    def context_length(self) -> int:
        return int(self.tokenizer.context_length)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (cleaned as the tokenizer cleans)."""
        if self.hf is None:
            return self.tokenizer.encode(text)
        return list(self.hf(self.tokenizer.clean_fn(text), add_special_tokens=False).input_ids)

    def n_tokens(self, text: str) -> int:
        return len(self.encode(text))

    @property
    def start(self) -> int:
        """Where the first word sits (found once, when prompts are built: a Hugging Face text
        tower, which takes no prompts, never asks)."""
        if self._start_at is None:
            self._start_at = self._start()
        return self._start_at

    def _start(self) -> int:
        content = self.encode("photo")
        row = self(["photo"])[0].tolist()
        for i in range(len(row) - len(content) + 1):
            if row[i: i + len(content)] == content:
                return i
        raise UserError("this backbone's tokenizer does not keep a word's tokens inside a sentence; "
                        "cpbench cannot place learned context in its prompts")


def load(backbone: str, cfg: dict, folder: Path | None = None, plans: dict[str, str] | None = None) -> PromptTokenizer:
    """The model's tokenizer, as ``open_clip.get_tokenizer`` builds it for this config."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    t = cfg.get("text_cfg", {})
    ctx = int(t.get("context_length", 77))
    kwargs = dict(t.get("tokenizer_kwargs") or {})
    src = hf_source(cfg, folder)
    if src is None:
        return PromptTokenizer(SimpleTokenizer(context_length=ctx, **kwargs))
    plans = check(backbone, cfg, folder) if plans is None else plans
    if plans.get(src) == "cache":
        kwargs["local_files_only"] = True
    try:
        tok = HFTokenizer(src, context_length=ctx, tokenizer_mode=t.get("tokenizer_mode"), **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"{backbone}'s tokenizer {src} did not load ({str(exc).splitlines()[0][:200]}); "
                        f"fetch it again: hf download {src}") from None
    return PromptTokenizer(tok)
