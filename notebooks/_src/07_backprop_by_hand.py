# %% [markdown]
# # 07 · Backpropagation by hand (反向传播)
#
# Every training script in minigpt ends a step with `loss.backward()`, and autograd fills in the gradients.
# This notebook does that work by hand, one piece at a time, in the spirit of Karpathy's "backprop ninja"
# exercise: the SFT cross-entropy, LayerNorm, one causal attention head, the MLP with GPT-2's GELU, the reward
# model's pairwise loss, and PPO's clipped surrogate.
#
# For each piece: the derivation in formulas, the few lines of `minigpt/backprop.py` that implement it, and a
# check against autograd run through minigpt's **own** forward functions (`sft_loss`, the model's `LayerNorm`,
# `CausalSelfAttention`, `MLP`, `rm_ranking_loss`, `policy_loss`). Everything runs in float64, where a correct
# hand gradient agrees with autograd to about $10^{-15}$; we assert at most $10^{-6}$.
#
# Notation: for a scalar loss $L$ and any tensor $x$, $\bar x = \partial L / \partial x$ has the shape of $x$.
# Backprop is the chain rule applied from the loss down: each piece receives $\bar y$ for its output and
# returns $\bar x$ for its inputs.

# %%
import sys, os
sys.path.insert(0, os.path.abspath(".."))  # the repository root, so `import minigpt` works from notebooks/

import inspect, math
import torch
import torch.nn.functional as F
import matplotlib.pyplot as plt

torch.set_num_threads(2)
torch.manual_seed(0)
%matplotlib inline

from minigpt.backprop import (sft_loss_grad, layernorm_backward, attention_head_backward, gelu_tanh_grad,
                              mlp_backward, rm_pair_loss_grad, ppo_clip_grad)
from minigpt.losses import sft_loss, rm_ranking_loss
from minigpt.model import GPTConfig, Block, CausalSelfAttention, MLP
from minigpt.ppo import policy_loss

F64 = torch.float64


def show(fn):
    """Print a minigpt.backprop function: the derivation comment above it, then its code."""
    print(inspect.getcomments(fn) + inspect.getsource(fn))


def check(name, hand, auto):
    """Max abs difference between a hand gradient and autograd's; must be <= 1e-6 in float64."""
    diff = (hand - auto).abs().max().item()
    print(f"{name:<12} max |hand - autograd| = {diff:.2e}")
    assert diff <= 1e-6, name
    return diff

# %% [markdown]
# ## 1. SFT: masked mean cross-entropy
#
# `sft_loss` averages the next-token cross-entropy over the response tokens only ($m_t = 1$):
#
# $$L = \frac{1}{\sum_t m_t}\sum_t m_t\,\mathrm{CE}(z_t, y_t),
# \qquad \mathrm{CE}(z, y) = \log\sum_v e^{z_v} - z_y .$$
#
# The derivative of $\log\sum_v e^{z_v}$ with respect to $z_j$ is
# $e^{z_j}/\sum_v e^{z_v} = \mathrm{softmax}(z)_j$, and that of $z_y$ is $1$ at $j = y$ and $0$ elsewhere. So
#
# $$\bar z_t = \frac{m_t}{\sum_s m_s}\big(\mathrm{softmax}(z_t) - \mathrm{onehot}(y_t)\big).$$
#
# The gradient pushes the target's logit up and every logit down in proportion to its probability; each row
# sums to zero, and prompt and padding positions ($m_t = 0$) get exactly nothing.
#
# One detail: `sft_loss` computes the cross-entropy in float32 (`logits.float()`) even for float64 logits, so
# here the agreement is float32 rounding, about $10^{-8}$, rather than $10^{-15}$: still far inside $10^{-6}$.

# %%
show(sft_loss_grad)

B, T, V = 2, 6, 10
logits = torch.randn(B, T, V, dtype=F64, requires_grad=True)
targets = torch.randint(0, V, (B, T))
mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0]])  # prompt 0s, response 1s, trailing padding 0

sft_loss(logits, targets, mask).backward()
dlogits = sft_loss_grad(logits.detach(), targets, mask)
check("sft", dlogits, logits.grad)
print("row sums of the gradient (all 0):", dlogits.sum(-1).abs().max().item())
print("gradient at masked positions is exactly 0:", bool((dlogits[mask == 0] == 0).all()))

