# %% [markdown]
# # 01 · Attention and the GPT block
#
# Every stage of InstructGPT — pretraining (预训练), supervised fine-tuning (监督学习), the reward
# model (奖励模型) and reinforcement learning (强化学习) — trains the same network: a GPT, a stack
# of Transformer blocks. This notebook opens one block. We compute the self-attention formula
# (自注意力机制)
#
# $$\text{Attention}(Q, K, V) = \text{softmax}\left(\frac{QK^T}{\sqrt{d_k}}\right)V$$
#
# by hand with a handful of torch operations, check that `minigpt.model.CausalSelfAttention` gives the same
# numbers (both its written-out path and the fused `flash=True` kernel), look at the causal mask, follow the
# tensor shapes through one `Block`, and count where the parameters of the default model live.
#
# Nothing here is copied from `minigpt/`: the notebook imports the real modules and checks itself against
# them.

# %%
import sys, os
sys.path.insert(0, os.path.abspath(".."))  # the repository root, so `import minigpt` works from notebooks/

import math
import torch
import torch.nn.functional as F
import matplotlib.pyplot as plt

torch.set_num_threads(2)
torch.manual_seed(0)
%matplotlib inline

from minigpt.model import GPTConfig, GPT, Block, CausalSelfAttention

# %% [markdown]
# ## 1. The formula by hand: T = 5 tokens, d = 4
#
# Take 5 token vectors of width 4. One attention head turns each vector into three: a **query** ("what am I
# looking for?"), a **key** ("what do I contain?") and a **value** ("what do I pass on if chosen"). In minigpt
# a single linear layer `c_attn` makes all three at once; we borrow its weights so that the hand computation
# and the module use the same $W_Q, W_K, W_V$.
#
# Why divide by $\sqrt{d_k}$? A dot product of two random $d_k$-dimensional vectors has variance
# $\approx d_k$; without the scale, wide heads would produce huge scores, the softmax would become nearly
# one-hot, and its gradients would vanish.

# %%
T, d = 5, 4
config = GPTConfig(block_size=8, n_embd=d, n_head=1, dropout=0.0)
attn = CausalSelfAttention(config).eval()
x = torch.randn(1, T, d)                               # (B=1, T=5, C=4)

W = attn.c_attn.weight.detach()                        # (3C, C): rows of W_Q, then W_K, then W_V
b = attn.c_attn.bias.detach()
Q = x[0] @ W[:d].T + b[:d]                             # (T, d_k)
K = x[0] @ W[d:2*d].T + b[d:2*d]                       # (T, d_k)
V = x[0] @ W[2*d:].T + b[2*d:]                         # (T, d_k)

scores = Q @ K.T / math.sqrt(d)                        # (T, T): how well query t matches key s
causal = torch.tril(torch.ones(T, T, dtype=torch.bool)) # token t may look at tokens s <= t only
scores = scores.masked_fill(~causal, float("-inf"))    # -inf -> weight exactly 0 after softmax
weights = torch.softmax(scores, dim=-1)                # (T, T), every row sums to 1
by_hand = weights @ V                                  # (T, d_k): weighted average of the values
by_hand = by_hand @ attn.c_proj.weight.detach().T + attn.c_proj.bias.detach()  # the output projection

print("attention weights (row = query, column = key):")
print(weights.numpy().round(3))
print("row sums:", weights.sum(-1).numpy().round(6))

# %% [markdown]
# Now the module itself, twice: the written-out path (`flash=False`, the formula line by line with a
# `-inf` mask) and PyTorch's fused `F.scaled_dot_product_attention` (`flash=True`). Same weights, same input.
# They should agree with the hand computation to float32 rounding.

# %%
with torch.no_grad():
    attn.flash = False
    y_manual = attn(x)[0]
    attn.flash = True
    y_flash = attn(x)[0]

