"""losses.py against slow, obviously-correct references (python loops, math module)."""

import itertools
import math

import pytest
import torch

from minigpt.losses import (dpo_loss, rm_batch_loss, rm_ranking_loss, sequence_logprob, sft_loss,
                            token_logprobs)


def test_token_logprobs_matches_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, 7, (2, 3), generator=g)
    for temperature in (1.0, 0.7, 2.0):
        out = token_logprobs(logits, tokens, temperature)
        assert out.shape == (2, 3) and out.dtype == torch.float32
        for b, t in itertools.product(range(2), range(3)):
            z = [v / temperature for v in logits[b, t].tolist()]
            expected = z[tokens[b, t]] - math.log(sum(math.exp(v) for v in z))
            assert out[b, t].item() == pytest.approx(expected, abs=1e-5)


def test_token_logprobs_low_precision_logits_computed_in_float32():
    logits = torch.randn(1, 4, 50).to(torch.bfloat16)
    tokens = torch.randint(0, 50, (1, 4))
    out = token_logprobs(logits, tokens)
    ref = torch.log_softmax(logits.float(), -1).gather(-1, tokens[..., None])[..., 0]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


def test_token_logprobs_rejects_zero_temperature():
    with pytest.raises(ValueError):
        token_logprobs(torch.zeros(1, 1, 3), torch.zeros(1, 1, dtype=torch.long), 0.0)


def test_sft_loss_is_mean_ce_over_masked_positions_only():
    g = torch.Generator().manual_seed(1)
    V, pad = 11, 10
    logits = torch.randn(2, 4, V, generator=g, requires_grad=True)
    targets = torch.tensor([[3, 4, pad, pad], [1, 2, 5, pad]])
    mask = torch.tensor([[0, 1, 0, 0], [1, 1, 1, 0]])      # prompt token, response, padding
    loss = sft_loss(logits, targets, mask)
    # reference: CE = logsumexp(z) - z[target], averaged over the 4 positions where mask == 1
    ces = []
    for b, t in [(0, 1), (1, 0), (1, 1), (1, 2)]:
        z = logits[b, t].tolist()
        ces.append(math.log(sum(math.exp(v) for v in z)) - z[targets[b, t]])
    assert loss.item() == pytest.approx(sum(ces) / 4, abs=1e-6)

    # garbage at masked positions (logits, out-of-range targets) changes nothing, and gets no gradient
    loss.backward()
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[1, 3].abs().sum() == 0
    logits2 = logits.detach().clone()
    logits2[0, 0] = 1e6
    logits2[1, 3] = -1e6
    targets2 = targets.clone()
    targets2[0, 0], targets2[1, 3] = -100, 999
    assert sft_loss(logits2, targets2, mask).item() == pytest.approx(loss.item(), abs=1e-6)


def test_rm_ranking_loss_hand_computed_k2():
    # K=2, r = [1, 0]: -log sigmoid(1) = log(1 + e^-1) = 0.3132617
    assert rm_ranking_loss(torch.tensor([1.0, 0.0])).item() == pytest.approx(0.3132617, abs=1e-6)


@pytest.mark.parametrize("K", [2, 3, 4, 5, 6])
def test_rm_ranking_loss_is_mean_of_pairwise_losses(K):
    rewards = [0.9, -0.3, 1.7, 0.2, -1.1, 0.5][:K]     # deliberately not sorted: some pairs are wrong
    pair_losses = []
    for i in range(K):
        for j in range(i + 1, K):
            pair_losses.append(-math.log(1.0 / (1.0 + math.exp(-(rewards[i] - rewards[j])))))
    assert len(pair_losses) == math.comb(K, 2)
    got = rm_ranking_loss(torch.tensor(rewards, dtype=torch.float64)).item()
    assert got == pytest.approx(sum(pair_losses) / len(pair_losses), abs=1e-9)


def test_rm_ranking_loss_gradient_pushes_best_up_and_worst_down():
    r = torch.zeros(4, requires_grad=True)
    rm_ranking_loss(r).backward()
    assert r.grad[0] < 0 and r.grad[-1] > 0                # gradient descent raises r_0, lowers r_3


def test_rm_ranking_loss_rejects_single_response():
    with pytest.raises(ValueError):
        rm_ranking_loss(torch.tensor([1.0]))


