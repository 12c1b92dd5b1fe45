"""PRE (cpbench/methods/pre.py): a zeroed prompt encoder is CoOp, the LSTM is a bidirectional pass
over the context plus the residual, and the official separate encoders are frozen and seeded (the
official numbers: test_golden_pre.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cpbench.methods.coop import CoOp, CoOpOptions
from cpbench.methods.pre import PRE, PREOptions
from methodutils import NAMES, images, perturb


def _zero(module):
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


@pytest.mark.parametrize("encoder,separate", [("LSTM1", False), ("MLP1", False), ("LSTM2", True)])
def test_pre_with_encoder_output_zeroed_equals_coop(tiny_backbone, encoder, separate):
    coop = CoOp(tiny_backbone, NAMES, CoOpOptions(ctx_init="a photo of a"))
    perturb(coop.ctx, 6)
    m = PRE(tiny_backbone, NAMES, PREOptions(encoder=encoder, separate=separate))
    _zero(m.encoder_network)  # zero LSTM weights -> h = o·tanh(c) = 0; zero MLP -> 0
    with torch.no_grad():
        m.ctx.copy_(coop.ctx)
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    assert torch.allclose(m(x), coop(x), atol=1e-5)
    _, terms = m.forward_train(x, y)
    assert list(terms) == ["ce"] and torch.allclose(terms["ce"].detach(), F.cross_entropy(coop(x), y), atol=1e-5)


def _manual_bilstm(lstm, x):
    h = lstm.hidden_size

    def run(seq, sfx):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l0{sfx}"), getattr(lstm, f"weight_hh_l0{sfx}")
        b = getattr(lstm, f"bias_ih_l0{sfx}") + getattr(lstm, f"bias_hh_l0{sfx}")
        hs, c, ht = [], torch.zeros(h), torch.zeros(h)
        for t in seq:
            g = w_ih @ t + w_hh @ ht + b
            i, f, gg, o = torch.sigmoid(g[:h]), torch.sigmoid(g[h:2 * h]), torch.tanh(g[2 * h:3 * h]), torch.sigmoid(g[3 * h:])
            c = f * c + i * gg
            ht = o * torch.tanh(c)
            hs.append(ht)
        return torch.stack(hs)

    fwd = run(list(x), "")
    bwd = run(list(x.flip(0)), "_reverse").flip(0)
    return torch.cat([fwd, bwd], dim=-1)


def test_pre_lstm_is_a_bidirectional_pass_over_the_context_sequence_plus_residual(tiny_backbone):
    m = PRE(tiny_backbone, NAMES, PREOptions())
    d = tiny_backbone.text_width
    lstm = m.encoder_network.lstm_head
    assert lstm.input_size == d and lstm.hidden_size == d // 2 and lstm.bidirectional and lstm.num_layers == 1
    h = d // 2
    assert m.n_learnable() == 4 * d + 2 * (4 * h * (d + h) + 8 * h)  # = 4·512 + 1,576,960 at D = 512
    with torch.no_grad():
        ref = _manual_bilstm(lstm, m.ctx) + m.ctx
        assert torch.allclose(m.context(), ref, atol=1e-5)
        p = m.prompts.assemble(ref)
        t = F.normalize(tiny_backbone.text(p, m.prompts.eot).float(), dim=-1)
    x, y = images(4), torch.tensor([4, 3, 2, 1])
    f = F.normalize(tiny_backbone.encode_image(x).float(), dim=-1)
    _, terms = m.forward_train(x, y)
    assert math.isclose(float(terms["ce"].detach()), float(F.cross_entropy(tiny_backbone.logit_scale * f @ t.t(), y)),
                        rel_tol=1e-5)


def test_pre_mlp1_shape_and_bad_encoder(tiny_backbone):
    m = PRE(tiny_backbone, NAMES, PREOptions(encoder="MLP1"))
    lin = [mod for mod in m.encoder_network.module if isinstance(mod, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lin] == [(tiny_backbone.text_width, 64), (64, tiny_backbone.text_width)]
    with pytest.raises(Exception, match="encoder"):
        PRE(tiny_backbone, NAMES, PREOptions(encoder="transformer"))


def test_pre_separate_encoders_are_frozen_seeded_and_not_learned_state(tiny_backbone):
    from cpbench.methods.pre import PRE, PREOptions

    a = PRE(tiny_backbone, NAMES, PREOptions(separate=True))
    torch.manual_seed(123)   # the global RNG does not matter: the encoders have their own seed
    b = PRE(tiny_backbone, NAMES, PREOptions(separate=True))
    c = PRE(tiny_backbone, NAMES, PREOptions(separate=True, separate_seed=1))
    assert len(a.encoder_network) == a.ctx.shape[0]
    assert not any(p.requires_grad for p in a.encoder_network.parameters())
    assert a.n_learnable() == a.ctx.numel()                      # only ctx learns, as the official code
    assert set(a.learned_state()) == {"ctx"}
    for (n, p), q in zip(a.encoder_network.named_parameters(), b.encoder_network.parameters()):
        assert torch.equal(p, q), n
    assert not torch.equal(next(a.encoder_network.parameters()), next(c.encoder_network.parameters()))
    perturb(a.ctx, 2)
    b.load_learned_state(a.learned_state())                     # resume / evaluation: same encoders
    assert torch.equal(a.context(), b.context())
