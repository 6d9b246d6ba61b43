"""Properties of generation: cache == no cache == each prompt alone, exact top-k / top-p sets, log-probs
under the sampled distribution, eos handling."""

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt.model import GPT, GPTConfig
from minigpt.sampling import filter_logits, generate, left_pad, sample_next, top_k_filter, top_p_filter

torch.set_num_threads(1)

V, EOS, PAD = 53, 51, 52
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [3, 4], [20, 21, 22, 23, 24], [40]]


def peaked_model(seed=0, block_size=96):
    """A random tiny GPT whose logits are far from flat (std ~1.6) and depend on the whole context.

    GPT-2's init makes a random model nearly uniform, and large tied embeddings alone make it repeat its
    last token forever; strong attention/MLP weights instead give varied greedy sequences whose top-2 logit
    gaps (>= 6e-3 here) dwarf float noise (~1e-6), so "cache == no cache" is a sharp test. The eos and pad
    embeddings are zero: their logit is exactly 0, below the maximum, so greedy never stops early.
    """
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=V, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and name.startswith("transformer.h."):
                p.normal_(0, 2.0 / math.sqrt(p.size(1)))
        model.transformer.wte.weight.normal_(0, 0.3)
        model.transformer.wte.weight[[EOS, PAD]] = 0.0
        model.transformer.wpe.weight.normal_(0, 1.0)
    return model.eval()


def greedy_reference(model, prompt, n):
    """The slow obvious loop: one prompt, no padding, no cache, full recompute every step."""
    seq = list(prompt)
    for _ in range(n):
        seq.append(model(torch.tensor([seq]))[0, -1].argmax().item())
    return seq[len(prompt):]


def full_sequence_logprobs(model, prompt, response, temperature, top_k=None):
    """log p(response_t | prompt, response_<t) recomputed in one forward pass of the whole sequence alone."""
    seq = torch.tensor([prompt + response])
    logits = model(seq)[0, len(prompt) - 1 : -1] / temperature  # (n, V): position t predicts token t+1
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    return F.log_softmax(logits, -1).gather(1, torch.tensor(response)[:, None]).squeeze(1)


def test_left_pad():
    idx, mask = left_pad([[1, 2, 3], [4], []], pad_id=9)
    assert idx.tolist() == [[1, 2, 3], [9, 9, 4], [9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert idx.dtype == mask.dtype == torch.long


# ---------------------------------------------------------------- filtering, on hand-made distributions

def kept(logits):
    return set(torch.nonzero(torch.isfinite(logits[0])).flatten().tolist())


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[0.1, 2.0, -1.0, 3.0, 0.5, 2.5]])
    assert kept(top_k_filter(logits, 1)) == {3}
    assert kept(top_k_filter(logits, 3)) == {1, 3, 5}
    out = top_k_filter(logits, 3)
    assert torch.equal(out[0, [1, 3, 5]], logits[0, [1, 3, 5]])  # survivors untouched
    assert kept(top_k_filter(logits, 6)) == set(range(6))
    assert kept(top_k_filter(logits, 100)) == set(range(6))
    # Ties at the boundary: still exactly k survivors, not "everything >= the k-th value".
    tied = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0]])
    assert len(kept(top_k_filter(tied, 2))) == 2 and 0 in kept(top_k_filter(tied, 2))
    with pytest.raises(ValueError):
        top_k_filter(logits, 0)


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])  # sorted: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)
    logits = probs.log()
    assert kept(top_p_filter(logits, 0.3)) == {1}  # the top token alone already has 0.5 >= 0.3
    assert kept(top_p_filter(logits, 0.6)) == {1, 3}  # 0.5 < 0.6 <= 0.8
    assert kept(top_p_filter(logits, 0.9)) == {1, 2, 3}  # 0.8 < 0.9 <= 0.95
    assert kept(top_p_filter(logits, 0.97)) == {0, 1, 2, 3}
    assert kept(top_p_filter(logits, 1.0)) == {0, 1, 2, 3}
    assert kept(top_p_filter(logits, 1e-6)) == {1}  # always at least the top token
    out = top_p_filter(logits, 0.6)
    assert torch.equal(out[0, [1, 3]], logits[0, [1, 3]])
    # Rows are filtered independently.
    two = torch.stack([probs[0], probs[0].flip(0)]).log()
    out = top_p_filter(two, 0.6)
    assert kept(out[:1]) == {1, 3} and kept(out[1:]) == {0, 2}


