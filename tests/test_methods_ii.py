"""Methods II (issue 6): LAMM, PRE, Bayesian prompt learning, CPL — invariants and hand-computed
loss terms on the tiny random backbone (the golden comparisons with the official code live in
test_golden_lamm.py / test_golden_bpl.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cpbench.methods.coop import CoOp, CoOpOptions

NAMES = ["golden retriever", "tabby_cat", "airliner", "red fox", "sports car"]
NEW = ["tree frog", "golden retriever", "canoe"]


def images(n=4, seed=0, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def perturb(t: torch.Tensor, seed: int, scale: float = 0.05) -> None:
    with torch.no_grad():
        t.add_(scale * torch.randn(t.shape, generator=torch.Generator().manual_seed(seed)).to(t.dtype))


# ============================================================================ LAMM
from cpbench.methods.lamm import LAMM, CoOpLAMM, CoOpLAMMOptions, LAMMOptions, distillation, feature_loss  # noqa: E402


def _coop_and_lamm(bb, names=NAMES, **kw):
    coop = CoOp(bb, names, CoOpOptions(ctx_init="a photo of a"))
    lamm = CoOpLAMM(bb, names, CoOpLAMMOptions(ctx_init="a photo of a", **kw))
    perturb(coop.ctx, 1)
    with torch.no_grad():
        lamm.ctx.copy_(coop.ctx)
    return coop, lamm


def test_lamm_untouched_labels_and_zeroed_extra_losses_equal_coop(tiny_backbone):
    coop, lamm = _coop_and_lamm(tiny_backbone, feature_weight=0.0, logit_weight=0.0)
    x, y = images(), torch.tensor([0, 1, 2, 2])
    assert torch.allclose(lamm(x), coop(x), atol=1e-5)
    _, terms = lamm.forward_train(x, y)
    _, cterms = coop.forward_train(x, y)
    assert sorted(terms) == ["ce", "feature", "logit", "param"]
    assert torch.allclose(terms["ce"], cterms["ce"], atol=1e-5)
    assert all(float(terms[k].detach()) == 0.0 for k in ("param", "feature", "logit"))
    off = CoOpLAMM(tiny_backbone, NAMES, CoOpLAMMOptions(ctx_init="a photo of a", hierarchical_loss=False))
    _, t2 = off.forward_train(x, y)
    assert list(t2) == ["ce"]


def test_lamm_label_len_is_min_name_tokens_and_rows_are_name_embeddings(tiny_backbone):
    bb = tiny_backbone
    lamm = CoOpLAMM(bb, NAMES, CoOpLAMMOptions(ctx_init="a photo of a"))
    lens = [bb.n_tokens(n.replace("_", " ")) for n in NAMES]
    assert lamm.label_len == min(lens)
    ids = bb.tokenize(["red fox"])
    assert torch.equal(lamm.token_classes[3], bb.token_embedding(ids)[0, 1: 1 + lamm.label_len])
    assert torch.equal(lamm.fix_token, lamm.token_classes.detach())
    assert "fix_token" in lamm.learned_state() and not lamm.fix_token.requires_grad
    with pytest.raises(Exception, match="label_len"):
        CoOpLAMM(bb, NAMES, CoOpLAMMOptions(label_len=max(lens) + 1))


def test_lamm_variant_freezes_context(tiny_backbone):
    m = LAMM(tiny_backbone, NAMES, LAMMOptions())
    assert not m.ctx.requires_grad and m.token_classes.requires_grad
    assert m.n_learnable() == m.token_classes.numel()


def test_lamm_loss_terms_equal_hand_computation(tiny_backbone):
    _, lamm = _coop_and_lamm(tiny_backbone, param_shots=4)
    perturb(lamm.token_classes, 2, 0.3)
    x, y = images(), torch.tensor([0, 1, 1, 3])
    _, terms = lamm.forward_train(x, y)
    with torch.no_grad():
        f = F.normalize(tiny_backbone.encode_image(x).float(), dim=-1)
        t = F.normalize(lamm.text_features().float(), dim=-1)
        tf = F.normalize(tiny_backbone.text(lamm.assemble(lamm.ctx), lamm.prompts.eot).float(), dim=-1)
        s = tiny_backbone.logit_scale.float()
        z, zf = s * f @ t.t(), s * f @ tf.t()
        ce = F.cross_entropy(z, y)
        param = ((lamm.token_classes - lamm.fix_token) ** 2).sum() / 4
        feat = sum(1 - float((t[c] * tf[c]).sum()) for c in [0, 1, 1, 3]) / 4
        T = 2.0
        pt = torch.softmax(z / T, 1)
        logit = 0.05 * T * T * float(-(pt * torch.log_softmax(zf / T, 1)).sum(1).mean())
    terms = {k: v.detach() if torch.is_tensor(v) else v for k, v in terms.items()}
    assert math.isclose(float(terms["ce"]), float(ce), rel_tol=1e-5)
    assert math.isclose(float(terms["param"]), float(param), rel_tol=1e-5)
    assert math.isclose(float(terms["feature"]), feat, rel_tol=1e-4, abs_tol=1e-6)
    assert math.isclose(float(terms["logit"]), logit, rel_tol=1e-5)


def test_lamm_helpers_on_fixed_tensors():
    t = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]], requires_grad=True)
    s = torch.tensor([[0.0, 1.0, 1.0], [2.0, 0.0, -1.0]])
    p = torch.softmax(t / 2, 1)
    hand = 4 * float(-(p * torch.log_softmax(s / 2, 1)).sum(1).mean().detach())
    d = distillation(t, s, 2.0)
    assert math.isclose(float(d.detach()), hand, rel_tol=1e-6)
    d.backward()
    assert t.grad is not None and t.grad.abs().sum() > 0  # the soft target is not detached
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    fix = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    # label 2 twice, label 0 once: every sample has a different label somewhere -> all 3 count
    assert math.isclose(float(feature_loss(text, fix, torch.tensor([0, 2, 2]))),
                        ((1 - 2 ** -0.5) + 2 * (1 - 2 ** -0.5)) / 3, rel_tol=1e-6)
    assert float(feature_loss(text, fix, torch.tensor([1, 1]))) == 0.0  # one-class batch: nothing counts


def test_lamm_other_class_lists_use_original_names_and_the_training_list_keeps_its_rows(tiny_backbone):
    """Rows go by class index in the training list (issue 18): another list (new classes) gets
    the plain prompt for every class, even for a name that also was a training class, as the
    official new-class path (no learned labels at all)."""
    coop, lamm = _coop_and_lamm(tiny_backbone)
    perturb(lamm.token_classes, 3, 0.5)
    x = images()
    base_before = lamm(x)
    lamm.set_classnames(NEW)  # "golden retriever" is also a training name: still the plain prompt
    coop.set_classnames(NEW)
    assert torch.allclose(lamm(x), coop(x), atol=1e-5)
    lamm.set_classnames(NAMES)
    assert torch.allclose(lamm(x), base_before, atol=1e-5)


# ============================================================================ Bayesian prompt learning
from cpbench.methods.bpl import BPLOptions, CoCoOpVPT, CoOpVPT, kl_to_standard_normal, mc_log_mean_prob, mc_nll  # noqa: E402


def _deterministic(m):
    """μ = 0 (or μ(x) = 0 via the mean head's last layer) and σ → 0 (log-variance −200)."""
    with torch.no_grad():
        if m.conditional:
            last_mu = m.meta_net.weight_mean.module[-1]
            last_mu.weight.zero_(), last_mu.bias.zero_()
            last_lv = m.meta_net.weight_log_variance.module[-1]
            last_lv.weight.zero_(), last_lv.bias.fill_(-200.0)
        else:
            m.mean_posterior.zero_()
            m.std_posterior.fill_(-200.0)


def test_bpl_with_zero_mean_and_vanishing_variance_equals_coop(tiny_backbone):
    coop = CoOp(tiny_backbone, NAMES, CoOpOptions(ctx_init="a photo of a"))
    perturb(coop.ctx, 4)
    m = CoOpVPT(tiny_backbone, NAMES, BPLOptions(mc_samples=3))
    _deterministic(m)
    with torch.no_grad():
        m.ctx.copy_(coop.ctx)
    x, y = images(), torch.tensor([0, 1, 2, 2])
    ref = coop(x)
    assert torch.allclose(m(x), torch.log_softmax(ref, -1), atol=1e-5)
    _, terms = m.forward_train(x, y)
    assert math.isclose(float(terms["nll"].detach()), float(F.cross_entropy(ref, y).detach()), rel_tol=1e-5)


def test_conditional_bpl_with_zero_mean_and_vanishing_variance_equals_cocoop_form(tiny_backbone):
    """μ(x) = 0, σ → 0: each image's prompts are ctx + 0 -> plain CoOp logits; with μ(x) = π(x)
    (the mean head) and σ → 0 it is CoCoOp's ctx + π(x) per image."""
    bb = tiny_backbone
    m = CoCoOpVPT(bb, NAMES, BPLOptions(mc_samples=2))
    perturb(m.ctx, 5)
    x, y = images(3), torch.tensor([0, 4, 1])
    with torch.no_grad():
        last_lv = m.meta_net.weight_log_variance.module[-1]
        last_lv.weight.zero_(), last_lv.bias.fill_(-200.0)
        f = F.normalize(bb.encode_image(x).float(), dim=-1)
        pi = m.meta_net.weight_mean(f)
        rows = []
        for b in range(3):  # CoCoOp: ctx + π(x_b) for every class, the image's own text features
            p = m.prompts.assemble(m.ctx + pi[b])
            t = F.normalize(bb.text(p, m.prompts.eot).float(), dim=-1)
            rows.append(bb.logit_scale.float() * f[b] @ t.t())
        ref = torch.stack(rows)
        assert torch.allclose(m(x), torch.log_softmax(ref, -1), atol=1e-4)
        _, terms = m.forward_train(x, y)
        assert math.isclose(float(terms["nll"]), float(F.cross_entropy(ref, y)), rel_tol=1e-4)
        _deterministic(m)
        coop = CoOp(bb, NAMES, CoOpOptions(ctx_init="a photo of a"))
        coop.ctx.copy_(m.ctx)
        assert torch.allclose(m(x), torch.log_softmax(coop(x), -1), atol=1e-5)


def test_conditional_bpl_batch_is_per_image(tiny_backbone):
    """Batch > 1 equals running each image alone with its own slice of the noise."""
    m = CoCoOpVPT(tiny_backbone, NAMES, BPLOptions(mc_samples=3))
    x, y = images(3, seed=9), torch.tensor([0, 1, 2])
    eps = torch.randn(3, 3, tiny_backbone.text_width, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        m.fixed_eps = eps
        batched, terms = m.forward_train(x, y)
        singles, nll, kl = [], 0.0, 0.0
        for b in range(3):
            m.fixed_eps = eps[:, b: b + 1]
            out, t = m.forward_train(x[b: b + 1], y[b: b + 1])
            singles.append(out)
            nll += float(t["nll"]) / 3
            kl += float(t["kl"]) / 3
    assert torch.allclose(batched, torch.cat(singles), atol=1e-5)
    assert math.isclose(float(terms["nll"]), nll, rel_tol=1e-5) and math.isclose(float(terms["kl"]), kl, rel_tol=1e-5)


def test_bpl_loss_terms_equal_hand_computation():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]],
                           [[1.0, 1.0, 1.0], [-1.0, 2.0, 0.0]]])  # [L=2, B=2, C=3]
    y = torch.tensor([0, 1])
    p = torch.softmax(logits, -1)
    hand = -sum(math.log(float(p[0, b, y[b]] + p[1, b, y[b]]) / 2) for b in range(2)) / 2
    assert math.isclose(float(mc_nll(logits, y)), hand, rel_tol=1e-6)
    assert torch.allclose(mc_log_mean_prob(logits), torch.log(p.mean(0)), atol=1e-6)
    mu, lv = torch.tensor([[0.3, -1.0]]), torch.tensor([[0.5, -0.2]])
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, lv.exp().sqrt()),
                                            torch.distributions.Normal(0.0, 1.0))
    assert torch.allclose(kl_to_standard_normal(mu, lv), ref, atol=1e-6)
    hand_kl = sum(0.5 * (math.exp(l) + m * m - 1 - l) for m, l in [(0.3, 0.5), (-1.0, -0.2)]) / 2
    assert math.isclose(float(kl_to_standard_normal(mu, lv).mean()), hand_kl, rel_tol=1e-6)


