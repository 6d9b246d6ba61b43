"""The GPT-2 transformer, a reward model on top of it, and a key/value cache.

Everything an InstructGPT stage needs from a network lives here and nothing else does: this file knows
nothing about data, tokenizers or training. Parameter names follow GPT-2 (transformer.wte, .h.0.attn.c_attn,
...) so that Hugging Face GPT-2 checkpoints load with a plain rename (see GPT.from_pretrained).

Padding convention: attention_mask is (B, T_total) with 1 = real token, 0 = padding. Training batches are
right-padded and may omit the mask (causality already keeps the real tokens from seeing the padding after
them). Generation batches are left-padded, so every row's last column is its newest token; they must pass
the mask, and positions then count only the real tokens so a padded row computes exactly what the same
prompt alone would.
"""

import json
import contextlib
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    block_size: int = 128  # longest sequence the position table covers
    vocab_size: int = 2048
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2 has them)
    flash: bool = False  # True -> F.scaled_dot_product_attention; False -> the formula spelled out


class KVCache:
    """Keys and values of every position already processed, so generation feeds one new token per step.

    Memory is preallocated per layer as (B, n_head, max_len, head_dim). `pos` is how many positions are
    filled; every layer writes its new k/v at [pos, pos + T) and GPT.trunk advances `pos` once all layers
    have run.
    """

    def __init__(self, config, batch_size, max_len=None, device="cpu", dtype=torch.float32):
        self.max_len = max_len or config.block_size
        head_dim = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, self.max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.pos = 0

    def update(self, layer, k, v):
        """Store the new k, v (B, n_head, T, head_dim) of `layer`; return all keys and values so far."""
        T = k.size(2)
        self.k[layer][:, :, self.pos : self.pos + T] = k
        self.v[layer][:, :, self.pos : self.pos + T] = v
        return self.k[layer][:, :, : self.pos + T], self.v[layer][:, :, : self.pos + T]


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.flash = config.flash
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, allowed=None, kv_cache=None, layer=0):
        """x (B, T, C); allowed (B or 1, 1, T, T_total) bool, True where query t may look at key s.

        allowed=None means plain causal attention over x alone (training: no padding mask, no cache).
        """
        B, T, C = x.shape
        head_dim = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, head_dim).transpose(1, 2)  # (B, n_head, T, head_dim)
        k = k.view(B, T, self.n_head, head_dim).transpose(1, 2)  # (B, n_head, T, head_dim)
        v = v.view(B, T, self.n_head, head_dim).transpose(1, 2)  # (B, n_head, T, head_dim)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, n_head, T_total, head_dim)

        # bf16 on CPU: the Linear layers' matmuls gain most (AMX), but PyTorch's CPU attention kernels, SDPA's
        # backward above all, are slower in bf16 than in fp32 (a pretraining step measured 182 ms with bf16
        # attention, 114 ms with it in fp32, 174 ms all fp32), so there the attention itself runs in fp32.
        fp32_attention = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        if fp32_attention:
            q, k, v = q.float(), k.float(), v.float()
        with torch.autocast("cpu", enabled=False) if fp32_attention else contextlib.nullcontext():
            y = self.attend(q, k, v, allowed, T, head_dim)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q, k, v, allowed, T, head_dim):
        """softmax(Q K^T / sqrt(d_k) + M) V; q (B, n_head, T, hd), k and v (B, n_head, T_total, hd)."""
        if self.flash:
            # Same maths as below in a fused kernel; the boolean mask means the same thing (True = attend).
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=allowed,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=allowed is None,
            )
        else:
            # Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V,
            # with M = 0 where attention is allowed and -inf where it is not (the future, or padding).
            att = (q @ k.transpose(-2, -1)) / math.sqrt(head_dim)  # (B, n_head, T, T_total)
            if allowed is None:
                allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            att = att.masked_fill(~allowed, float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, n_head, T, head_dim)
        return y


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU; the exact erf form differs by ~1e-3
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm block: normalise, transform, add back. The residual stream itself is never normalised,
    which keeps gradients flowing straight through deep stacks."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, allowed=None, kv_cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), allowed, kv_cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: one matrix both reads tokens in and scores them out (fewer parameters, and GPT-2
        # checkpoints store it once).
        self.transformer.wte.weight = self.lm_head.weight

        # GPT-2 initialisation: N(0, 0.02) everywhere, zero biases, and the projections that write into the
        # residual stream scaled by 1/sqrt(2 * n_layer), because 2 * n_layer of them add up along the stream.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=False):
        """Number of parameters (the tied wte/lm_head matrix counted once).

        non_embedding=True leaves out the position table, which is a look-up and does no arithmetic; the
        token matrix stays in because as lm_head it does a full matmul per token.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self):
        """Training FLOPs (forward + backward) per token at full context, for MFU.

        6 * N    : each weight does one multiply-add (2 FLOPs) forward and two backward; N = num_params
                   (non_embedding=True).
        12*L*C*T : the attention scores QK^T and the weighted sum AV, 2 * 2 * C * T FLOPs per layer forward,
                   times 3 for forward + backward, at T = block_size. (PaLM appendix B; nanoGPT estimate_mfu.)
        """
        L, C, T = self.config.n_layer, self.config.n_embd, self.config.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * L * C * T

    def trunk(self, idx, attention_mask=None, position_ids=None, kv_cache=None):
        """Hidden states after the final LayerNorm, (B, T, C). The reward and value heads read these."""
        B, T = idx.shape
        past = kv_cache.pos if kv_cache is not None else 0
        total = past + T
        if total > self.config.block_size:
            raise ValueError(f"sequence of {total} tokens exceeds block_size {self.config.block_size}")
        if kv_cache is not None and total > kv_cache.max_len:
            raise ValueError(f"KV cache holds {kv_cache.max_len} positions, {total} needed")
        if attention_mask is not None and tuple(attention_mask.shape) != (B, total):
            raise ValueError(f"attention_mask must be (B, T_past+T) = {(B, total)}, "
                             f"got {tuple(attention_mask.shape)}")

        if position_ids is None:
            if attention_mask is not None:
                # Count real tokens only, so a left-padded row sees the positions its prompt would have alone.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # (B, T)
            else:
                position_ids = torch.arange(past, total, device=idx.device).unsqueeze(0)  # (1, T)

        allowed = None  # plain causal: lets SDPA use its fast is_causal path
        if attention_mask is not None or past > 0:
            q_pos = torch.arange(past, total, device=idx.device)  # absolute index of each query
            k_pos = torch.arange(total, device=idx.device)
            allowed = (k_pos[None, :] <= q_pos[:, None])[None, None]  # (1, 1, T, total)
            if attention_mask is not None:
                allowed = allowed & attention_mask.bool()[:, None, None, :]  # (B, 1, T, total)
                # A token may always see itself. Real tokens already do; for padding queries this keeps the
                # softmax row from being all -inf (NaN) - their outputs are never used anyway.
                allowed = allowed | (k_pos[None, :] == q_pos[:, None])[None, None]

        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(position_ids)  # (B or 1, T, C)
        x = self.transformer.drop(tok_emb + pos_emb)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, allowed, kv_cache, layer)
        if kv_cache is not None:
            kv_cache.pos = total
        return self.transformer.ln_f(x)

    def forward(self, idx, attention_mask=None, position_ids=None, kv_cache=None, return_hidden=False):
        """idx (B, T) -> logits (B, T, vocab_size), or (logits, hidden (B, T, C)) if return_hidden.

        attention_mask (B, T_past + T): 1 = real, 0 = padding; T_past = kv_cache.pos (0 without a cache).
        kv_cache: the new keys/values are appended and attention covers every cached position as well.
        """
        hidden = self.trunk(idx, attention_mask, position_ids, kv_cache)
        logits = self.lm_head(hidden)
        return (logits, hidden) if return_hidden else logits

    @classmethod
    def from_pretrained(cls, folder):
        """Load a Hugging Face GPT-2 checkpoint folder: config.json + model.safetensors or pytorch_model.bin.

        Raises ValueError (naming the key and the folder) on a missing, unexpected or misshapen tensor.
        """
        folder = Path(folder)
        try:
            hf = json.loads((folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{folder}: cannot read config.json ({e})") from None
        for key in ("vocab_size", "n_layer", "n_head", "n_embd"):
            if not isinstance(hf, dict) or key not in hf:
                raise ValueError(f"{folder / 'config.json'}: field '{key}' missing (a GPT-2 config.json has "
                                 "it)")
        config = GPTConfig(
            block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
            vocab_size=hf["vocab_size"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            dropout=0.0,
            bias=True,
        )
        if (folder / "model.safetensors").exists():
            loaded = read_safetensors(folder / "model.safetensors")
        elif (folder / "pytorch_model.bin").exists():
            loaded = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise ValueError(f"{folder}: no model.safetensors or pytorch_model.bin")

        model = cls(config)
        ours = model.state_dict()
        # HF's GPT-2 uses a Conv1D module whose weight is stored (in, out), the transpose of nn.Linear's.
        conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        found = set()
        with torch.no_grad():
            for key, tensor in loaded.items():
                name = key.removeprefix("transformer.")
                if name.endswith((".attn.bias", ".attn.masked_bias")):
                    continue  # causal-mask buffers, not weights
                if name == "lm_head.weight":
                    continue  # tied to wte
                target = "transformer." + name
                if target not in ours:
                    raise ValueError(f"{folder}: unexpected key {key!r} in checkpoint")
                if name.endswith(conv1d):
                    tensor = tensor.t()
                if tuple(tensor.shape) != tuple(ours[target].shape):
                    raise ValueError(f"{folder}: key {key!r} has shape {tuple(tensor.shape)}, "
                                     f"expected {tuple(ours[target].shape)}")
                ours[target].copy_(tensor.to(ours[target].dtype))
                found.add(target)
        missing = [k for k in ours if k not in found and k != "lm_head.weight"]
        if missing:
            raise ValueError(f"{folder}: missing key {missing[0]!r} in checkpoint ({len(missing)} missing)")
        return model


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors(path):
    """Read a .safetensors file into {name: float32 tensor} without the safetensors package.

    Layout: 8-byte little-endian header length n, n bytes of JSON {name: {dtype, shape, data_offsets}},
    then the raw little-endian tensor bytes; data_offsets are [start, end) relative to the end of the header.
    """
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = memoryview(raw)[8 + n :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        if end == start:
            flat = torch.empty(0, dtype=dtype)
        else:
            flat = torch.frombuffer(bytearray(data[start:end]), dtype=dtype)  # bytearray: writable copy
        tensors[name] = flat.reshape(info["shape"]).float()
    return tensors


class RewardModel(nn.Module):
    """A GPT trunk with a scalar head: r(x, y) in InstructGPT, and the PPO value function V(s_t).

    The trunk's lm_head is kept (it shares wte's matrix, so costs nothing) but never computed.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.gpt = GPT(config)
        self.head = nn.Linear(config.n_embd, 1)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_gpt(cls, gpt):
        """A reward model that starts from `gpt`'s weights (copied, not shared) and outputs exactly 0."""
        rm = cls(gpt.config)
        rm.gpt.load_state_dict(gpt.state_dict())  # copies the tensors; the two models stay independent
        # Zero head: every initial reward is 0, so early training compares responses from a neutral start
        # instead of from random offsets.
        nn.init.zeros_(rm.head.weight)
        nn.init.zeros_(rm.head.bias)
        return rm.to(next(gpt.parameters()).device)

    def forward(self, idx, attention_mask=None, position_ids=None):
        """idx (B, T) -> one scalar per position (B, T)."""
        hidden = self.gpt.trunk(idx, attention_mask, position_ids)  # (B, T, C)
        # the scalar reward in fp32: losses and GAE read it
        with torch.autocast(idx.device.type, enabled=False):
            return self.head(hidden.float()).squeeze(-1)  # (B, T)

    def score(self, idx, attention_mask):
        """The value at each row's last real token, (B,). Works for left- and right-padded rows.

        mask * [0, 1, ..., T-1] is largest at the last real column whichever side the padding is on.
        """
        values = self(idx, attention_mask)  # (B, T)
        T = idx.size(1)
        last = (attention_mask.long() * torch.arange(T, device=idx.device)).argmax(dim=1)  # (B,)
        return values.gather(1, last.unsqueeze(1)).squeeze(1)
