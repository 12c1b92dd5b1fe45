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


def recall_at_k(sim: torch.Tensor, caption_image: torch.Tensor, ks=KS, block: int = 1024) -> dict:
    """``{("i2t" | "t2i", k): (hits, queries)}`` from sim [n_images, n_captions] and the image
    index of every caption. Computed in blocks of ``block`` queries."""
    sim = sim.float()
    caption_image = caption_image.long()
    n_img, n_cap = sim.shape
    i2t, t2i = [], []
    for s in range(0, n_img, block):
        rows = torch.arange(s, min(s + block, n_img))
        i2t.append(ranks(sim[rows], caption_image.unsqueeze(0) == rows.unsqueeze(1)))
    for s in range(0, n_cap, block):
        cols = torch.arange(s, min(s + block, n_cap))
        t2i.append(ranks(sim[:, cols].t(), torch.arange(n_img).unsqueeze(0) == caption_image[cols].unsqueeze(1)))
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