def test_rm_batch_loss_mixed_k():
    prompts = [[2.0, 1.0], [0.5, 1.5, -1.0], [3.0, 2.0, 1.0, 0.0, -0.5]]
    loss, acc = rm_batch_loss([torch.tensor(p) for p in prompts])
    per_prompt, correct, total = [], 0, 0
    for r in prompts:
        pairs = [(r[i], r[j]) for i in range(len(r)) for j in range(i + 1, len(r))]
        per_prompt.append(sum(math.log1p(math.exp(-(a - b))) for a, b in pairs) / len(pairs))
        correct += sum(a > b for a, b in pairs)
        total += len(pairs)
    assert loss.item() == pytest.approx(sum(per_prompt) / 3, abs=1e-6)
    # pairs: prompt 1: 1/1 right; prompt 2: (0.5,1.5) wrong, (0.5,-1) right, (1.5,-1) right; prompt 3: 10/10
    assert (correct, total) == (13, 14)
    assert acc == pytest.approx(13 / 14)


def test_rm_batch_loss_does_not_divide_by_pairs_twice():
    # all rewards equal: every pair loses log 2, so the loss is log 2 whatever K is (not log2 / C(K,2))
    loss, acc = rm_batch_loss([torch.zeros(4), torch.zeros(6)])
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert acc == 0.0                                       # ties are not correct


def test_rm_batch_loss_padded_tensor_with_k_per_row():
    rows = [[1.0, 0.0, 99.0, -99.0], [0.0, 1.0, 2.0, 3.0]]   # row 0 uses K=2; the rest is padding
    loss, acc = rm_batch_loss(torch.tensor(rows), k=[2, 4])
    ref_loss, ref_acc = rm_batch_loss([torch.tensor(rows[0][:2]), torch.tensor(rows[1])])
    assert loss.item() == pytest.approx(ref_loss.item()) and acc == ref_acc == pytest.approx(1 / 7)


def test_sequence_logprob_sums_only_the_masked_tokens():
    # logits 0 everywhere: every token has log-prob -log V, at any temperature; rows keep 2 and 3 of 4 tokens
    logits = torch.zeros(2, 4, 5)
    tokens = torch.tensor([[1, 2, 3, 4], [0, 0, 1, 1]])
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 0]])
    got = sequence_logprob(logits, tokens, mask, temperature=0.7)
    assert torch.allclose(got, torch.tensor([-2 * math.log(5), -3 * math.log(5)]))
    # a token the model prefers: log softmax([2, 0, 0, 0, 0])[0] = 2 - log(e^2 + 4)
    logits[0, 1, 2] = 2.0
    assert sequence_logprob(logits, tokens, mask)[0].item() == \
        pytest.approx(2 - math.log(math.e ** 2 + 4) - math.log(5))


def test_dpo_loss_against_a_hand_computation():
    # policy log-probs of y_w, y_l: -3, -6; reference: -4, -5; beta 0.5
    # r_w = 0.5 * (-3 - -4) = 0.5, r_l = 0.5 * (-6 - -5) = -0.5, loss = -log sigmoid(1) = log(1 + e^-1)
    loss, r_w, r_l = dpo_loss(torch.tensor([-3.0]), torch.tensor([-6.0]), torch.tensor([-4.0]),
                              torch.tensor([-5.0]), 0.5)
    assert r_w.item() == pytest.approx(0.5) and r_l.item() == pytest.approx(-0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-7)
    # its gradient w.r.t. log pi(y_w) is -beta * sigmoid(-(r_w - r_l)) = -0.5 / (1 + e)
    chosen = torch.tensor([-3.0], requires_grad=True)
    loss = dpo_loss(chosen, torch.tensor([-6.0]), torch.tensor([-4.0]), torch.tensor([-5.0]), 0.5)[0]
    loss.sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.5 / (1 + math.e), abs=1e-7)


def test_dpo_at_the_reference_and_at_beta_zero_is_log_2():
    g = torch.Generator().manual_seed(0)
    policy_w, policy_l, ref_w, ref_l = (-10 * torch.rand(5, generator=g) for _ in range(4))
    loss, r_w, r_l = dpo_loss(policy_w, policy_l, policy_w.clone(), policy_l.clone(), 0.1)   # pi == pi_ref
    torch.testing.assert_close(loss, torch.full((5,), math.log(2)))
    assert torch.equal(r_w, torch.zeros(5)) and torch.equal(r_l, torch.zeros(5))
    loss, _, _ = dpo_loss(policy_w, policy_l, ref_w, ref_l, 0.0)                             # beta -> 0
    torch.testing.assert_close(loss, torch.full((5,), math.log(2)))