def test_bpl_std_posterior_is_the_log_variance(tiny_backbone):
    m = CoOpVPT(tiny_backbone, NAMES, BPLOptions(mc_samples=4))
    with torch.no_grad():
        m.mean_posterior.fill_(0.1), m.std_posterior.fill_(math.log(0.25))  # variance 0.25 -> σ 0.5
    eps = torch.randn(4, 1, tiny_backbone.text_width)
    m.fixed_eps = eps
    r = m.sample(m.mean_posterior, m.std_posterior)
    assert torch.allclose(r, 0.1 + 0.5 * eps, atol=1e-6)
    assert 0.0 <= float(CoOpVPT(tiny_backbone, NAMES, BPLOptions()).std_posterior.min().detach())  # U[0,1) init


# ============================================================================ PRE
from cpbench.methods.pre import PRE, PREOptions  # noqa: E402


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
    x, y = images(), torch.tensor([0, 1, 2, 3])
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
    x, y = images(), torch.tensor([4, 3, 2, 1])
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


# ============================================================================ CPL
from cpbench.methods.cpl import CPL, CPLOptions, contrastive_cf_loss, greedy_mask  # noqa: E402


def _naive_greedy(v, vn, tp, tn):
    """Reference: recompute every candidate's full normalised logit; returns the pick order."""
    v, order = v.clone(), []
    for _ in range(len(v)):
        best, arg = -math.inf, -1
        for i in range(len(v)):
            if i in order:
                continue
            w = v.clone()
            w[i] = vn[i]
            s = float(F.normalize(w, dim=0) @ tn)
            if s > best:
                best, arg = s, i
        order.append(arg)
        v[arg] = vn[arg]
        f = F.normalize(v, dim=0)
        if float(f @ tn) > float(f @ tp):
            break
    return order


