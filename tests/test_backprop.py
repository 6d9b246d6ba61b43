"""minigpt/backprop.py: every hand-written gradient against autograd, in float64, through minigpt's own
forwards."""

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt.backprop import (attention_head_backward, layernorm_backward, mlp_backward, ppo_clip_grad,
                              rm_pair_loss_grad, sft_loss_grad)
from minigpt.losses import rm_ranking_loss, sft_loss
from minigpt.model import MLP, Block, CausalSelfAttention, GPTConfig
from minigpt.ppo import policy_loss

TOL = dict(atol=1e-6, rtol=0)
F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_sft_loss_grad_matches_autograd():
    g = gen(0)
    logits = torch.randn(2, 5, 7, generator=g, dtype=F64, requires_grad=True)
    targets = torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    targets[mask == 0] = -100  # pad ids at masked positions must not matter
    sft_loss(logits, targets, mask).backward()
    hand = sft_loss_grad(logits.detach(), targets, mask)
    torch.testing.assert_close(hand, logits.grad, **TOL)
    assert (hand[mask == 0] == 0).all()


def test_layernorm_backward_matches_autograd_with_the_models_layernorm():
    ln = Block(GPTConfig(n_embd=6, n_head=1)).ln_1.double()  # the model's own LayerNorm (eps, bias)
    g = gen(1)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(6, generator=g, dtype=F64))
        ln.bias.copy_(torch.randn(6, generator=g, dtype=F64))
    x = (3 * torch.randn(2, 4, 6, generator=g, dtype=F64) + 1).requires_grad_()
    dy = torch.randn(2, 4, 6, generator=g, dtype=F64)
    ln(x).backward(dy)
    dx, dw, db = layernorm_backward(dy, x.detach(), ln.weight.detach(), ln.eps)
    torch.testing.assert_close(dx, x.grad, **TOL)
    torch.testing.assert_close(dw, ln.weight.grad, **TOL)
    torch.testing.assert_close(db, ln.bias.grad, **TOL)
    # and the functional form with nn.LayerNorm's default eps
    x2 = x.detach().clone().requires_grad_()
    F.layer_norm(x2, (6,), ln.weight.detach(), None, 1e-5).backward(dy)
    torch.testing.assert_close(layernorm_backward(dy, x2.detach(), ln.weight.detach())[0], x2.grad, **TOL)


def test_attention_head_backward_matches_the_formula():
    g = gen(2)
    T, d = 5, 4
    q, k, v = (torch.randn(T, d, generator=g, dtype=F64, requires_grad=True) for _ in range(3))
    dout = torch.randn(T, d, generator=g, dtype=F64)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    att = (q @ k.T / math.sqrt(d)).masked_fill(~causal, float("-inf"))  # the model's flash=False lines
    (F.softmax(att, dim=-1) @ v).backward(dout)
    dq, dk, dv = attention_head_backward(dout, q.detach(), k.detach(), v.detach())
    torch.testing.assert_close(dq, q.grad, **TOL)
    torch.testing.assert_close(dk, k.grad, **TOL)
    torch.testing.assert_close(dv, v.grad, **TOL)


@pytest.mark.parametrize("flash", [False, True])
def test_attention_head_backward_inside_the_models_attention_module(flash):
    """Chain c_proj -> every head -> c_attn by hand and compare with the module's own backward."""
    B, T, C, n_head = 2, 5, 8, 2
    attn = CausalSelfAttention(GPTConfig(n_embd=C, n_head=n_head, flash=flash)).double()
    g = gen(3)
    x = torch.randn(B, T, C, generator=g, dtype=F64, requires_grad=True)
    dy = torch.randn(B, T, C, generator=g, dtype=F64)
    attn(x).backward(dy)

    W, b = attn.c_attn.weight.detach(), attn.c_attn.bias.detach()
    Wp = attn.c_proj.weight.detach()
    hd = C // n_head
    heads = lambda t: t.view(B, T, n_head, hd).transpose(1, 2)  # noqa: E731  (B, n_head, T, hd)
    q, k, v = (heads(t) for t in (x.detach() @ W.T + b).split(C, dim=2))
    dyh = heads(dy @ Wp)                                         # gradient reaching the heads' outputs
    dq, dk, dv = attention_head_backward(dyh, q, k, v)           # all heads at once (leading dims)
    dqkv = torch.cat([t.transpose(1, 2).reshape(B, T, C) for t in (dq, dk, dv)], dim=2)  # (B, T, 3C)
    torch.testing.assert_close(dqkv @ W, x.grad, **TOL)
    torch.testing.assert_close(dqkv.flatten(0, 1).T @ x.detach().flatten(0, 1),
                               attn.c_attn.weight.grad, **TOL)


