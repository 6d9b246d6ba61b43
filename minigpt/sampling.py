"""Sampling responses from a GPT: the rollout step of PPO and the generator for evaluation and chat.

Prompts of different lengths are left-padded so that every row's newest token sits in the last column;
the attention mask keeps the padding invisible, and GPT computes positions from the mask so a padded row
produces exactly what the prompt alone would.
"""

import torch
import torch.nn.functional as F

from minigpt.model import KVCache


def left_pad(seqs, pad_id):
    """list of token lists -> (idx (B, T) long, mask (B, T) long), padding on the left, mask 1 = real."""
    T = max((len(s) for s in seqs), default=0)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            idx[row, T - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[row, T - len(s) :] = 1
    return idx, mask


def right_pad(seqs, pad_id):
    """list of token lists -> (idx (B, T) long, mask (B, T) long), padding on the right, mask 1 = real."""
    T = max((len(s) for s in seqs), default=0)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for row, s in enumerate(seqs):
        idx[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return idx, mask


def top_k_filter(logits, k):
    """Keep exactly the k largest logits of each row (ties broken by torch.topk); the rest become -inf."""
    if k <= 0:
        raise ValueError(f"top_k must be >= 1, got {k}")
    if k >= logits.size(-1):
        return logits
    values, indices = torch.topk(logits, k, dim=-1)  # (B, k)
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, values)


def top_p_filter(logits, p):
    """Nucleus filtering: keep the smallest set of most-probable tokens whose total probability is >= p.

    A token is kept when the probability mass strictly before it (in descending order) is < p; the top
    token has 0 mass before it, so it is always kept.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p >= 1.0:
        return logits  # everything; avoids dropping tail tokens to float rounding of the cumulative sum
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = F.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(-1) - probs  # (B, V)
    remove_sorted = mass_before >= p
    remove_sorted[..., 0] = False
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def filter_logits(logits, top_k=None, top_p=None):
    """Apply top-k then top-p (the usual order) to already temperature-scaled logits (B, V)."""
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """logits (B, V) -> (token (B,), logprob (B,)) under the exact distribution the token was drawn from.

    p(token) = softmax(filter(logits / temperature)); temperature 0 is greedy (a point mass, log-prob 0).
    """
    if temperature == 0:
        return logits.argmax(-1), torch.zeros(logits.size(0), device=logits.device)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    logprobs = F.log_softmax(logits, dim=-1)  # (B, V)
    token = torch.multinomial(logprobs.exp(), 1, generator=generator)  # (B, 1)
    return token.squeeze(1), logprobs.gather(1, token).squeeze(1)


@torch.no_grad()
def generate(model, prompts, max_new_tokens, *, eos_id, pad_id, temperature=1.0, top_k=None, top_p=None,
             generator=None, use_cache=True, on_token=None):
    """Sample continuations of a batch of prompts.

    Returns (tokens (B, N) long, logprobs (B, N) float), N <= max_new_tokens: each row holds its sampled
    tokens up to and including its first eos, then pad_id (log-prob 0.0). The loop stops as soon as every
    row has finished. use_cache=True runs the whole prompt batch once, then one position per step through a
    KVCache; use_cache=False recomputes the full sequence every step (cropped to the last block_size tokens).
    on_token, if given, is called each step as on_token(token (B,), logits (B, V)) with the new tokens and the
    model's raw logits they were sampled from (for streaming); it may return a bool (B,) tensor of rows to end
    now (a server's client that went away, or a row at its own length limit), which then count as finished.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    block_size = model.config.block_size
    idx, mask = left_pad(prompts, pad_id)
    idx, mask = idx.to(device), mask.to(device)
    B, T0 = idx.shape
    if use_cache and T0 + max_new_tokens > block_size:
        raise ValueError(f"prompt of {T0} tokens + {max_new_tokens} new tokens exceeds block_size "
                         f"{block_size}")

    was_training = model.training
    model.eval()  # no dropout while sampling
    try:
        tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((B, max_new_tokens), device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        # Under bf16 autocast on CUDA the cache holds bf16 keys/values as c_attn makes them (half the memory
        # traffic); on CPU the attention runs in fp32 (see CausalSelfAttention), so there it stays fp32.
        bf16_cache = device.type == "cuda" and torch.is_autocast_enabled("cuda")
        cache_dtype = torch.bfloat16 if bf16_cache else next(model.parameters()).dtype
        cache = KVCache(model.config, B, T0 + max_new_tokens, device, cache_dtype) if use_cache else None
        n = 0
        for t in range(max_new_tokens):
            if cache is None:
                logits = model(idx[:, -block_size:], attention_mask=mask[:, -block_size:])
            elif t == 0:
                logits = model(idx, attention_mask=mask, kv_cache=cache)  # prefill the whole prompt
            else:
                logits = model(idx[:, -1:], attention_mask=mask, kv_cache=cache)
            token, logprob = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
            token = token.masked_fill(finished, pad_id)
            logprob = logprob.masked_fill(finished, 0.0)
            tokens[:, t], logprobs[:, t] = token, logprob
            stop = on_token(token, logits[:, -1]) if on_token is not None else None
            n = t + 1
            # Finished rows keep getting padding, which the mask hides from later steps.
            idx = torch.cat([idx, token[:, None]], dim=1)
            mask = torch.cat([mask, (~finished).long()[:, None]], dim=1)
            finished |= token == eos_id
            if stop is not None:
                finished |= stop.to(device)
            if finished.all():
                break
        return tokens[:, :n], logprobs[:, :n]
    finally:
        model.train(was_training)