def test_cpl_mask_search_flips_with_the_greedy_minimal_set_on_a_fixture():
    # pos class = e0, neg class = e1. Step 1 swaps dim 1 (neg logit 2/√13.25 = 0.549, pos still
    # 3/√13.25 = 0.824); step 2 swaps dim 0 (neg 2/√4.25 = 0.970 > pos 0): flipped with {0, 1}.
    v = torch.tensor([[3.0, 0.0, 0.5, 0.0]])
    vn = torch.tensor([[0.0, 2.0, 0.0, 1.0]])
    tp, tn = torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    mask = greedy_mask(v, vn, tp, tn)
    assert mask.tolist() == [[True, True, False, False]]
    assert _naive_greedy(v[0], vn[0], tp[0], tn[0]) == [1, 0]
    swapped = torch.where(mask, vn, v)
    f = F.normalize(swapped, dim=-1)
    assert float(f @ tn[0]) > float(f @ tp[0])                   # the prediction flips
    only_first = F.normalize(torch.tensor([3.0, 2.0, 0.5, 0.0]), dim=0)
    assert float(only_first @ tn[0]) < float(only_first @ tp[0])  # one swap fewer does not


def test_cpl_mask_search_matches_naive_greedy_on_random_batches():
    g = torch.Generator().manual_seed(11)
    v, vn = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    tp, tn = F.normalize(torch.randn(6, 16, generator=g), dim=-1), F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    mask = greedy_mask(v, vn, tp, tn)
    for b in range(6):
        order = _naive_greedy(v[b], vn[b], tp[b], tn[b])
        assert sorted(order) == mask[b].nonzero().flatten().tolist()
        f = F.normalize(torch.where(mask[b], vn[b], v[b]), dim=0)
        assert float(f @ tn[b]) > float(f @ tp[b]) or len(order) == 16