def test_mlp_backward_matches_the_models_mlp():
    mlp = MLP(GPTConfig(n_embd=4)).double()
    assert mlp.gelu.approximate == "tanh"  # the derivative in backprop.py is the tanh form's
    g = gen(4)
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
    x = torch.randn(2, 3, 4, generator=g, dtype=F64, requires_grad=True)
    dout = torch.randn(2, 3, 4, generator=g, dtype=F64)
    mlp(x).backward(dout)
    hand = mlp_backward(dout, x.detach(), *(p.detach() for p in
                        (mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias)))
    auto = (x.grad, mlp.c_fc.weight.grad, mlp.c_fc.bias.grad, mlp.c_proj.weight.grad, mlp.c_proj.bias.grad)
    for h, a in zip(hand, auto):
        torch.testing.assert_close(h, a, **TOL)


@pytest.mark.parametrize("margin", [-3.0, -0.4, 0.0, 0.7, 5.0])
def test_rm_pair_loss_grad_matches_rm_ranking_loss_with_k2(margin):
    r = torch.tensor([0.3 + margin, 0.3], dtype=F64, requires_grad=True)  # best first: r_w, r_l
    rm_ranking_loss(r).backward()
    d_w, d_l = rm_pair_loss_grad(r[0].detach(), r[1].detach())
    torch.testing.assert_close(torch.stack([d_w, d_l]), r.grad, **TOL)


def ppo_case(seed, scale):
    g = gen(seed)
    logprobs = torch.randn(3, 6, generator=g, dtype=F64) - 2
    old = logprobs + scale * torch.randn(3, 6, generator=g, dtype=F64)  # scale sets how far the ratios move
    adv = torch.randn(3, 6, generator=g, dtype=F64)
    mask = torch.ones(3, 6)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    return logprobs.requires_grad_(), old, adv, mask


@pytest.mark.parametrize("scale", [0.05, 0.5])
def test_ppo_clip_grad_matches_policy_loss(scale):
    logprobs, old, adv, mask = ppo_case(5, scale)
    policy_loss(logprobs, old, adv, mask, clip=0.2)[0].backward()
    hand = ppo_clip_grad(logprobs.detach(), old, adv, mask, clip=0.2)
    torch.testing.assert_close(hand, logprobs.grad, **TOL)
    assert (hand[mask == 0] == 0).all()


def test_ppo_clip_grad_is_exactly_zero_where_the_clip_binds():
    logprobs, old, adv, mask = ppo_case(6, 0.5)
    ratio = torch.exp(logprobs.detach() - old)
    binding = mask.bool() & (((adv > 0) & (ratio > 1.2)) | ((adv < 0) & (ratio < 0.8)))
    free = mask.bool() & ~binding
    assert binding.sum() >= 2 and free.sum() >= 2, "the case should have both kinds of tokens"
    loss, stats = policy_loss(logprobs, old, adv, mask, clip=0.2)
    loss.backward()
    hand = ppo_clip_grad(logprobs.detach(), old, adv, mask, clip=0.2)
    assert (hand[binding] == 0).all() and (logprobs.grad[binding] == 0).all()
    assert (hand[free] != 0).all()
    torch.testing.assert_close(hand, logprobs.grad, **TOL)
    assert stats["clipfrac"] == pytest.approx(binding.sum().item() / mask.sum().item())
