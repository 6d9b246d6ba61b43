"""What a model says about prompt ⊕ response: the one home of each measurement every stage takes.

    sequence_logprobs   log π(y|x) of right-padded rows (DPO's loss, the RM's SFT yardstick, evaluation's KL)
    response_logprobs   log π(y_t|x, y_<t) of a rollout's tokens (PPO and GRPO: the ratio, the reference,
                        the KL)
    sampled_kl          KL(π ‖ π_ref) estimated on responses sampled from π (every stage's KL column)
    reward_scores       r_θ(x, y) of response TEXTS, as the reward model was trained (PPO, GRPO,
                        evaluation, serving)
    heldout_loss        next-token loss on held-out pretraining text (every `pretrain_val_loss`)

Each takes a model and tensors and returns tensors or floats; none knows about stages, folders or configs.
"""

import torch
import torch.nn.functional as F

from minigpt.data import encode_for_reward
from minigpt.losses import token_logprobs
from minigpt.sampling import right_pad

# The score of a response that never emits end-of-text (detail 15 of "The N Implementation Details of RLHF
# with PPO"): train_rm.py scales the demonstrations' rewards to std 1, so finished SFT samples score down to
# about -4.6, none below -5, and not ending never pays. PPO, GRPO, best-of-n and the sweep all use this
# one default.
NO_EOS_PENALTY = -5.0


# ---- log-probabilities -------------------------------------------------------------------------------------

# log π(y | x) = Σ_t log π(y_t | x, y_<t), over the response's tokens (its end-of-text included)
def sequence_logprobs(lm, idx, response, temperature=1.0):
    """idx (B, T): right-padded prompt ⊕ response rows; response (B, T) 1 on the response's tokens
    -> (B,) float32.

    The logits at column t predict the token at column t+1, and only the columns that predict a response token
    go through lm_head (most of the cost: the prompt is about three quarters of a row). The log-softmax is in
    float32 (token_logprobs), so a policy and its reference, computed the same way, agree exactly at
    the start."""
    keep = response[:, 1:].bool()                                           # (B, T-1) the response's tokens
    hidden = lm.trunk(idx[:, :-1])                                          # (B, T-1, C) predicts idx[:, 1:]
    logits = lm.lm_head(hidden[keep])[None]                                 # (1, M, V)
    logp = token_logprobs(logits, idx[:, 1:][keep][None], temperature)[0]   # (M,)
    row = torch.arange(idx.shape[0], device=idx.device)[:, None].expand_as(keep)[keep]   # (M,) each one's row
    return torch.zeros(idx.shape[0], device=idx.device).index_add(0, row, logp)         # (B,) Σ per response


def join_responses(prompts, responses, pad_id):
    """Prompt ids + response ids per row -> right-padded (idx (B, T), response mask (B, T) 1 on the response).
    A pad is never read: right padding needs no attention mask in a causal model, and the mask is 0 there."""
    idx, _ = right_pad([p + r for p, r in zip(prompts, responses)], pad_id)
    response, _ = right_pad([[0] * len(p) + [1] * len(r) for p, r in zip(prompts, responses)], 0)
    return idx, response


def response_logprobs(model, batch, temperature, with_logits=False):
    """log π(y_t | x, y_<t) of every token of a rollout (minigpt.rollout), (B, N). The logits at column
    P+t−1 predict the token at column P+t, so the response's log-probs come from columns P−1 .. P+N−2
    (and only those go through lm_head)."""
    P = batch["P"]
    hidden = model.trunk(batch["query_response"], attention_mask=batch["attention_mask"],
                         position_ids=batch["position_ids"])                  # (B, P+N, C)
    logits = model.lm_head(hidden[:, P - 1: -1])                              # (B, N, V)
    logprobs = token_logprobs(logits, batch["response"], temperature)         # the rollout's T (detail 12)
    return (logprobs, logits) if with_logits else logprobs


# ---- KL to the reference -----------------------------------------------------------------------------------