def test_cpl_negative_class_is_most_similar_other_name(tiny_backbone):
    m = CPL(tiny_backbone, NAMES, CPLOptions())
    t = F.normalize(tiny_backbone.encode_text([n.replace("_", " ") for n in NAMES]).float(), dim=-1)
    sim = t @ t.t()
    for c in range(len(NAMES)):
        others = [j for j in range(len(NAMES)) if j != c]
        assert int(m.neg_class[c]) == max(others, key=lambda j: float(sim[c, j]))


def test_cpl_loss_terms_equal_hand_computation_and_inference_is_cocoop(tiny_backbone):
    bb = tiny_backbone
    m = CPL(bb, NAMES, CPLOptions())
    perturb(m.ctx, 7)
    perturb(m.u, 8, 0.5)
    g = torch.Generator().manual_seed(5)
    m.set_negative_features(torch.randn(len(NAMES), bb.embed_dim, generator=g))
    x, y = images(3, seed=2), torch.tensor([0, 3, 3])
    logits, terms = m.forward_train(x, y)
    with torch.no_grad():
        raw = bb.encode_image(x).float()
        f = F.normalize(raw, dim=-1)
        s = bb.logit_scale.float()
        ce_rows, cl, mask = [], 0.0, 0.0
        for b in range(3):
            yb, nb = int(y[b]), int(m.neg_class[y[b]])
            ctx = m.ctx + m.meta_net(f[b])                      # CoCoOp: π(x) on every token
            t = F.normalize(bb.text(m.prompts.assemble(ctx), m.prompts.eot).float(), dim=-1)
            ce_rows.append(s * f[b] @ t.t())
            tp, tn = F.normalize(m.name_text[yb], dim=0), F.normalize(m.name_text[nb], dim=0)
            order = _naive_greedy(raw[b], m.neg_raw[yb], tp, tn)
            ustar = -torch.ones(bb.embed_dim)
            ustar[order] = 1
            u = torch.clamp(0.999 * ustar + 0.001 * m.u[:, yb], 0, 1)
            vcf = F.normalize((1 - u) * f[b] + u * F.normalize(m.neg_raw[yb], dim=0), dim=0)
            pos = [float(t[c] @ f[b]) for c in range(len(NAMES))]
            neg = [float(t[c] @ vcf) for c in range(len(NAMES))]
            cl += sum(-math.log(math.exp(p) / (math.exp(p) + math.exp(q))) for p, q in zip(pos, neg)) / len(NAMES) / 3
            mask += 0.07 * float(u.norm()) / 3
        ref = torch.stack(ce_rows)
    assert torch.allclose(logits.detach(), ref, atol=1e-4)
    assert math.isclose(float(terms["ce"].detach()), float(F.cross_entropy(ref, y)), rel_tol=1e-5)
    assert math.isclose(float(terms["cl"].detach()), cl, rel_tol=1e-5)
    assert math.isclose(float(terms["mask"].detach()), mask, rel_tol=1e-5)
    m.eval()
    with torch.no_grad():
        assert torch.allclose(m(x), ref, atol=1e-4)              # inference = CoCoOp
    # the contrastive term by itself on fixed vectors
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v, vc = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    hand = (-math.log(math.e / (math.e + 1)) - math.log(1 / (1 + math.e))) / 2
    assert math.isclose(float(contrastive_cf_loss(text, v, vc)), hand, rel_tol=1e-6)


