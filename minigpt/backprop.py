"""Backpropagation by hand: the gradient of each piece of minigpt, written out without autograd.

Training never calls this file; loss.backward() does the same work. It is here to be read, and to be
checked: tests/test_backprop.py and notebooks/07_backprop_by_hand.ipynb compare every function with
autograd on float64 inputs (max abs difference <= 1e-6), using minigpt's own forward functions.

Each function takes the forward's inputs plus the gradient flowing in from above (dy, dout, ...) and
returns the gradients of the inputs. The derivation sits in the comment above it. Shapes: B batch,
T positions, V vocabulary, C width, H = 4C hidden width of the MLP, d head width. Works in any float
dtype; use float64 to compare with autograd to 1e-6.
"""

import math

import torch


# L = Σ_t m_t · CE(z_t, y_t) / Σ_t m_t,     CE(z, y) = logsumexp(z) − z_y
# ∂CE/∂z = softmax(z) − onehot(y)   ⇒   ∂L/∂z_t = (softmax(z_t) − onehot(y_t)) · m_t / Σ m
# logits z (B, T, V), targets y (B, T) long, mask m (B, T) 0/1  →  dlogits (B, T, V)
def sft_loss_grad(logits, targets, mask):
    """dL/dlogits of minigpt.losses.sft_loss (an empty mask divides by 1, as sft_loss does)."""
    keep = mask.bool()
    targets = torch.where(keep, targets, torch.zeros_like(targets))  # pad ids may be anything
    probs = torch.softmax(logits, dim=-1)                              # (B, T, V)
    onehot = torch.nn.functional.one_hot(targets, logits.shape[-1]).to(logits.dtype)
    n = keep.sum().clamp(min=1)
    return (probs - onehot) * keep.unsqueeze(-1).to(logits.dtype) / n


# Forward over the last dim (C): μ = mean(x), σ² = mean((x − μ)²) (biased), s = √(σ² + eps)
#   x̂ = (x − μ)/s,   y = w·x̂ + b
# Backward, with g = dy·w (the gradient reaching x̂):
#   db = Σ_rows dy,   dw = Σ_rows dy·x̂
#   dx = (g − mean(g) − x̂·mean(g·x̂)) / s       (μ and s depend on every x_i: the two mean terms)
# dy, x (..., C), weight (C,)  →  dx (..., C), dweight (C,), dbias (C,)
def layernorm_backward(dy, x, weight, eps=1e-5):
    """Gradients of F.layer_norm(x, (C,), weight, bias, eps); nn.LayerNorm's default eps is 1e-5."""
    mu = x.mean(-1, keepdim=True)
    s = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
    xhat = (x - mu) / s
    g = dy * weight
    dx = (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True)) / s
    rows = tuple(range(dy.dim() - 1))
    return dx, (dy * xhat).sum(rows), dy.sum(rows)


# Forward (one head):  S = q kᵀ/√d (masked to −inf above the diagonal),  P = softmax(S) row-wise,
#                      out = P v
# Backward:
#   dv = Pᵀ dout,   dP = dout vᵀ
#   dS = P ⊙ (dP − rowsum(dP ⊙ P))      (softmax's Jacobian; masked entries have P = 0, so dS = 0 there)
#   dq = dS k / √d,   dk = dSᵀ q / √d
# dout, q, k, v (..., T, d); allowed (T, T) bool, True where query t may see key s (default: causal)
def attention_head_backward(dout, q, k, v, allowed=None):
    """Gradients (dq, dk, dv) of one attention head, out = softmax(q kᵀ/√d + causal mask) v."""
    T, d = q.shape[-2], q.shape[-1]
    if allowed is None:
        allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    S = (q @ k.transpose(-2, -1)) / math.sqrt(d)
    P = torch.softmax(S.masked_fill(~allowed, float("-inf")), dim=-1)  # (..., T, T)
    dv = P.transpose(-2, -1) @ dout
    dP = dout @ v.transpose(-2, -1)
    dS = P * (dP - (dP * P).sum(-1, keepdim=True))
    dq = dS @ k / math.sqrt(d)
    dk = dS.transpose(-2, -1) @ q / math.sqrt(d)
    return dq, dk, dv


