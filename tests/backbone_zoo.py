"""Tiny random models of every open_clip family, built offline, for the per-family tests.

Each entry is the family's real open_clip config shape (the same model class, text-tower options,
pooling, tokenizer kind and timm trunk) at toy size: 2 layers, width 32, 32-pixel images. timm
trunks are shrunk by passing size overrides to timm's own entrypoint (open_clip's ``TimmModel``
wrapper and the trunk class stay the real ones). Hugging Face tokenizers are built here with the
``tokenizers`` library (SentencePiece-like Unigram for SigLIP's T5 and MetaCLIP 2's XLM, WordPiece
for CLIPA's BERT, byte-level BPE for roberta) and saved as tokenizer.json + tokenizer_config.json,
which open_clip's ``HFTokenizer`` loads with ``AutoTokenizer`` exactly as it loads a hub tokenizer.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from unittest import mock

import torch

# the words the tokenizers know as whole pieces (everything else falls back to characters)
WORDS = ("X a photo of the this is an image picture x red blue green square circle triangle small big dog cat "
         "bird car airliner tabby fox golden retriever sports on grey bad sculpture rendering many with "
         "striped much longer sentence about triangle").split()
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"

TEXT = dict(context_length=16, width=32, heads=2, layers=2)
VIT = dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16)
TRUNK = dict(img_size=32, depth=2, embed_dim=32, num_heads=2)


def _unigram(folder: Path, specials: list[str], template: str, extra: dict) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pieces = [(s, 0.0) for s in specials] + [("▁" + w, -2.0) for w in WORDS] + [("▁", -6.0)]
    pieces += [(c, -8.0) for c in CHARS]
    tok = Tokenizer(models.Unigram(pieces, unk_id=specials.index("<unk>"), byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(s, specials.index(s)) for s in specials if s in template])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, **extra}))


def _wordpiece(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {t: i for i, t in enumerate(specials + list(WORDS) + list(CHARS) + ["##" + c for c in CHARS] + [".", ","])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, "pad_token": "[PAD]",
         "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}))


def make_tokenizer(kind: str, folder: Path) -> Path:
    """A Hugging Face tokenizer folder: ``t5`` (SigLIP: no start token, ``</s>``, pad 0), ``gemma``
    (SigLIP 2-like: ``<bos>`` ... ``<eos>``), ``xlm`` (MetaCLIP 2: ``<s>`` ... ``</s>`` = id 2, pad
    1), ``bert`` (CLIPA: [CLS] ... [SEP], pad 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "t5":
        _unigram(folder, ["<pad>", "</s>", "<unk>"], "$A </s>",
                 {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"})
    elif kind == "gemma":
        _unigram(folder, ["<pad>", "<eos>", "<bos>", "<unk>"], "<bos> $A <eos>",
                 {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"})
    elif kind == "xlm":
        _unigram(folder, ["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>",
                 {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"})
    elif kind == "bert":
        _wordpiece(folder)
    else:
        raise ValueError(kind)
    return folder


def _roberta(folder: Path) -> Path:
    """A tiny roberta config (the Hugging Face text tower) with its tokenizer (XLM-like pieces)."""
    make_tokenizer("xlm", folder)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "roberta", "vocab_size": 200, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 40, "pad_token_id": 1,
        "bos_token_id": 0, "eos_token_id": 2, "type_vocab_size": 1}))
    return folder


def _text(**kw) -> dict:
    return {**TEXT, "vocab_size": 49408, **kw}


def _hf_text(tokenizer: str, **kw) -> dict:
    return {**TEXT, "vocab_size": 200, "hf_tokenizer_name": tokenizer, **kw}


# family -> (model config with {tok:KIND} placeholders for tokenizer folders, timm size overrides)
FAMILIES: dict[str, tuple[dict, dict]] = {
    "CLIP ViT": ({"embed_dim": 32, "vision_cfg": VIT, "text_cfg": _text()}, {}),
    "ResNet": ({"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
                "text_cfg": _text()}, {}),
    "ConvNeXt": ({"embed_dim": 32, "vision_cfg": {"timm_model_name": "convnext_tiny", "timm_pool": "", "timm_proj": "linear",
                                                  "image_size": 32}, "text_cfg": _text()},
                 {"depths": (1, 1, 1, 1), "dims": (8, 16, 16, 32)}),
    "EVA": ({"embed_dim": 32, "custom_text": True,
             "vision_cfg": {"timm_model_name": "eva02_base_patch16_clip_224", "timm_pool": "token", "timm_proj": None,
                            "image_size": 32}, "text_cfg": _text()}, TRUNK),
    "PE-Core": ({"embed_dim": 32, "custom_text": True,
                 "vision_cfg": {"timm_model_name": "vit_pe_core_tiny_patch16_384", "timm_pool": "map",
                                "timm_proj": None, "image_size": 32}, "text_cfg": _text()}, TRUNK),
    "SigLIP": ({"embed_dim": 32, "custom_text": True, "init_logit_bias": -10,
                "vision_cfg": {"timm_model_name": "vit_base_patch16_siglip_224", "timm_pool": "map", "timm_proj": "none",
                               "image_size": 32},
                "text_cfg": _hf_text("{tok:t5}", no_causal_mask=True, pool_type="last", proj_bias=True,
                                     tokenizer_kwargs={"clean": "canonicalize"}, norm_kwargs={"eps": 1e-6})}, TRUNK),
    "SigLIP 2": ({"embed_dim": 32, "custom_text": True, "init_logit_bias": -10,
                  "vision_cfg": {"timm_model_name": "vit_base_patch16_siglip_224", "timm_pool": "map",
                                 "timm_proj": "none", "image_size": 32},
                  "text_cfg": _hf_text("{tok:gemma}", no_causal_mask=True, pool_type="last", proj_bias=True,
                                       tokenizer_kwargs={"clean": "canonicalize"}, norm_kwargs={"eps": 1e-6},
                                       act_kwargs={"approximate": "tanh"})}, TRUNK),
    "MobileCLIP": ({"embed_dim": 32, "custom_text": True,
                    "vision_cfg": {"timm_model_name": "fastvit_mci0", "timm_pool": "avg", "timm_proj": None,
                                   "image_size": 32},
                    "text_cfg": _text(no_causal_mask=True)},
                   {"layers": (1, 1, 1, 1), "embed_dims": (8, 16, 16, 32)}),
    "CoCa": ({"embed_dim": 32, "custom_text": True,
              "multimodal_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                                 "attn_pooler_heads": 2},
              "vision_cfg": {**VIT, "attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2,
                             "output_tokens": True},
              "text_cfg": _text(embed_cls=True, output_tokens=True)}, {}),
    "CLIPA": ({"embed_dim": 32,
               "vision_cfg": {**VIT, "pool_type": "avg", "final_ln_after_pool": True, "no_ln_pre": True},
               "text_cfg": _hf_text("{tok:bert}", no_causal_mask=True, pool_type="last",
                                    tokenizer_kwargs={"strip_sep_token": True})}, {}),
    "MetaCLIP 2": ({"embed_dim": 32, "vision_cfg": VIT,
                    "text_cfg": _hf_text("{tok:xlm}", pool_type="eos", eos_id=2)}, {}),
    "Hugging Face text tower": ({"embed_dim": 32, "vision_cfg": VIT,
                                 "text_cfg": {"hf_model_name": "{tok:roberta}", "hf_tokenizer_name": "{tok:roberta}",
                                              "hf_proj_type": "mlp", "hf_pooler_type": "mean_pooler",
                                              "context_length": 16}}, {}),
}


def _fill(obj, folders: dict[str, str]):
    if isinstance(obj, dict):
        return {k: _fill(v, folders) for k, v in obj.items()}
    if isinstance(obj, str) and obj.startswith("{tok:"):
        return folders[obj[5:-1]]
    return obj


def tokenizer_folders(root: Path) -> dict[str, str]:
    out = {k: str(make_tokenizer(k, root / k)) for k in ("t5", "gemma", "xlm", "bert")}
    out["roberta"] = str(_roberta(root / "roberta"))
    return out


def config(family: str, folders: dict[str, str]) -> dict:
    return _fill(copy.deepcopy(FAMILIES[family][0]), folders)


@contextmanager
def small_timm(overrides: dict):
    """timm's entrypoints, with size overrides (the real classes, fewer and narrower layers)."""
    import timm

    if not overrides:
        yield
        return
    with mock.patch.object(timm, "create_model", partial(timm.create_model, **overrides)):
        yield


def build(family: str, folders: dict[str, str], seed: int = 0):
    """(cpbench Backbone, open_clip model) of one family, random weights seeded by ``seed``."""
    from cpbench.models import tokenizers
    from cpbench.models.backbone import Backbone, BackboneSpec, Preprocess, build_model

    cfg = config(family, folders)
    torch.manual_seed(seed)
    with small_timm(FAMILIES[family][1]):
        model = build_model(cfg)
    tok = tokenizers.load(family, cfg)
    pre = Preprocess.from_open_clip({}, 32)
    return Backbone(model, tok.context_length, pre, BackboneSpec(family, "none"), tokenizer=tok, config=cfg), model