# %% [markdown]
# ## 2. LayerNorm
#
# Each of the model's LayerNorms (`nn.LayerNorm(C, bias=True)`, $\epsilon = 10^{-5}$) normalises one vector of
# width $C$ and rescales it:
#
# $$\mu = \tfrac1C\sum_i x_i,\quad \sigma^2 = \tfrac1C\sum_i (x_i-\mu)^2,\quad
# s = \sqrt{\sigma^2+\epsilon},\quad \hat x = \frac{x-\mu}{s},\quad y = w \odot \hat x + b .$$
#
# The parameters are easy: $\bar b = \sum_{\text{rows}} \bar y$ and
# $\bar w = \sum_{\text{rows}} \bar y \odot \hat x$. For $x$, let $g = \bar y \odot w$ (the gradient reaching
# $\hat x$). Every $x_i$ moves $\hat x_j$ three ways: directly, through $\mu$, and through $s$. Using
# $\partial\mu/\partial x_i = 1/C$ and $\partial s/\partial x_i = \hat x_i / (C s)$, the three terms collect
# into
#
# $$\bar x = \frac{1}{s}\Big(g - \operatorname{mean}(g) -
# \hat x \odot \operatorname{mean}(g \odot \hat x)\Big).$$
#
# The two subtracted means remove the parts of $g$ that a normalisation cannot express: a shift of all
# entries (the mean is taken out) and a stretch along $\hat x$ (the scale is taken out).

# %%
show(layernorm_backward)

C = 8
ln = Block(GPTConfig(n_embd=C, n_head=1)).ln_1.double()  # the model's own LayerNorm
with torch.no_grad():
    ln.weight.copy_(torch.randn(C, dtype=F64)); ln.bias.copy_(torch.randn(C, dtype=F64))
print("model's LayerNorm: eps =", ln.eps, " bias:", ln.bias is not None)

x = (2 * torch.randn(3, 4, C, dtype=F64) + 1).requires_grad_()
dy = torch.randn(3, 4, C, dtype=F64)
ln(x).backward(dy)
dx, dw, db = layernorm_backward(dy, x.detach(), ln.weight.detach(), ln.eps)
check("ln dx", dx, x.grad); check("ln dweight", dw, ln.weight.grad); check("ln dbias", db, ln.bias.grad)
print("dx sums to 0 along C (a shift of x changes nothing):", dx.sum(-1).abs().max().item())

# %% [markdown]
# ## 3. One causal attention head
#
# With $q, k, v$ of shape $(T, d)$ for one head (notebook 01):
#
# $$S = \frac{q k^\top}{\sqrt d} + M, \qquad P = \mathrm{softmax}_{\text{row}}(S), \qquad \text{out} = P v,$$
#
# $M_{ts} = -\infty$ for $s > t$ (the future). Going backwards through the two matrix products,
#
# $$\bar v = P^\top\, \overline{\text{out}}, \qquad \bar P = \overline{\text{out}}\; v^\top .$$
#
# Through the softmax of each row $p = \mathrm{softmax}(s)$, whose Jacobian is
# $\partial p_i/\partial s_j = p_i(\delta_{ij} - p_j)$:
#
# $$\bar S_{ts} = P_{ts}\Big(\bar P_{ts} - \sum_{s'} \bar P_{ts'} P_{ts'}\Big).$$
#
# The masked entries have $P_{ts} = 0$, so $\bar S_{ts} = 0$ there: no gradient flows to the future, and the
# $-\infty$ never has to be differentiated. Finally through $S = q k^\top/\sqrt d$:
#
# $$\bar q = \bar S\, k / \sqrt d, \qquad \bar k = \bar S^\top q / \sqrt d .$$

# %%
show(attention_head_backward)

T, d = 6, 4
q, k, v = (torch.randn(T, d, dtype=F64, requires_grad=True) for _ in range(3))
dout = torch.randn(T, d, dtype=F64)
causal = torch.ones(T, T, dtype=torch.bool).tril()
att = (q @ k.T / math.sqrt(d)).masked_fill(~causal, float("-inf"))  # the lines of CausalSelfAttention
(F.softmax(att, dim=-1) @ v).backward(dout)

