"""One PPO rollout and what the four models say about it (InstructGPT's RL step, as train_ppo.py runs it).

rollout() samples a response per prompt with the KV cache and lays prompt ⊕ response out as ONE batch, so the
policy, the reference, the value model and the reward model each read it in a single forward pass. The column
bookkeeping (which logits predict which response token, where a value or a reward is read) lives here, once.
"Detail N" refers to "The N Implementation Details of RLHF with PPO" (Huang et al.).
"""

import torch

from minigpt.data import encode_for_reward
from minigpt.losses import token_logprobs
from minigpt.respond import respond
from minigpt.sampling import left_pad, right_pad


@torch.no_grad()
def rollout(policy, tokenizer, tasks, max_new_tokens, temperature, generator):
    """Sample one response per task with the KV cache and lay prompt ⊕ response out as one batch.

    Returns a dict; P = prompt width, N = response width:
      query_response (B, P+N)  left-padded prompt, then the right-padded response
      attention_mask (B, P+N)  1 on real tokens;  position_ids (B, P+N) = cumsum(mask) − 1 (detail 16)
      response (B, N), mask (B, N)  the sampled tokens up to and including end-of-text, 1 there (pad ≠ eos: detail 15)
      sample_logprobs (B, N)   log-probs generate() sampled with;  eos (B,) bool;  texts, tasks (lists)
    """
    out = respond(policy, tokenizer, [t.instruction for t in tasks], max_new_tokens, temperature,
                  generator=generator, batch_size=len(tasks))
    # The mask is 1 up to and including the first end-of-text (all columns if none), NOT tokens != pad: a policy
    # can sample the pad token mid-response, and generate() then treats it as a real token, so must we. (The
    # decoded text, which the judge and the reward model read, leaves it out: the pad is never a training target,
    # so a trained policy almost never samples it; the token stays in the sampling distribution so that every
    # log-prob here is the plain softmax over the vocabulary that the losses use.)
    is_eos = out.tokens == tokenizer.eos_id                                   # (B, max_new_tokens)
    last = torch.where(is_eos.any(1), is_eos.long().argmax(1), max_new_tokens - 1)                     # (B,)
    mask = (torch.arange(max_new_tokens, device=last.device)[None] <= last[:, None]).long()  # (B, max_new_tokens)
    N = max(int(mask.sum(1).max()), 1)                                        # drop columns that are pad in every row
    response, mask, sample_logprobs = out.tokens[:, :N], mask[:, :N], out.logprobs[:, :N]
    query, query_mask = (t.to(response.device) for t in left_pad(out.prompts, tokenizer.pad_id))  # (B, P)
    attention_mask = torch.cat([query_mask, mask], dim=1)                     # (B, P+N)
    return dict(query_response=torch.cat([query, response], dim=1), attention_mask=attention_mask,
                position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0), P=query.shape[1],
                response=response, mask=mask, sample_logprobs=sample_logprobs,
                eos=torch.tensor(out.eos, dtype=torch.bool, device=response.device), texts=out.texts, tasks=list(tasks))


def response_logprobs(model, batch, temperature, with_logits=False):
    """log π(y_t | x, y_<t) of every response token, (B, N). The logits at column P+t−1 predict the token at
    column P+t, so the response's log-probs come from columns P−1 .. P+N−2 (and only those go through lm_head)."""
    P = batch["P"]
    hidden = model.trunk(batch["query_response"], attention_mask=batch["attention_mask"],
                         position_ids=batch["position_ids"])                  # (B, P+N, C)
    logits = model.lm_head(hidden[:, P - 1: -1])                              # (B, N, V)
    logprobs = token_logprobs(logits, batch["response"], temperature)         # same T as the rollout (detail 12)
    return (logprobs, logits) if with_logits else logprobs


def response_values(value_model, batch):
    """V(s_t) for every response token t, (B, N). s_t, the state in which y_t is chosen, is the prefix up to the
    token BEFORE y_t, so the value for y_t is read at column P+t−1: the last prompt token for the first one."""
    P = batch["P"]
    values = value_model(batch["query_response"], attention_mask=batch["attention_mask"],
                         position_ids=batch["position_ids"])                  # (B, P+N)
    return values[:, P - 1: -1]                                               # (B, N)


def reward_inputs(tokenizer, instructions, texts, block_size):
    """What the reward model reads: each response's TEXT encoded afresh after its prompt, + end-of-text
    (minigpt.data.encode_for_reward, as in train_rm.py), right-padded -> (idx (B, T), mask (B, T))."""
    return right_pad([encode_for_reward(tokenizer, x, y, block_size)[0] for x, y in zip(instructions, texts)],
                     tokenizer.pad_id)


# The score given instead of the reward model's to a response that never emitted end-of-text (detail 15): the
# reward model only ever learnt finished answers. One value for PPO, GRPO, best-of-n and the sweep.
NO_EOS_PENALTY = -5.0


@torch.no_grad()
def score(reward_model, tokenizer, batch, no_eos_penalty):
    """r_θ(x, y): the reward model's output at the last real token (the end-of-text, detail 2) of the response's
    text, encoded as in the reward model's training (not the sampled ids: reward_inputs); or the fixed
    no_eos_penalty for a response that never ended (detail 15). -> (score (B,), raw RM score (B,))."""
    device = batch["response"].device
    idx, mask = reward_inputs(tokenizer, [t.instruction for t in batch["tasks"]], batch["texts"],
                              reward_model.config.block_size)
    rm_score = reward_model.score(idx.to(device), mask.to(device))                             # (B,)
    return torch.where(batch["eos"], rm_score, torch.full_like(rm_score, no_eos_penalty)), rm_score