def test_cpl_without_negatives_says_what_to_call(tiny_backbone):
    m = CPL(tiny_backbone, NAMES, CPLOptions())
    with pytest.raises(RuntimeError, match="prepare_training"):
        m.forward_train(images(1), torch.tensor([0]))


# ============================================================================ end to end
@pytest.fixture(scope="module")
def caltech_1shot(tmp_path_factory):
    from conftest import CALTECH_SRC

    if not (CALTECH_SRC / "101_ObjectCategories.tar.gz").exists():
        pytest.skip("../shared/datasets/caltech101 is not available")
    from cpbench.data import prepare as prep

    root = tmp_path_factory.mktemp("data1")
    prep.prepare("caltech101", root, from_dir=CALTECH_SRC, shots=[1], seeds=[1])
    return root


@pytest.mark.parametrize("method,extra", [
    ("lamm", []), ("coop_lamm", []), ("maple_lamm", []), ("pre", []), ("coopvpt", ["mc_samples=2"]),
    ("cocoopvpt", ["mc_samples=1", "eval_chunk=20000"]), ("cpl", []),
])
def test_methods_ii_run_base_to_new_end_to_end(caltech_1shot, tmp_path, cli, method, extra):
    res = tmp_path / "res"
    rc, out, err = cli("run", method, "--dataset", "caltech101", "--backbone", "tiny", "--pretrained", "none",
                       "--shots", "1", "--seeds", "1", "--root", str(caltech_1shot), "--results", str(res),
                       "--device", "cpu", "--set", "epochs=1", "batch_size=10", *extra)
    assert rc == 0, err
    from cpbench.results.store import ResultStore

    df = ResultStore(res).read().frame
    assert sorted(df["subset"]) == ["base", "new"] and set(df["method"]) == {method}
    assert (df["n_classes"] == 50).all() and df["accuracy"].between(0, 100).all()
    assert (df["n_learnable"] > 0).all() and (df["epochs"] == 1).all()


