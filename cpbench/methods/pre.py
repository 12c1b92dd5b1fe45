"""PRE (Pham et al., arXiv 2309.07760): CoOp with a reparameterisation encoder (methods.md §3.4).

The context fed to the text encoder is ctx' = Φ(ctx) instead of the raw learned vectors; Φ is a
small prompt encoder with a residual connection, applied once per forward and broadcast to all
classes exactly as CoOp (class token at end). Options (official ``TRAINER.PRE.*``):

- ``encoder``: ``LSTM1`` (default) — one shared 1-layer bidirectional LSTM, input D, hidden D/2
  per direction (512 → 2×256 for ViT-B/16), run over the M context tokens as one length-M
  sequence; ``LSTM2`` — the same with 2 layers (dropout 0.05 between them, as the official
  ``dropout=0.05`` argument, which has no effect at 1 layer); ``MLP1`` — Linear(D→64)–ReLU–
  Linear(64→D); ``MLP2`` — that stack twice (the official code repeats the same layer objects,
  so the two stacks SHARE weights; kept). The official ``transformer`` option does not run
  (undefined ``max_length``) and is not offered.
- ``residual`` (default true): Φ(ctx) = encoder(ctx) + ctx.
- ``separate`` (default false): one encoder per context token, each over a length-1 sequence.
  The official code keeps these encoders in a plain dict, never registered with the module: they
  are never optimised, never saved and random (PyTorch's default init from the global RNG). That
  is reproduced: with ``separate: true`` only ``ctx`` learns, the per-token encoders are frozen at
  a random init drawn from their own generator seeded by ``separate_seed`` (so training, a
  resumed run and every evaluation rebuild the same encoders; they are not in the checkpoint).
- ``bottleneck`` (64): the MLP width. The official PromptLearner passes ``layer_norm=False`` and
  ``dropout=0``, so the MLP has neither.

Loss: CE only. Precision: ``amp`` by default (the official default path; its fp16/fp32 branch
crashes). Inference: CoOp with ctx' = Φ(ctx), computed once per evaluation.

Issue 18 audit item (5), ``separate`` trained encoders the official code never trains: fixed
(frozen, seeded random encoders, as described above).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cpbench.errors import UserError
from cpbench.methods.coop import CoOp, CoOpOptions

ENCODERS = ("LSTM1", "LSTM2", "MLP1", "MLP2")


@dataclass
class PREOptions(CoOpOptions):
    encoder: str = "LSTM1"
    residual: bool = True
    separate: bool = False
    bottleneck: int = 64
    separate_seed: int = 0   # separate=true: seed of the frozen random per-token encoders


class PromptEncoder(nn.Module):
    def __init__(self, kind: str, dim: int, bottleneck: int, residual: bool):
        super().__init__()
        self.kind = kind
        self.residual = residual
        if kind in ("LSTM1", "LSTM2"):
            layers = 1 if kind == "LSTM1" else 2
            self.lstm_head = nn.LSTM(dim, dim // 2, num_layers=layers, bidirectional=True, batch_first=True,
                                     dropout=0.05 if layers > 1 else 0.0)
        else:
            block = [nn.Linear(dim, bottleneck), nn.ReLU(), nn.Linear(bottleneck, dim)]
            self.module = nn.Sequential(*(block + block if kind == "MLP2" else block))

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        """ctx [M, D] (one unbatched sequence) -> [M, D]."""
        if self.kind.startswith("LSTM"):
            out = self.lstm_head(ctx)[0]
        else:
            out = self.module(ctx)
        return out + ctx if self.residual else out


class PRE(CoOp):
    name = "pre"
    Options = PREOptions

    def __init__(self, backbone, classnames, options: PREOptions, template="a photo of a {}."):
        if options.encoder not in ENCODERS:
            raise UserError(f"PRE encoder must be one of {', '.join(ENCODERS)}, got {options.encoder!r}")
        if options.csc:
            raise UserError("PRE encodes one shared context; set csc=false")
        if options.class_token_position != "end":
            raise UserError("PRE supports class_token_position=end only (the paper's setting)")
        super().__init__(backbone, classnames, options, template)
        d = backbone.text_width
        if d % 2:
            raise UserError("the LSTM encoder needs an even text width")
        if options.separate:
            # official: a plain dict of encoders, never registered -> never trained or saved (random);
            # here frozen and drawn from their own seeded generator, so every rebuild is identical
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(options.separate_seed)
                encoders = [PromptEncoder(options.encoder, d, options.bottleneck, options.residual)
                            for _ in range(len(self.ctx))]
            self.encoder_network = nn.ModuleList(encoders).to(backbone.dtype).requires_grad_(False)
        else:
            self.encoder_network = PromptEncoder(options.encoder, d, options.bottleneck, options.residual).to(backbone.dtype)

    def learned_state(self) -> dict[str, torch.Tensor]:
        state = super().learned_state()
        if self.options.separate:  # frozen, rebuilt from separate_seed: not learned state
            state = {k: v for k, v in state.items() if not k.startswith("encoder_network.")}
        return state

    def context(self) -> torch.Tensor:
        if self.options.separate:
            return torch.cat([enc(self.ctx[i: i + 1]) for i, enc in enumerate(self.encoder_network)], dim=0)
        return self.encoder_network(self.ctx)
