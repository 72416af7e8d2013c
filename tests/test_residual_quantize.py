"""VAR's residual quantisation loop, written once (``MultiScaleVQTokenizer.residual_quantize``): its three users
(encoding, training, the watermark's differentiable view) agree on the tokens and keep their gradients."""

import copy

import pytest
import torch
import torch.nn.functional as F

from arvision.sampling.watermark import residual_code_logits
from test_consistency import make_pipe

NAMES = ["var_pn124_w96h3_q0", "var_pn2358_w128h4_shared_q4"]


def tokenizer_and_features(name: str, seed: int = 0):
    """A private, trainable copy of a random VAR tokenizer (gradients are written to it) and features
    f (3, D, p, p)."""
    pipe = make_pipe(name)
    tok = copy.deepcopy(pipe.tokenizer).requires_grad_(True)  # the pipeline's is frozen
    torch.manual_seed(seed)
    images = torch.rand(3, 3, pipe.config.image_size, pipe.config.image_size) * 2 - 1
    with torch.no_grad():
        return tok, tok.features(images)


# -- the loop as each user wrote it before residual_quantize: the references -----------------------------------
def scale_z(tok, rest, si, pn):
    return rest if si == len(tok.patch_nums) - 1 else F.interpolate(rest, size=(pn, pn), mode="area")


def code_term(tok, si, idx, B, pn):
    return tok.scale_term(si, tok.quantize.lookup(idx.reshape(B, pn, pn)).permute(0, 3, 1, 2))


def reference_quantize_train(tok, f, beta):
    """VAR's ``VectorQuantizer2.forward``: straight-through f_hat and the vq loss, as quantize_train computed them."""
    f_ng = f.detach()
    rest, f_hat, loss, B, D = f_ng.clone(), torch.zeros_like(f_ng), f.new_zeros(()), *f.shape[:2]
    for si, pn in enumerate(tok.patch_nums):
        z = scale_z(tok, rest, si, pn)
        h = code_term(tok, si, tok.quantize.quantize(z.permute(0, 2, 3, 1).reshape(-1, D)), B, pn)
        f_hat = f_hat + h
        rest = rest - h.detach()
        loss = loss + F.mse_loss(f_hat.detach(), f).mul(beta) + F.mse_loss(f_hat, f_ng)
    return f_hat.detach() + (f - f_ng), loss / len(tok.patch_nums)


def reference_code_logits(tok, f):
    """residual_code_logits' own loop: logits per scale, nearest codes subtracted as a constant."""
    codes, rest, out, B, D = tok.quantize.codes.detach(), f, [], *f.shape[:2]
    for si, pn in enumerate(tok.patch_nums):
        z = scale_z(tok, rest, si, pn).permute(0, 2, 3, 1).reshape(B, pn * pn, D)
        out.append(-(z.square().sum(-1, keepdim=True) - 2 * z @ codes.T + codes.square().sum(1)))
        with torch.no_grad():
            term = code_term(tok, si, out[-1].argmax(-1), B, pn)
        rest = rest - term
    return out


def grads(tok, f):
    """The gradients a backward left on f and on the tokenizer's parameters (then cleared)."""
    out = {"f": f.grad.clone()} | {n: p.grad.clone() for n, p in tok.named_parameters() if p.grad is not None}
    tok.zero_grad(set_to_none=True)
    f.grad = None
    return out


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- the tests ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_the_three_users_pick_the_same_tokens(name, monkeypatch):
    tok, f = tokenizer_and_features(name)
    ids, f_hat = tok.quantize_features(f)
    seen = []  # the ids quantize_train's loop picked (it returns only their counts)
    loop = tok.residual_quantize
    monkeypatch.setattr(tok, "residual_quantize", lambda *a, **k: seen.append(loop(*a, **k)) or seen[-1])
    f_st, _, usage = tok.quantize_train(f.clone().requires_grad_(True))
    monkeypatch.undo()
    logits = residual_code_logits(tok, f)
    assert [t.shape for t in ids] == [(3, pn * pn) for pn in tok.patch_nums]
    for si, t in enumerate(ids):
        assert torch.equal(seen[0][0][si], t)
        assert torch.equal(logits[si].argmax(-1), t)
        assert torch.equal(usage[si], t.flatten().bincount(minlength=tok.cfg.vocab_size).float())
    assert torch.equal(f_st, f_hat) and torch.equal(tok.canvas_from_ids(ids), f_hat)


@pytest.mark.parametrize("name", NAMES)
def test_quantize_train_keeps_its_values_and_gradients(name):
    tok, f0 = tokenizer_and_features(name, seed=1)
    w = torch.randn(f0.shape, generator=torch.Generator().manual_seed(2))
    results = []
    for quantize in (lambda f: tok.quantize_train(f, beta=0.25), lambda f: reference_quantize_train(tok, f, 0.25)):
        f = f0.clone().requires_grad_(True)
        f_st, vq_loss = quantize(f)[:2]
        ((f_st * w).sum() + 3 * vq_loss).backward()
        results.append((f_st.detach(), vq_loss.detach(), grads(tok, f)))
    (f_st, loss, g), (f_ref, loss_ref, g_ref) = results
    assert torch.equal(f_st, f_ref) and torch.equal(loss, loss_ref)
    assert {"f", "quantize.embedding.weight"} <= g.keys() and any("quant_resi" in k for k in g)
    assert_same(g, g_ref)


@pytest.mark.parametrize("name", NAMES)
def test_residual_code_logits_keep_their_gradient_to_the_features_only(name):
    tok, f0 = tokenizer_and_features(name, seed=3)
    results = []
    for view in (lambda f: residual_code_logits(tok, f), lambda f: reference_code_logits(tok, f)):
        f = f0.clone().requires_grad_(True)
        logits = view(f)
        weights = [torch.randn(lg.shape, generator=torch.Generator().manual_seed(si)) for si, lg in enumerate(logits)]
        sum((lg * wt).sum() for lg, wt in zip(logits, weights)).backward()
        results.append(([lg.detach() for lg in logits], grads(tok, f)))
    (logits, g), (logits_ref, g_ref) = results
    assert all(torch.equal(a, b) for a, b in zip(logits, logits_ref, strict=True))
    assert g.keys() == {"f"}  # the subtracted terms carry no gradient to the codebook or phi
    assert_same(g, g_ref)