dq, dk, dv = attention_head_backward(dout, q.detach(), k.detach(), v.detach())
check("attn dq", dq, q.grad); check("attn dk", dk, k.grad); check("attn dv", dv, v.grad)
print("upper triangle of dS is exactly 0 (no gradient through the future):")
S = q.detach() @ k.detach().T / math.sqrt(d)
P = torch.softmax(S.masked_fill(~causal, float("-inf")), dim=-1)
dP = dout @ v.detach().T
dS = P * (dP - (dP * P).sum(-1, keepdim=True))
print(dS.numpy().round(3))

# %% [markdown]
# Now inside the model's real module: `CausalSelfAttention` with 2 heads, in float64. The chain is $x \to$
# `c_attn` $\to (q, k, v)$ split into heads $\to$ attention $\to$ heads side by side $\to$ `c_proj`. By hand:
# the gradient reaching the heads' outputs is $\bar y\,W_{\text{proj}}$, the heads go through
# `attention_head_backward` (all at once: the function accepts leading batch and head dimensions), and
# $\bar x = [\bar q, \bar k, \bar v]\,W_{\text{attn}}$. Both module paths are checked: the written-out formula
# (`flash=False`) and PyTorch's fused kernel (`flash=True`), whose backward is a different implementation.

# %%
B, T, C, n_head = 2, 6, 8, 2
hd = C // n_head
x = torch.randn(B, T, C, dtype=F64)
dy = torch.randn(B, T, C, dtype=F64)
heads = lambda t: t.view(B, T, n_head, hd).transpose(1, 2)  # (B, T, C) -> (B, n_head, T, hd)

for flash in (False, True):
    attn = CausalSelfAttention(GPTConfig(n_embd=C, n_head=n_head, flash=flash)).double()
    xg = x.clone().requires_grad_()
    attn(xg).backward(dy)

    W, b, Wp = attn.c_attn.weight.detach(), attn.c_attn.bias.detach(), attn.c_proj.weight.detach()
    qh, kh, vh = (heads(t) for t in (x @ W.T + b).split(C, dim=2))
    dq, dk, dv = attention_head_backward(heads(dy @ Wp), qh, kh, vh)
    dqkv = torch.cat([t.transpose(1, 2).reshape(B, T, C) for t in (dq, dk, dv)], dim=2)  # (B, T, 3C)
    check(f"flash={flash}", dqkv @ W, xg.grad)

# %% [markdown]
# ## 4. The MLP and GPT-2's GELU
#
# `minigpt.model.MLP` is `c_fc` $\to$ GELU $\to$ `c_proj`, with weights in `nn.Linear`'s (out, in) layout:
#
# $$h = x W_1^\top + b_1, \qquad a = \mathrm{gelu}(h), \qquad y = a W_2^\top + b_2 .$$
#
# A linear layer $y = a W^\top + b$ gives $\bar W = \bar y^\top a$, $\bar b = \sum_{\text{rows}}\bar y$,
# $\bar a = \bar y\, W$. The GELU is elementwise, so $\bar h = \bar a \odot \mathrm{gelu}'(h)$. Which GELU
# matters: the model uses GPT-2's **tanh approximation** (`nn.GELU(approximate="tanh")`), not the exact
# $h\,\Phi(h)$:
#
# $$\mathrm{gelu}(h) = \tfrac12 h\,(1 + \tanh u), \quad u = \sqrt{2/\pi}\,(h + 0.044715\,h^3),$$
#
# $$\mathrm{gelu}'(h) = \tfrac12(1 + \tanh u) +
# \tfrac12 h\,(1 - \tanh^2 u)\,\sqrt{2/\pi}\,(1 + 3\cdot 0.044715\,h^2).$$

# %%
show(gelu_tanh_grad)
show(mlp_backward)

mlp = MLP(GPTConfig(n_embd=4)).double()
print("the model's GELU:", mlp.gelu)
with torch.no_grad():
    for p in mlp.parameters():
        p.copy_(torch.randn(p.shape, dtype=F64))
x = torch.randn(2, 3, 4, dtype=F64, requires_grad=True)
dout = torch.randn(2, 3, 4, dtype=F64)
mlp(x).backward(dout)
weights = [p.detach() for p in (mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias)]
hand = mlp_backward(dout, x.detach(), *weights)
auto = (x.grad, mlp.c_fc.weight.grad, mlp.c_fc.bias.grad, mlp.c_proj.weight.grad, mlp.c_proj.bias.grad)
for name, h_, a_ in zip(("mlp dx", "mlp dw1", "mlp db1", "mlp dw2", "mlp db2"), hand, auto):
    check(name, h_, a_)