print("hand == module (written out):", torch.allclose(by_hand, y_manual, atol=1e-6))
print("hand == module (flash=True): ", torch.allclose(by_hand, y_flash, atol=1e-6))
print("largest difference:", (by_hand - y_flash).abs().max().item())
assert torch.allclose(by_hand, y_manual, atol=1e-6) and torch.allclose(by_hand, y_flash, atol=1e-6)

# %% [markdown]
# ## 2. The causal mask, as a picture
#
# A language model is trained to predict token $t+1$ from tokens $1..t$. If position $t$ could attend to
# later positions it would simply read the answer. The lower-triangular mask forbids that: the upper triangle
# is set to $-\infty$ before the softmax, so those weights are exactly zero. That is also why one forward pass
# over a sequence of length T trains T next-token predictions at once.
#
# Below, left: the mask (white = allowed). Right: the attention weights of our random head. The first token
# can only attend to itself (weight 1); later tokens spread their weight over the past.

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
axes[0].imshow(causal.float(), cmap="gray", vmin=0, vmax=1)
axes[0].set_title("causal mask (white = may attend)")
im = axes[1].imshow(weights, cmap="viridis", vmin=0, vmax=1)
axes[1].set_title("softmax(QKᵀ/√d_k) with the mask")
for ax in axes:
    ax.set_xlabel("key position s"); ax.set_ylabel("query position t")
    ax.set_xticks(range(T)); ax.set_yticks(range(T))
for t in range(T):
    for s in range(T):
        axes[1].text(s, t, f"{weights[t, s]:.2f}", ha="center", va="center", fontsize=7,
                     color="white" if weights[t, s] < 0.5 else "black")
fig.colorbar(im, ax=axes[1], fraction=0.046)
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 3. Shapes through one Block
#
# A GPT block is *pre-LayerNorm*: `x = x + attn(ln_1(x))`, then `x = x + mlp(ln_2(x))`. The residual stream
# `x` keeps its shape (B, T, C) all the way through; each sub-layer reads a normalised copy and *adds* its
# result back. Multi-head attention splits C into `n_head` heads of width `C / n_head`, runs the formula above
# in each head in parallel, and concatenates the results.
#
# We use the default model width (C = 128, 4 heads) and walk through the block step by step, printing every
# shape, then check that our steps reproduce `Block.forward` exactly.

# %%
cfg = GPTConfig()                                      # the default model: C=128, 4 heads, 4 layers
block = Block(cfg).eval()
B, T2, C, H = 2, 6, cfg.n_embd, cfg.n_head
hd = C // H
x = torch.randn(B, T2, C)

def show(name, t):
    print(f"{name:<44s} {tuple(t.shape)}")

with torch.no_grad():
    show("x  (residual stream)", x)
    h = block.ln_1(x);                              show("ln_1(x)", h)
    qkv = block.attn.c_attn(h);                     show("c_attn(h): q, k, v side by side", qkv)
    q, k, v = qkv.split(C, dim=2);                  show("q (and k, v)", q)
    q = q.view(B, T2, H, hd).transpose(1, 2);       show("q split into heads (B, n_head, T, head_dim)", q)
    k = k.view(B, T2, H, hd).transpose(1, 2)
    v = v.view(B, T2, H, hd).transpose(1, 2)
    att = q @ k.transpose(-2, -1) / math.sqrt(hd);  show("QKᵀ/√d_k  (B, n_head, T, T)", att)
    att = att.masked_fill(~torch.tril(torch.ones(T2, T2, dtype=torch.bool)), float("-inf"))
    att = att.softmax(-1)
    y = att @ v;                                    show("weights @ V  (B, n_head, T, head_dim)", y)
    y = y.transpose(1, 2).reshape(B, T2, C);        show("heads concatenated", y)
    x1 = x + block.attn.c_proj(y);                  show("x + c_proj(y)   (first residual add)", x1)
    m = block.mlp.c_fc(block.ln_2(x1));             show("mlp.c_fc(ln_2(x)): 4x wider", m)
    m = block.mlp.c_proj(block.mlp.gelu(m));        show("mlp.c_proj(gelu(.)): back to C", m)
    out = x1 + m;                                   show("x + mlp(...)   (second residual add)", out)
    print("our steps == Block.forward:", torch.allclose(out, block(x), atol=1e-5))
    assert torch.allclose(out, block(x), atol=1e-5)

