"""One rollout and what the models say about it (InstructGPT's RL step, as train_ppo.py and train_grpo.py run it).

rollout() samples a response per prompt with the KV cache and lays prompt ⊕ response out as ONE batch, so the
policy, the reference, the value model and the reward model each read it in a single forward pass. Where a value
is read lives here; which logits predict which response token is minigpt.scoring.response_logprobs. Also here:
the rollout's score, the held-out validation both RL scripts select on, and each iteration's prompts and seeds.
"Detail N" refers to "The N Implementation Details of RLHF with PPO" (Huang et al.).
"""

import torch

from minigpt.respond import respond
from minigpt.sampling import left_pad
from minigpt.scoring import penalise_unfinished, reward_scores, rollout_kl


@torch.no_grad()
def rollout(policy, tokenizer, instructions, max_new_tokens, temperature, generator):
    """Sample one response per task with the KV cache and lay prompt ⊕ response out as one batch.

    Returns a dict; P = prompt width, N = response width:
      query_response (B, P+N)  left-padded prompt, then the right-padded response
      attention_mask (B, P+N)  1 on real tokens;  position_ids (B, P+N) = cumsum(mask) − 1 (detail 16)
      response (B, N), mask (B, N)  the sampled tokens up to and including end-of-text, 1 there (pad ≠ eos: detail 15)
      sample_logprobs (B, N)   log-probs generate() sampled with;  eos (B,) bool;  texts, instructions (lists)
    """
    out = respond(policy, tokenizer, list(instructions), max_new_tokens, temperature,
                  generator=generator, batch_size=len(instructions))
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
                eos=torch.tensor(out.eos, dtype=torch.bool, device=response.device), texts=out.texts,
                instructions=list(instructions))


def response_values(value_model, batch):
    """V(s_t) for every response token t, (B, N). s_t, the state in which y_t is chosen, is the prefix up to the
    token BEFORE y_t, so the value for y_t is read at column P+t−1: the last prompt token for the first one."""
    P = batch["P"]
    values = value_model(batch["query_response"], attention_mask=batch["attention_mask"],
                         position_ids=batch["position_ids"])                  # (B, P+N)
    return values[:, P - 1: -1]                                               # (B, N)


def minibatch(batch, rows, keys):
    """The rows `rows` of the named per-response tensors of a rollout batch, with its prompt width P."""
    return {"P": batch["P"], **{k: batch[k][rows] for k in keys}}


@torch.no_grad()
def score(reward_model, tokenizer, batch, no_eos_penalty):
    """r_θ(x, y) of each response's text (minigpt.scoring.reward_scores: the end-of-text after the text encoded as in
    the reward model's training, detail 2), or no_eos_penalty where it never ended (detail 15).
    -> (score (B,), raw RM score (B,))."""
    rm_scores = reward_scores(reward_model, tokenizer, batch["instructions"], batch["texts"])
    rm_scores = rm_scores.to(batch["response"].device)                        # (B,)
    return penalise_unfinished(rm_scores, batch["eos"], no_eos_penalty), rm_scores


@torch.no_grad()
def validate(policy, reference, reward_model, tokenizer, world, tasks, cfg):
    """What a practitioner can measure on held-out prompts: RM score and KL to the SFT model (PPO and GRPO select
    their checkpoint on these). Sampled with the same noise every time (a fixed generator), so evaluations differ
    by the policy, not by luck. The gold score is computed for the report only; selection never looks at it."""
    noise = torch.Generator(device=next(policy.parameters()).device).manual_seed(cfg.seed)
    batch = rollout(policy, tokenizer, [t.instruction for t in tasks], cfg.max_new_tokens, cfg.temperature, noise)
    scores, _ = score(reward_model, tokenizer, batch, cfg.no_eos_penalty)
    return dict(val_rm_score=scores.mean().item(), val_kl=rollout_kl(policy, reference, batch, cfg.temperature),
                val_gold=sum(world.gold_score(t, r) for t, r in zip(tasks, batch["texts"])) / len(tasks),
                val_eos_rate=batch["eos"].float().mean().item(), val_length=batch["mask"].sum(1).float().mean().item())


def prompts_for_iteration(n_prompts, iteration, global_batch, rank, world_size, seed):
    """Indices of this rank's prompts at `iteration`: a fresh permutation of the training prompts every pass,
    computed from (seed, pass) alone, so a resumed run continues the exact same prompt order."""
    positions = range(iteration * global_batch, (iteration + 1) * global_batch)
    perms = {}
    picked = []
    for p in positions:
        epoch = p // n_prompts
        if epoch not in perms:
            perms[epoch] = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        picked.append(perms[epoch][p % n_prompts])
    return picked[rank::world_size]


# Sampling and shuffling noise of one iteration on one rank: a function of (seed, iteration, rank) alone, so a
# resumed run draws exactly what the uninterrupted one would have. The streams of two seeds never meet while
# iteration * world_size + rank < SEED_STRIDE; the shuffler's stream is offset by SHUFFLE_OFFSET from the sampler's.
SEED_STRIDE, SHUFFLE_OFFSET = 1000, 7


def iteration_seeds(seed, iteration, rank, world_size):
    """-> (sampling seed, minibatch-shuffling seed) of this rank at this iteration."""
    base = seed * SEED_STRIDE + iteration * world_size + rank
    return base, base + SHUFFLE_OFFSET
