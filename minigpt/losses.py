"""Losses for the supervised stages: SFT cross-entropy, the reward model's ranking loss and DPO's loss.

Also token_logprobs, the one function that turns logits into per-token log-probabilities; PPO uses
it for the policy and the reference, so both see exactly the same temperature and float32 math.
"""

import torch
import torch.nn.functional as F


# log p(token_t) = log_softmax(logits_t / T)[token_t] = logits_t[token_t]/T - logsumexp(logits_t/T)
def token_logprobs(logits, tokens, temperature=1.0):
    """Log-probability of each token under softmax(logits / temperature), computed in float32.

    logits (B, T, V), tokens (B, T) long -> (B, T) float32. Pass the same temperature that the
    rollout sampled with, for the policy AND the reference, or the PPO ratio is not 1 at the start.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to define log-probs, got {temperature}")
    logits = logits.float() / temperature                                   # (B, T, V)
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)            # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)                        # (B, T)


# log π(y | x) = Σ_t log π(y_t | x, y_<t): a whole response's log-probability, summed over its tokens only
def sequence_logprob(logits, tokens, mask, temperature=1.0):
    """logits (B, T, V) that predict tokens (B, T); mask (B, T) 1 on the response's tokens -> (B,) float32."""
    return (token_logprobs(logits, tokens, temperature) * mask).sum(-1)


# L_SFT = sum_t CE(logits_t, target_t) * mask_t / sum_t mask_t
def sft_loss(logits, targets, loss_mask, n_tokens=None):
    """Mean next-token cross-entropy over the positions where loss_mask is 1 (the response).

    logits (B, T, V), targets (B, T) long, loss_mask (B, T) 0/1 -> scalar. Masked positions
    contribute nothing, whatever their targets (pad ids) or logits hold. n_tokens, if given, replaces
    sum_t mask_t as the divisor (data parallel training passes a count taken over all processes).
    """
    keep = loss_mask.bool()                                                 # (B, T)
    targets = torch.where(keep, targets, torch.zeros_like(targets))         # any valid id at pads
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    ce = torch.where(keep.flatten(), ce, torch.zeros_like(ce))              # (B*T,)
    return ce.sum() / (keep.sum().clamp(min=1) if n_tokens is None else n_tokens)


# L_RM(x) = -1/C(K,2) * sum_{i<j} log sigmoid(r_i - r_j),   responses ranked best (i=0) -> worst
def rm_ranking_loss(rewards):
    """InstructGPT's K-wise ranking loss for ONE prompt: the mean pairwise loss over its C(K,2) pairs.

    rewards (K,) are the reward model's scores of K responses ordered best -> worst (K >= 2).
    """
    if rewards.dim() != 1 or rewards.numel() < 2:
        raise ValueError(f"rm_ranking_loss needs K >= 2 rewards in a 1-D tensor, got {tuple(rewards.shape)}")
    i, j = torch.triu_indices(len(rewards), len(rewards), offset=1, device=rewards.device)  # (C,) pairs i<j
    return -F.logsigmoid(rewards[i] - rewards[j]).mean()


def rm_batch_loss(rewards, k=None):
    """Ranking loss over a batch of prompts -> (loss, pair_accuracy).

    Each prompt's C(K,2) pairs are one batch element (InstructGPT): the loss is the mean over
    prompts of rm_ranking_loss, which already averages over that prompt's pairs (so no second
    division by C(K,2)). rewards: a list of 1-D tensors (K may differ per prompt), or a (B, K)
    tensor whose row b uses its first k[b] entries (all K if k is None).
    pair_accuracy (python float) = fraction of all pairs, pooled over prompts, with r_i > r_j.
    """
    if torch.is_tensor(rewards) and rewards.dim() == 2:
        k = [rewards.shape[1]] * rewards.shape[0] if k is None else k
        rewards = [row[:kb] for row, kb in zip(rewards, k)]
    if len(rewards) == 0:
        raise ValueError("rm_batch_loss needs at least one prompt")
    loss = torch.stack([rm_ranking_loss(r) for r in rewards]).mean()
    correct, total = 0, 0
    with torch.no_grad():
        for r in rewards:
            i, j = torch.triu_indices(len(r), len(r), offset=1, device=r.device)
            correct += int((r[i] > r[j]).sum())
            total += len(i)
    return loss, correct / total


# L_DPO = −log σ( β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))] )
#       = −log σ(r̂_w − r̂_l),   r̂(x, y) = β·log(π(y|x) / π_ref(y|x)), the implicit reward
def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """DPO (Rafailov et al. 2023) for P preference pairs -> (loss (P,), chosen_reward (P,), rejected_reward
    (P,)).

    Each argument is a (P,) tensor of whole-response log-probabilities log π(y|x) (sequence_logprob): the
    policy's carry gradients, the frozen reference's do not. It is the reward model's pairwise loss with
    r̂ = β·log(π/π_ref) in place of r_θ: the policy IS the reward model. At π = π_ref every r̂ is 0
    and the loss is log 2; β → 0 gives the same. The loss per pair is returned, so a caller can average
    each prompt's C(K,2) pairs first, as InstructGPT does for the reward model."""
    chosen_reward = beta * (chosen_logps - ref_chosen_logps)                # (P,) r̂(x, y_w)
    rejected_reward = beta * (rejected_logps - ref_rejected_logps)          # (P,) r̂(x, y_l)
    return -F.logsigmoid(chosen_reward - rejected_reward), chosen_reward, rejected_reward
