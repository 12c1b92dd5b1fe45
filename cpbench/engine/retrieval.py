"""Image-text retrieval: a method's image x caption score matrix and recall at K both ways.

The captions play the part of class names: the score of image i and caption c is the method's
logit of "class" c for image i (its learned context prepended to the caption; per image for
CoCoOp/CPL). The matrix is built in blocks of captions (``set_classnames`` on each block) and
images, which is exact for methods whose class prompt depends only on the class name and shared
learned state, the methods with ``retrieval = True``; memory stays bounded for MSCOCO's 25,000
test captions.

Recall at K (percent of queries):
- image -> text: an image is a hit at K when one of its captions ranks in the top K of all
  captions; text -> image: a caption is a hit when its image ranks in the top K of all images.
- Rank of a query = 1 + the number of NON-matching candidates that score at least as high as its
  best-scoring match. Ties are therefore counted against the query (a matching candidate that ties
  with a non-matching one ranks below it): a model that scores everything equally gets R@K = 0,
  never a free hit, and the result does not depend on the candidates' order. Other matches of the
  same query (an image's other captions) never push its best match down.

Captions that are the same text after the tokenizer's cleaning (``caption_targets``) are one
target, as CPL's ``cname2lab`` makes them (one label per distinct caption): image -> text ranks the
distinct targets, and a target matches every image one of its captions belongs to, so identical
texts on different images never count as each other's misses (text -> image: each caption is a
query whose matches are all the images its text describes).
"""

from __future__ import annotations

from typing import Callable

import torch

KS = (1, 5, 10)
CAPTION_BLOCK = 1000  # captions per text pass


def ranks(scores: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """Rank of each row's best match: scores [Q, N] (query x candidate), match [Q, N] bool (each
    row has at least one True). Ties count against the query (see the module docstring)."""
    best = scores.masked_fill(~match, float("-inf")).max(dim=1).values
    return 1 + ((scores >= best.unsqueeze(1)) & ~match).sum(dim=1)


def caption_targets(captions: list[str], key: Callable[[str], object]) -> tuple[list[str], torch.Tensor]:
    """(the distinct targets, each caption's target index): captions with equal ``key`` (the
    tokenizer's cleaned tokens) are one target, kept as its first caption, in first-seen order."""
    index: dict[object, int] = {}
    targets, of = [], []
    for text in captions:
        k = key(text)
        if k not in index:
            index[k] = len(targets)
            targets.append(text)
        of.append(index[k])
    return targets, torch.tensor(of, dtype=torch.long)


def recall_at_k(sim: torch.Tensor, caption_image: torch.Tensor, ks=KS, block: int = 1024,
                caption_target: torch.Tensor | None = None) -> dict:
    """``{("i2t" | "t2i", k): (hits, queries)}`` from sim [n_images, n_targets], the image index of
    every caption and, where captions share a target, each caption's target index (``caption_targets``;
    default: every caption its own target). Computed in blocks of ``block`` queries."""
    sim = sim.float()
    caption_image = caption_image.long()
    n_img, n_tgt = sim.shape
    target = torch.arange(len(caption_image)) if caption_target is None else caption_target.long()
    match = torch.zeros(n_img, n_tgt, dtype=torch.bool)   # image i is described by target t
    match[caption_image, target] = True
    i2t, t2i = [], []
    for s in range(0, n_img, block):
        rows = torch.arange(s, min(s + block, n_img))
        i2t.append(ranks(sim[rows], match[rows]))
    for s in range(0, len(target), block):
        cols = target[s: s + block]
        t2i.append(ranks(sim[:, cols].t(), match[:, cols].t()))
    out = {}
    for direction, r in (("i2t", torch.cat(i2t)), ("t2i", torch.cat(t2i))):
        for k in ks:
            out[(direction, k)] = (int((r <= k).sum()), int(r.numel()))
    return out


@torch.no_grad()
def similarity(method, image_features: torch.Tensor, captions: list[str], device: torch.device, precision,
               batch_size: int = 100, on_block: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """[n_images, n_captions] scores (float32, CPU) of ``method`` for precomputed image features."""
    method.eval()
    blocks = []
    n_blocks = -(-len(captions) // CAPTION_BLOCK)
    for b in range(n_blocks):
        method.set_classnames(captions[b * CAPTION_BLOCK: (b + 1) * CAPTION_BLOCK])
        method.to(device=device, dtype=precision.param_dtype)
        with precision.autocast(device):
            context = method.eval_context()
            cols = [method.logits_from_features(image_features[i: i + batch_size].to(device), context).float().cpu()
                    for i in range(0, image_features.shape[0], batch_size)]
        blocks.append(torch.cat(cols))
        if on_block:
            on_block(b + 1, n_blocks)
    return torch.cat(blocks, dim=1)


def long_captions(captions: list[str], n_tokens: Callable[[str], int], context_length: int, reserved: int) -> int:
    """How many captions have more tokens than the context leaves them: ``context_length`` minus
    ``reserved`` (start and end tokens, the full stop, the learned context); the tokenizer cuts
    their ends."""
    room = context_length - reserved
    return sum(1 for text in captions if n_tokens(text) > room)