# %% [markdown]
# The exact GELU's derivative, $\Phi(h) + h\,\varphi(h)$, would fail this check: the two forms differ by about
# $10^{-3}$, far above float64 rounding. A hand gradient has to be the derivative of the function the model
# actually computes.

# %%
h = torch.linspace(-4, 4, 801, dtype=F64)
exact_grad = 0.5 * (1 + torch.erf(h / math.sqrt(2))) + h * torch.exp(-h * h / 2) / math.sqrt(2 * math.pi)
print(f"max |gelu'_tanh - gelu'_erf| on [-4, 4]: {(gelu_tanh_grad(h) - exact_grad).abs().max().item():.1e}")

# %% [markdown]
# ## 5. The reward model's pairwise loss
#
# For a pair of responses where labellers preferred $y_w$ over $y_l$, the reward model pays
# $L = -\log\sigma(\Delta)$ with $\Delta = r_w - r_l$ (`rm_ranking_loss` with $K = 2$). Since
# $\frac{d}{d\Delta}\log\sigma(\Delta) = 1 - \sigma(\Delta) = \sigma(-\Delta)$,
#
# $$\bar r_w = -\sigma(-\Delta), \qquad \bar r_l = +\sigma(-\Delta).$$
#
# The two rewards get equal and opposite pushes, and their size is the model's probability of having the
# pair **wrong**: a pair already ranked right by a wide margin teaches almost nothing, a badly wrong one
# pushes with nearly full strength 1.

# %%
show(rm_pair_loss_grad)

for margin in (-4.0, -1.0, 0.0, 1.0, 4.0):
    r = torch.tensor([0.5 + margin, 0.5], dtype=F64, requires_grad=True)  # best first: (r_w, r_l)
    rm_ranking_loss(r).backward()
    d_w, d_l = rm_pair_loss_grad(r[0].detach(), r[1].detach())
    print(f"Δ = {margin:+.0f}: d r_w = {d_w.item():+.4f}, d r_l = {d_l.item():+.4f}", end="   ")
    check("rm", torch.stack([d_w, d_l]), r.grad)

# %% [markdown]
# ## 6. PPO's clipped surrogate
#
# `policy_loss` works on the log-probabilities $\ell_t$ of the sampled tokens. With
# $\rho_t = e^{\ell_t - \ell^{\text{old}}_t}$ and advantages $A_t$ fixed by the rollout,
#
# $$L = \frac{1}{\sum_t m_t}\sum_t m_t
# \max\!\big(-A_t\,\rho_t,\; -A_t\,\mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\big).$$
#
# Since $d\rho_t/d\ell_t = \rho_t$, where the unclipped term is the max,
# $\bar\ell_t = -A_t\,\rho_t\, m_t/\sum m$. Where the clipped term is the max it is a constant in $\ell_t$, so
# $\bar\ell_t = 0$ **exactly**. That happens only on the side the advantage makes binding:
#
# - $A_t > 0$ and $\rho_t > 1 + \epsilon$: the token has already been made more likely enough this round;
# - $A_t < 0$ and $\rho_t < 1 - \epsilon$: it has already been made less likely enough.
#
# On the other side ($A_t > 0$, $\rho_t < 1-\epsilon$, say: the update went the wrong way) the clip does not
# bind and the gradient is at full strength, pulling the ratio back.

# %%
show(ppo_clip_grad)

B, N, eps = 3, 8, 0.2
logprobs = (torch.randn(B, N, dtype=F64) - 2).requires_grad_()
old = logprobs.detach() + 0.4 * torch.randn(B, N, dtype=F64)
adv = torch.randn(B, N, dtype=F64)
mask = torch.ones(B, N); mask[1, 5:] = 0; mask[2, 3:] = 0

loss, stats = policy_loss(logprobs, old, adv, mask, clip=eps)
loss.backward()
dlogp = ppo_clip_grad(logprobs.detach(), old, adv, mask, clip=eps)
check("ppo", dlogp, logprobs.grad)