def test_filter_logits_applies_top_k_then_top_p():
    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log()
    assert kept(filter_logits(logits)) == {0, 1, 2, 3}
    # top-k=2 leaves {1: 0.625, 3: 0.375}; top-p=0.6 of that renormalised distribution keeps only token 1.
    assert kept(filter_logits(logits, top_k=2, top_p=0.6)) == {1}
    assert kept(filter_logits(logits, top_k=3, top_p=0.6)) == {1, 3}


def test_sample_next_logprob_is_under_filtered_distribution():
    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log().repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    token, logprob = sample_next(logits, temperature=1.0, top_k=2, generator=g)
    assert set(token.tolist()) == {1, 3}
    expected = torch.tensor([0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8]).log()[token]
    assert torch.allclose(logprob, expected, atol=1e-6)
    token, logprob = sample_next(logits, temperature=0)
    assert token.tolist() == [1] * 200 and torch.all(logprob == 0)


# ---------------------------------------------------------------- generation

def test_greedy_with_cache_matches_without_and_each_prompt_alone():
    model = peaked_model()
    n = 64
    cached, lp_cached = generate(model, PROMPTS, n, eos_id=EOS, pad_id=PAD, temperature=0, use_cache=True)
    plain, lp_plain = generate(model, PROMPTS, n, eos_id=EOS, pad_id=PAD, temperature=0, use_cache=False)
    assert cached.shape == (len(PROMPTS), n)
    assert torch.equal(cached, plain)
    assert torch.all(lp_cached == 0) and torch.all(lp_plain == 0)
    for row, prompt in enumerate(PROMPTS):
        assert cached[row].tolist() == greedy_reference(model, prompt, n), row
    assert all(len(set(row)) > 8 for row in cached.tolist())  # varied output, not one token repeated


@pytest.mark.parametrize("use_cache", [True, False])
def test_sampled_logprobs_match_full_sequence_recomputation(use_cache):
    model = peaked_model()
    temperature = 0.7
    g = torch.Generator().manual_seed(0)
    tokens, logprobs = generate(model, PROMPTS, 24, eos_id=EOS, pad_id=PAD, temperature=temperature,
                                generator=g, use_cache=use_cache)
    for row, prompt in enumerate(PROMPTS):
        response = tokens[row][tokens[row] != PAD].tolist()
        expected = full_sequence_logprobs(model, prompt, response, temperature)
        assert torch.allclose(logprobs[row, :len(response)], expected, atol=1e-5), row
        assert torch.all(logprobs[row, len(response):] == 0)
    assert (logprobs < -1e-3).any()  # genuinely stochastic, not greedy in disguise


def test_top_k_sampled_logprobs_match_renormalised_distribution():
    model = peaked_model()
    g = torch.Generator().manual_seed(1)
    tokens, logprobs = generate(model, PROMPTS, 16, eos_id=EOS, pad_id=PAD, temperature=1.5, top_k=5,
                                generator=g)
    for row, prompt in enumerate(PROMPTS):
        response = tokens[row][tokens[row] != PAD].tolist()
        filtered = full_sequence_logprobs(model, prompt, response, 1.5, top_k=5)
        assert torch.all(torch.isfinite(filtered))  # every sampled token was inside the top 5
        assert torch.allclose(logprobs[row, :len(response)], filtered, atol=1e-5), row
        unfiltered = full_sequence_logprobs(model, prompt, response, 1.5)
        assert torch.all(logprobs[row, :len(response)] > unfiltered[: len(response)])  # renormalised