# KL(π ‖ π_ref) ≈ (1/B) Σ_b Σ_t [log π(y_bt | ·) − log π_ref(y_bt | ·)],   y_b ~ π
def sampled_kl(logprobs, ref_logprobs, mask=None):
    """The estimate from B responses sampled from π: per-token log-probs (B, N) with their mask (B, N), or
    each response's summed log-prob (B,) with mask None -> float. A sampled estimate, not the KL itself: near
    π = π_ref it can come out slightly below 0, though the true KL never is."""
    # (B,): each response's summed log-ratio
    log_ratio = logprobs - ref_logprobs if mask is None else ((logprobs - ref_logprobs) * mask).sum(-1)
    return log_ratio.mean().item()


@torch.no_grad()
def rollout_kl(policy, reference, batch, temperature):
    """sampled_kl of a rollout batch: both models read the sampled tokens at the rollout's temperature."""
    return sampled_kl(response_logprobs(policy, batch, temperature),
                      response_logprobs(reference, batch, temperature), batch["mask"])


# ---- the reward model --------------------------------------------------------------------------------------

def reward_inputs(tokenizer, instructions, texts, block_size):
    """What the reward model reads: each response's TEXT encoded afresh after its prompt, + end-of-text
    (minigpt.data.encode_for_reward, as in train_rm.py), right-padded -> (idx (B, T), mask (B, T)).
    Each instruction is a string, or a conversation [(role, text), ...] ending with the user message the
    response answers (serve.py)."""
    return right_pad([encode_for_reward(tokenizer, x, y, block_size)[0] for x, y in zip(instructions, texts)],
                     tokenizer.pad_id)


@torch.no_grad()
def reward_scores(reward_model, tokenizer, instructions, texts, batch_size=None):
    """r_θ(x, y): the reward model's output at the end-of-text after each response's text, encoded as in its
    training (reward_inputs; not the sampled ids), in batches of batch_size (None: one) -> (B,) on the CPU."""
    device = next(reward_model.parameters()).device
    batch_size = batch_size or max(len(texts), 1)
    out = []
    for i in range(0, len(texts), batch_size):
        idx, mask = reward_inputs(tokenizer, instructions[i: i + batch_size], texts[i: i + batch_size],
                                  reward_model.config.block_size)
        out.append(reward_model.score(idx.to(device), mask.to(device)).cpu())
    return torch.cat(out) if out else torch.zeros(0)


# score(x, y) = r_θ(x, y) if y ended with end-of-text, else the fixed no_eos_penalty (detail 15)
def penalise_unfinished(rm_scores, eos, no_eos_penalty):
    """rm_scores (B,), eos (B,) bool -> (B,): what PPO, GRPO and best-of-n maximise."""
    return torch.where(eos, rm_scores, torch.full_like(rm_scores, no_eos_penalty))


# ---- held-out pretraining loss -----------------------------------------------------------------------------

# pretrain_val_loss = −(1/n) Σ_i log π(x_{i+1} | x_≤i) over the first n = ⌊(max_tokens)/T⌋·T tokens
# of the held-out pretraining text, cut into consecutive windows of block_size T (every token weighted
# alike): the "alignment tax"
@torch.no_grad()
def heldout_loss(model, tokens, max_tokens, batch_size=8):
    """tokens: 1-D long tensor of held-out text -> the mean next-token loss (float), or None if it is shorter
    than one window. Deterministic: the same windows every call, so two calls differ by the model alone."""
    T = model.config.block_size
    ids = tokens[: max_tokens + 1]
    n = (len(ids) - 1) // T
    if n == 0:
        return None
    x, y = ids[: n * T].view(n, T), ids[1: n * T + 1].view(n, T)             # (n, T) each
    device = next(model.parameters()).device
    losses = [F.cross_entropy(model(x[i: i + batch_size].to(device)).float().flatten(0, 1),
                              y[i: i + batch_size].flatten().to(device), reduction="sum").item()
              for i in range(0, n, batch_size)]
    return sum(losses) / (n * T)