# %% [markdown]
# ## 4. Where the parameters live
#
# `GPT(GPTConfig()).num_params()` counts every weight once. The token embedding `wte` (vocab × C) doubles as
# the output layer `lm_head` (*weight tying*), so it is counted once. Each block holds attention
# ($C \cdot 3C + 3C$ for q/k/v, $C^2 + C$ for the output projection), the MLP ($C \cdot 4C + 4C$ and
# $4C \cdot C + C$) and two LayerNorms ($2C$ each) — about $12C^2$ per block.

# %%
model = GPT(GPTConfig())
print(f"GPT(GPTConfig()).num_params() = {model.num_params():,}")
print("lm_head shares wte's matrix:", model.lm_head.weight is model.transformer.wte.weight)

groups = {}
for name, p in model.named_parameters():               # tied weights are listed once
    if name.startswith("transformer.wte"):
        key = "wte (= lm_head)"
    elif name.startswith("transformer.wpe"):
        key = "wpe"
    elif ".attn." in name:
        key = "attention (all blocks)"
    elif ".mlp." in name:
        key = "MLP (all blocks)"
    else:
        key = "LayerNorms"
    groups[key] = groups.get(key, 0) + p.numel()
assert sum(groups.values()) == model.num_params()

Cd, L, Vsz, Tb = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.block_size
formula = {"wte (= lm_head)": Vsz * Cd, "wpe": Tb * Cd,
           "attention (all blocks)": L * (Cd * 3 * Cd + 3 * Cd + Cd * Cd + Cd),
           "MLP (all blocks)": L * (Cd * 4 * Cd + 4 * Cd + 4 * Cd * Cd + Cd),
           "LayerNorms": L * 2 * 2 * Cd + 2 * Cd}
print(f"\n{'group':<24s}{'parameters':>12s}{'formula':>12s}{'share':>8s}")
for key, n in groups.items():
    print(f"{key:<24s}{n:>12,}{formula[key]:>12,}{n / model.num_params():>8.1%}")
assert groups == formula

# %% [markdown]
# At this small size the vocabulary matrix is a large share of the model: a 2048-token vocabulary at width 128
# is bigger than a whole block. In GPT-3 (175B parameters) the blocks dominate completely, since
# they grow with $C^2$ while the embedding grows with $C$.
#
# The picture below puts the groups side by side, and shows per layer how the MLP holds twice the attention's
# weights.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
names, counts = list(groups), [groups[k] for k in groups]
axes[0].barh(names, counts, color=["#4c72b0", "#8172b2", "#dd8452", "#55a868", "#c44e52"])
for i, n in enumerate(counts):
    axes[0].text(n, i, f" {n / 1e3:.0f}k", va="center", fontsize=8)
axes[0].set_xlabel("parameters")
axes[0].set_title(f"default GPT: {model.num_params() / 1e6:.2f}M parameters")
axes[0].invert_yaxis(); axes[0].set_xlim(0, max(counts) * 1.2)

per_layer = [(sum(p.numel() for p in blk.attn.parameters()), sum(p.numel() for p in blk.mlp.parameters()))
             for blk in model.transformer.h]
layers = range(len(per_layer))
axes[1].bar([i - 0.2 for i in layers], [a for a, _ in per_layer], width=0.4, label="attention")
axes[1].bar([i + 0.2 for i in layers], [m for _, m in per_layer], width=0.4, label="MLP")
axes[1].set_xticks(list(layers)); axes[1].set_xlabel("block h.N"); axes[1].set_ylabel("parameters")
axes[1].set_title("per block"); axes[1].legend(loc="lower center")
plt.tight_layout(); plt.show()