def test_same_generator_seed_same_samples():
    model = peaked_model()
    a = generate(model, PROMPTS, 10, eos_id=EOS, pad_id=PAD, top_p=0.9,
                 generator=torch.Generator().manual_seed(3))
    b = generate(model, PROMPTS, 10, eos_id=EOS, pad_id=PAD, top_p=0.9,
                 generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_eos_stops_row_and_pads_after():
    model = peaked_model()
    first = generate(model, PROMPTS, 8, eos_id=EOS, pad_id=PAD, temperature=0)[0]
    eos = first[1, 2].item()  # make one of row 1's greedy tokens the end-of-sequence token
    tokens, logprobs = generate(model, PROMPTS, 8, eos_id=eos, pad_id=PAD, temperature=0)
    stopped = 0
    for row in range(len(PROMPTS)):
        greedy = first[row].tolist()
        end = greedy.index(eos) + 1 if eos in greedy else len(greedy)  # up to and including the first eos
        stopped += end < len(greedy)
        got = tokens[row].tolist() + [PAD] * (8 - tokens.size(1))
        assert got == greedy[:end] + [PAD] * (8 - end), row
    assert stopped > 0
    # Stop early once every row is done: a single prompt whose first token is eos gives N == 1.
    eos0 = first[0, 0].item()
    tokens, logprobs = generate(model, PROMPTS[:1], 8, eos_id=eos0, pad_id=PAD, temperature=0)
    assert tokens.tolist() == [[eos0]] and logprobs.shape == (1, 1)


def test_stochastic_eos_rows_pad_after():
    # Same with sampling: high temperature on a small vocabulary makes eos come up quickly in some rows.
    model = peaked_model()
    tokens, logprobs = generate(model, PROMPTS * 4, 40, eos_id=7, pad_id=PAD, temperature=3.0,
                                generator=torch.Generator().manual_seed(0))
    stopped = 0
    for r, row in enumerate(tokens.tolist()):
        end = row.index(7) + 1 if 7 in row else len(row)
        stopped += end < len(row)
        assert row[end:] == [PAD] * (len(row) - end)
        assert torch.all(logprobs[r, end:] == 0) and torch.all(logprobs[r, :end] < 0)
    assert stopped > 0


def test_cache_length_limit_and_no_cache_crops():
    model = peaked_model(block_size=16)
    with pytest.raises(ValueError, match="block_size"):
        generate(model, PROMPTS, 8, eos_id=EOS, pad_id=PAD, use_cache=True)  # 9 + 8 > 16
    with pytest.raises(ValueError):
        generate(model, [[1], []], 4, eos_id=EOS, pad_id=PAD)
    # Without the cache the window slides: generation past block_size keeps working, and each step equals
    # greedy on the last block_size tokens alone.
    tokens, _ = generate(model, [PROMPTS[0]], 20, eos_id=EOS, pad_id=PAD, temperature=0, use_cache=False)
    assert tokens.shape == (1, 20)
    seq = list(PROMPTS[0])
    for _ in range(20):
        seq.append(model(torch.tensor([seq[-16:]]))[0, -1].argmax().item())
    assert tokens[0].tolist() == seq[len(PROMPTS[0]):]


def test_generate_restores_training_mode():
    model = peaked_model()
    model.train()
    generate(model, PROMPTS, 2, eos_id=EOS, pad_id=PAD)
    assert model.training
    model.eval()
    generate(model, PROMPTS, 2, eos_id=EOS, pad_id=PAD)
    assert not model.training


def test_temperature_scales_logprobs():
    # The same token sequence has a different log-prob at another temperature: T is really applied.
    model = peaked_model()
    tokens, lp = generate(model, [PROMPTS[0]], 6, eos_id=EOS, pad_id=PAD, temperature=1.0,
                          generator=torch.Generator().manual_seed(0))
    response = tokens[0].tolist()
    assert torch.allclose(lp[0], full_sequence_logprobs(model, PROMPTS[0], response, 1.0), atol=1e-5)
    assert not torch.allclose(lp[0], full_sequence_logprobs(model, PROMPTS[0], response, 2.0), atol=1e-3)


def test_on_token_sees_the_sampled_logits_and_can_end_rows():
    """on_token gets each step's tokens and the raw logits they came from; rows it ends get padding from then
    on, the other rows are sampled exactly as without it, and the loop stops once every row has ended."""
    model = peaked_model()
    kw = dict(eos_id=EOS, pad_id=PAD, temperature=0.7, top_p=0.9)
    free, _ = generate(model, PROMPTS, 12, generator=torch.Generator().manual_seed(5), **kw)
    seen = []

    def stop_row_1_after_3(token, logits):
        seen.append((token.clone(), logits.clone()))
        return torch.tensor([False, len(seen) >= 3, False, False])

    tokens, logprobs = generate(model, PROMPTS, 12, generator=torch.Generator().manual_seed(5),
                                on_token=stop_row_1_after_3, **kw)
    assert torch.equal(tokens[[0, 2, 3]], free[[0, 2, 3], : tokens.size(1)])
    assert tokens[1, :3].tolist() == free[1, :3].tolist() and set(tokens[1, 3:].tolist()) <= {PAD}
    assert torch.all(logprobs[1, 3:] == 0)
    # the logits handed over are the model's own for the sampled position (here: step 0, the prompts)
    idx, mask = left_pad(PROMPTS, PAD)
    assert torch.allclose(seen[0][1], model(idx, attention_mask=mask)[:, -1], atol=1e-5)
    assert torch.equal(seen[0][0], tokens[:, 0])

    ended = generate(model, PROMPTS, 12,
                     on_token=lambda token, logits: torch.ones(len(PROMPTS), dtype=torch.bool),
                     generator=torch.Generator().manual_seed(5), **kw)[0]
    assert ended.shape == (len(PROMPTS), 1)            # every row ended after the first step: the loop stops