def test_bpl_eval_resample_draws_fresh_noise(tiny_backbone):
    m = CoOpVPT(tiny_backbone, NAMES, BPLOptions(mc_samples=2, eval_resample=True))
    m.eval()
    f = F.normalize(tiny_backbone.encode_image(images(2)).float(), dim=-1)
    with torch.no_grad():
        ctx = m.eval_context()
        assert ctx is None
        a, b = m.logits_from_features(f, ctx), m.logits_from_features(f, ctx)
        assert not torch.allclose(a, b)          # fresh noise per call
        m.options.eval_resample = False
        c = m.eval_context()
        assert torch.equal(m.logits_from_features(f, c), m.logits_from_features(f, c))


# ============================================================================ MaPLe + LAMM
from cpbench.methods.lamm import MaPLeLAMM, MaPLeLAMMOptions  # noqa: E402
from cpbench.methods.maple import MaPLe, MaPLeOptions  # noqa: E402


def _maple_pair(bb, names=NAMES, **kw):
    torch.manual_seed(0)
    maple = MaPLe(bb, names, MaPLeOptions(depth=2))
    ml = MaPLeLAMM(bb, names, MaPLeLAMMOptions(depth=2, **kw))
    perturb(maple.ctx, 12)
    own = dict(ml.named_parameters())
    with torch.no_grad():
        for n, p in maple.named_parameters():
            if n in own:
                own[n].copy_(p)
    return maple, ml