# GPT-2's GELU, the tanh form (nn.GELU(approximate="tanh")):
#   g(h) = ½ h (1 + tanh u),   u = √(2/π) (h + 0.044715 h³)
#   g'(h) = ½ (1 + tanh u) + ½ h (1 − tanh² u) · √(2/π) (1 + 3·0.044715 h²)
def gelu_tanh_grad(h):
    """dg/dh of the tanh-approximated GELU, elementwise."""
    c = math.sqrt(2.0 / math.pi)
    t = torch.tanh(c * (h + 0.044715 * h ** 3))
    return 0.5 * (1 + t) + 0.5 * h * (1 - t * t) * c * (1 + 3 * 0.044715 * h * h)


# Forward (nn.Linear layout, weight = (out, in)):  h = x w1ᵀ + b1,  a = gelu(h),  y = a w2ᵀ + b2
# Backward, rows = every leading position:
#   dw2 = doutᵀ a,  db2 = Σ dout,  da = dout w2
#   dh = da ⊙ gelu'(h)
#   dw1 = dhᵀ x,    db1 = Σ dh,    dx = dh w1
# dout, x (..., C); w1 (H, C), b1 (H,), w2 (C, H), b2 (C,)  →  dx, dw1, db1, dw2, db2
def mlp_backward(dout, x, w1, b1, w2, b2):
    """Gradients of minigpt.model.MLP (c_fc → tanh-GELU → c_proj, no dropout) for x and all weights."""
    x2, dout2 = x.reshape(-1, x.shape[-1]), dout.reshape(-1, dout.shape[-1])  # (rows, C)
    h = x2 @ w1.T + b1                                                         # (rows, H)
    a = 0.5 * h * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h ** 3)))
    dw2, db2 = dout2.T @ a, dout2.sum(0)
    dh = (dout2 @ w2) * gelu_tanh_grad(h)
    dw1, db1 = dh.T @ x2, dh.sum(0)
    dx = (dh @ w1).reshape(x.shape)
    return dx, dw1, db1, dw2, db2


# L = −log σ(Δ),  Δ = r_w − r_l
# dL/dΔ = −(1 − σ(Δ)) = −σ(−Δ)   ⇒   dL/dr_w = −σ(−Δ),  dL/dr_l = +σ(−Δ)
# (a pair already ranked right by a wide margin, Δ ≫ 0, gets almost no gradient)
def rm_pair_loss_grad(r_w, r_l):
    """(dL/dr_w, dL/dr_l) of one pair's ranking loss, elementwise over any number of pairs."""
    s = torch.sigmoid(-(r_w - r_l))
    return -s, s


# ρ_t = exp(ℓ_t − ℓ_old,t),   L = Σ_t m_t · max(−A_t ρ_t, −A_t clip(ρ_t, 1−ε, 1+ε)) / Σ m
# Where the unclipped term wins: ∂L/∂ℓ_t = −A_t ρ_t · m_t / Σ m      (dρ/dℓ = ρ)
# Where the clipped term wins (it is a constant in ℓ): ∂L/∂ℓ_t = 0. That happens when
#   A_t > 0 and ρ_t > 1+ε   (already made more likely enough), or
#   A_t < 0 and ρ_t < 1−ε   (already made less likely enough).
# logprobs ℓ, old_logprobs, advantages A, mask m (B, N)  →  dlogprobs (B, N)
def ppo_clip_grad(logprobs, old_logprobs, advantages, mask, clip=0.2):
    """d loss / d logprobs of minigpt.ppo.policy_loss; exactly 0 at clipped tokens and at pads."""
    keep = mask.bool()
    ratio = torch.exp(torch.where(keep, logprobs - old_logprobs, torch.zeros_like(logprobs)))
    adv = torch.where(keep, advantages, torch.zeros_like(advantages))
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    active = keep & ~(clipped > unclipped)                                # the unclipped term is the max
    n = keep.sum().clamp(min=1)
    return torch.where(active, -adv * ratio, torch.zeros_like(ratio)) / n
