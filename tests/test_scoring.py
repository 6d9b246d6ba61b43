"""minigpt/scoring.py: each measurement against a slow reference written out one sequence at a time, or
against values computed by hand."""

import math

import pytest
import torch

from minigpt.data import encode_for_reward
from minigpt.model import GPT, GPTConfig, RewardModel
from minigpt.scoring import (heldout_loss, join_responses, penalise_unfinished, reward_scores, sampled_kl,
                             sequence_logprobs)
from minigpt.tokenizer import Tokenizer

TEXT = ("Add 3 and 4: the answer is 7. Reverse the word cat: tac. Name a colour: red. "
        "翻译成法语：红色 rouge. ") * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXT, 300)


def tiny_gpt(tok, seed=0):
    torch.manual_seed(seed)
    config = GPTConfig(block_size=64, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32)
    return GPT(config).double().eval()


def test_join_responses_marks_the_response():
    idx, response = join_responses([[1, 2], [3]], [[5, 8], [6]], pad_id=0)
    assert idx.tolist() == [[1, 2, 5, 8], [3, 6, 0, 0]]
    assert response.tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]


def test_sequence_logprobs_equal_a_loop_over_unpadded_sequences(tok):
    """log π(y|x) = Σ_t log π(y_t | x, y_<t): each row alone, no padding, its response tokens
    summed one by one."""
    lm = tiny_gpt(tok)
    rows = [([3, 7, 9, 4], [11, 12, 1]), ([5], [20, 2]), ([8, 8], [30])]
    idx, response = join_responses([p for p, _ in rows], [r for _, r in rows], tok.pad_id)
    with torch.no_grad():
        got = sequence_logprobs(lm, idx, response, temperature=0.7)
    for b, (p, r) in enumerate(rows):
        ids = p + r
        with torch.no_grad():
            logp = torch.log_softmax(lm(torch.tensor([ids]))[0] / 0.7, -1)              # (T, V), no padding
        expected = sum(logp[t - 1, ids[t]].item() for t in range(len(p), len(ids)))
        assert got[b].item() == pytest.approx(expected, abs=1e-5)   # the log-softmax is taken in float32


def test_sampled_kl_by_hand():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # row 0: (0.5) + (-1.0) = -0.5 (the pad's -9 left out); row 1: 3 x 0.5 = 1.5; mean 0.5
    assert sampled_kl(lp, ref, mask) == 0.5
    # per-response sums give the same estimate: (Σ lp − Σ ref) averaged
    assert sampled_kl(torch.tensor([-3.0, -1.5]), torch.tensor([-2.5, -3.0])) == 0.5


def test_penalise_unfinished():
    got = penalise_unfinished(torch.tensor([1.5, -0.25, 3.0]), torch.tensor([True, False, True]), -5.0)
    assert got.tolist() == [1.5, -5.0, 3.0]


def test_reward_scores_in_batches_equal_one_text_at_a_time(tok):
    torch.manual_seed(1)
    rm = RewardModel(GPTConfig(block_size=64, vocab_size=tok.vocab_size, n_layer=2, n_head=2,
                               n_embd=32)).eval()
    with torch.no_grad():
        rm.head.weight.normal_(0, 0.5)
    instructions = ["Add 3 and 4.", "Name a colour.", "翻译成法语：红色"]
    texts = ["7", "red, I think", "rouge"]
    got = reward_scores(rm, tok, instructions, texts, batch_size=2)
    for b, (x, y) in enumerate(zip(instructions, texts)):
        ids = encode_for_reward(tok, x, y, 64)[0]
        with torch.no_grad():
            alone = rm(torch.tensor([ids]))[0, -1].item()                  # the end-of-text after the text
        assert got[b].item() == pytest.approx(alone, abs=1e-5)
    # one batch or two: the same scores
    assert torch.equal(got, reward_scores(rm, tok, instructions, texts))


def test_heldout_loss_is_log_v_for_a_uniform_model_and_the_token_mean_otherwise(tok):
    lm = tiny_gpt(tok)
    tokens = torch.tensor(tok.encode(TEXT), dtype=torch.long)
    T = lm.config.block_size
    uniform = tiny_gpt(tok)
    with torch.no_grad():
        for p in uniform.parameters():
            p.zero_()                                               # every logit 0: loss log V per token
    # log V, to float32 precision
    assert heldout_loss(uniform, tokens, 3 * T) == pytest.approx(math.log(tok.vocab_size), abs=1e-5)
    # the mean over the first 3 consecutive windows' tokens, each token weighted alike (batches of 2 windows)
    total = 0.0
    with torch.no_grad():
        for w in range(3):
            x, y = tokens[w * T: (w + 1) * T], tokens[w * T + 1: (w + 1) * T + 1]
            logp = torch.log_softmax(lm(x[None])[0], -1)
            total -= sum(logp[t, y[t]].item() for t in range(T))
    assert heldout_loss(lm, tokens, 3 * T + 5, batch_size=2) == pytest.approx(total / (3 * T), abs=1e-5)
    assert heldout_loss(lm, tokens[:T], T) is None                  # shorter than one window + its target