def test_maple_lamm_untouched_labels_and_zeroed_extra_losses_equal_maple(tiny_backbone):
    maple, ml = _maple_pair(tiny_backbone, feature_weight=0.0, logit_weight=0.0)
    assert ml.label_len == 1 and tuple(ml.token_classes.shape) == (len(NAMES), 1, tiny_backbone.text_width)
    x, y = images(), torch.tensor([0, 1, 2, 2])
    # not equal to MaPLe in general: the official row REPLACES "of" (position 1+n_ctx)
    ids = tiny_backbone.tokenize(["a photo of a red fox."])[0]
    emb = tiny_backbone.token_embedding(ids.unsqueeze(0))[0]
    name_first = tiny_backbone.token_embedding(tiny_backbone.tokenize(["red fox"]))[0, 1]
    p = ml.with_label_rows(ml.prompts.assemble(ml.ctx))[3]
    assert torch.equal(p[3], name_first)         # label row where "of" was
    assert torch.equal(p[4:], emb[4:])           # "a red fox ." and the rest untouched
    assert torch.equal(p[1:3], ml.ctx.detach())
    _, terms = ml.forward_train(x, y)
    assert all(float(terms[k].detach()) == 0.0 for k in ("param", "feature", "logit"))
    # with the label row set back to the embedding of "of" it is exactly MaPLe
    of = tiny_backbone.token_embedding(tiny_backbone.tokenize(["of"]))[0, 1]
    with torch.no_grad():
        ml.token_classes.copy_(of.expand_as(ml.token_classes))
    assert torch.allclose(ml(x), maple(x), atol=1e-5)
    _, terms = ml.forward_train(x, y)
    assert torch.allclose(terms["ce"].detach(), maple.forward_train(x, y)[1]["ce"].detach(), atol=1e-5)


def test_maple_lamm_new_classes_are_plain_maple(tiny_backbone):
    maple, ml = _maple_pair(tiny_backbone)
    perturb(ml.token_classes, 13, 0.5)
    for m in (maple, ml):
        m.set_classnames(["tree frog", "canoe"])
    x = images()
    assert torch.allclose(ml(x), maple(x), atol=1e-5)


def test_cpl_inference_equals_cocoop(tiny_backbone):
    from cpbench.methods.cocoop import CoCoOp, CoCoOpOptions

    torch.manual_seed(3)
    ref = CoCoOp(tiny_backbone, NAMES, CoCoOpOptions())
    m = CPL(tiny_backbone, NAMES, CPLOptions())
    perturb(ref.ctx, 14)
    own = dict(m.named_parameters())
    with torch.no_grad():
        for n, p in ref.named_parameters():
            own[n].copy_(p)
    x = images()
    assert torch.equal(m(x), ref(x))


def test_conditional_bpl_with_cocoop_mean_head_and_vanishing_variance_equals_cocoop(tiny_backbone):
    """μ(x) = CoCoOp's meta-net π(x) (module swapped in for the mean head), σ → 0: the
    conditional posterior's log-mean-prob output is log_softmax of CoCoOp's logits."""
    import copy

    from cpbench.methods.cocoop import CoCoOp, CoCoOpOptions

    torch.manual_seed(4)
    ref = CoCoOp(tiny_backbone, NAMES, CoCoOpOptions())
    perturb(ref.ctx, 15)
    perturb(ref.meta_net.linear2.weight, 16, 0.5)
    m = CoCoOpVPT(tiny_backbone, NAMES, BPLOptions(mc_samples=3))
    with torch.no_grad():
        m.ctx.copy_(ref.ctx)
        m.meta_net.weight_mean = copy.deepcopy(ref.meta_net)
        last_lv = m.meta_net.weight_log_variance.module[-1]
        last_lv.weight.zero_(), last_lv.bias.fill_(-200.0)
        x, y = images(3), torch.tensor([1, 0, 4])
        z = ref(x)
        assert torch.allclose(m(x), torch.log_softmax(z, -1), atol=1e-5)
        _, terms = m.forward_train(x, y)
        assert math.isclose(float(terms["nll"]), float(F.cross_entropy(z, y)), rel_tol=1e-5)