ratio = torch.exp(logprobs.detach() - old)
binding = mask.bool() & (((adv > 0) & (ratio > 1 + eps)) | ((adv < 0) & (ratio < 1 - eps)))
print(f"{int(binding.sum())} of {int(mask.sum())} real tokens clipped "
      f"(policy_loss's clipfrac = {stats['clipfrac']:.3f})")
print("gradient at clipped tokens:", dlogp[binding].tolist(),
      "(autograd:", logprobs.grad[binding].tolist(), ")")
print("all other real tokens nonzero:", bool((dlogp[mask.bool() & ~binding] != 0).all()))
assert (dlogp[binding] == 0).all() and (logprobs.grad[binding] == 0).all()

# %% [markdown]
# The same for a single token as its ratio sweeps from 0.5 to 1.5, for $A = +1$ and $A = -1$: the per-token
# loss (left) and its gradient with respect to $\ell$ (right), by hand (lines) and by autograd (dots). The
# shaded band is $[1-\epsilon, 1+\epsilon]$. Outside it the gradient drops to exactly zero on one side only.

# %%
rho = torch.linspace(0.5, 1.5, 201, dtype=F64)
one = torch.ones(1, len(rho))
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for A, color in ((1.0, "tab:blue"), (-1.0, "tab:red")):
    ell = torch.log(rho)[None].clone().requires_grad_()          # log pi, with log pi_old = 0: ratio = rho
    adv_row = torch.full_like(one, A, dtype=F64)
    per_token = torch.max(-adv_row * rho, -adv_row * rho.clamp(1 - eps, 1 + eps))[0]
    policy_loss(ell, torch.zeros_like(ell), adv_row, one, clip=eps)[0].backward()
    grad_hand = ppo_clip_grad(ell.detach(), torch.zeros_like(ell), adv_row, one, clip=eps)[0] * len(rho)
    grad_auto = ell.grad[0] * len(rho)                            # undo the mean over the 201 "tokens"
    check(f"ppo A={A:+.0f}", grad_hand, grad_auto)
    axes[0].plot(rho, per_token, color=color, label=f"A = {A:+.0f}")
    axes[1].plot(rho, grad_hand, color=color, label=f"A = {A:+.0f}, by hand")
    axes[1].plot(rho[::10], grad_auto[::10], "o", color=color, ms=4, label=f"A = {A:+.0f}, autograd")
for ax, title in zip(axes, ("per-token loss  max(−Aρ, −A·clip(ρ))",
                            "d loss / d log π  (zero where the clip binds)")):
    ax.axvspan(1 - eps, 1 + eps, color="grey", alpha=0.15)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("ratio ρ = π / π_old"); ax.set_title(title); ax.legend(fontsize=8)
plt.tight_layout(); plt.show()

# %% [markdown]
# ## Summary
#
# | piece | gradient |
# |---|---|
# | SFT cross-entropy | $\bar z_t = (\mathrm{softmax}(z_t) - \mathrm{onehot}(y_t))\, m_t / \sum m$ |
# | LayerNorm | $\bar x = (g - \mathrm{mean}(g) - \hat x\,\mathrm{mean}(g\hat x))/s$, $g = \bar y w$ |
# | attention head: $\text{out} = P v$ | $\bar v = P^\top \overline{\text{out}}$ |
# | attention head: softmax | $\bar S = P\odot(\bar P - \mathrm{rowsum}(\bar P \odot P))$ |
# | attention head: $S = q k^\top/\sqrt d$ | $\bar q = \bar S k/\sqrt d$, $\bar k = \bar S^\top q/\sqrt d$ |
# | MLP: linear layers | $\bar W = \bar y^\top a$, $\bar a = \bar y W$ |
# | MLP: GELU (tanh form) | $\bar h = \bar a \odot \mathrm{gelu}'(h)$ |
# | RM pair loss | $\bar r_w = -\sigma(r_l - r_w) = -\bar r_l$ |
# | PPO clip | $\bar\ell_t = -A_t\rho_t\, m_t/\sum m$, or exactly $0$ where the clip binds |
#
# All of them agree with autograd through minigpt's own forward code to float64 rounding. Putting them
# together in the right order (the embedding, then blocks of LayerNorm, attention and MLP with their residual
# additions, then the final LayerNorm and the tied `lm_head`) gives the whole backward pass of the GPT; the
# residual connections just add the gradients of their two branches.
