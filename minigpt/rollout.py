"""One rollout and what the models say about it (InstructGPT's RL step, as train_ppo.py and train_grpo.py
run it).

rollout() samples a response per prompt with the KV cache and lays prompt ⊕ response out as ONE batch, so
the policy, the reference, the value model and the reward model each read it in a single forward pass. Where
a value is read lives here; which logits predict which response token is minigpt.scoring.response_logprobs.
Also here: the rollout's score, the held-out validation both RL scripts select on, each iteration's prompts
and seeds, and the steps both scripts share around their loop (validation and selection, logging, the end).
"Detail N" refers to "The N Implementation Details of RLHF with PPO" (Huang et al.).
"""

import os
import random
import sys

import torch

from minigpt.checkpoint import save_model, write_json
from minigpt.cli import UserError
from minigpt.ppo import k3_kl
from minigpt.respond import respond
from minigpt.sampling import left_pad
from minigpt.scoring import heldout_loss, penalise_unfinished, reward_scores, rollout_kl
from minigpt.training import all_reduce_mean, autocast, plot_metrics, read_metrics
from minigpt.verifier import parse, verifier_reward, verify

# --reward: what the RL scripts maximise. model: the reward model's score; verifier: the same plus the
# checker's term where it can check the prompt (its formula in minigpt/verifier.py)
REWARDS = ("model", "verifier")


@torch.no_grad()
def rollout(policy, tokenizer, instructions, max_new_tokens, temperature, generator):
    """Sample one response per task with the KV cache and lay prompt ⊕ response out as one batch.

    Returns a dict; P = prompt width, N = response width:
      query_response (B, P+N)  left-padded prompt, then the right-padded response
      attention_mask (B, P+N)  1 on real tokens;  position_ids (B, P+N) = cumsum(mask) − 1 (detail 16)
      response (B, N), mask (B, N)  the sampled tokens up to and including end-of-text, 1 there
                               (pad ≠ eos: detail 15)
      sample_logprobs (B, N)   log-probs generate() sampled with;  eos (B,) bool;
      texts, instructions      lists
    """
    out = respond(policy, tokenizer, list(instructions), max_new_tokens, temperature,
                  generator=generator, batch_size=len(instructions))
    # The mask is 1 up to and including the first end-of-text (all columns if none), NOT tokens != pad: a
    # policy can sample the pad token mid-response, and generate() then treats it as a real token, so must we.
    # (The decoded text, which the judge and the reward model read, leaves it out: the pad is never a training
    # target, so a trained policy almost never samples it; the token stays in the sampling distribution so
    # that every log-prob here is the plain softmax over the vocabulary that the losses use.)
    is_eos = out.tokens == tokenizer.eos_id                                   # (B, max_new_tokens)
    last = torch.where(is_eos.any(1), is_eos.long().argmax(1), max_new_tokens - 1)       # (B,)
    columns = torch.arange(max_new_tokens, device=last.device)
    mask = (columns[None] <= last[:, None]).long()                            # (B, max_new_tokens)
    N = max(int(mask.sum(1).max()), 1)                                        # drop columns all pad
    response, mask, sample_logprobs = out.tokens[:, :N], mask[:, :N], out.logprobs[:, :N]
    query, query_mask = (t.to(response.device) for t in left_pad(out.prompts, tokenizer.pad_id))  # (B, P)
    attention_mask = torch.cat([query_mask, mask], dim=1)                     # (B, P+N)
    return dict(query_response=torch.cat([query, response], dim=1), attention_mask=attention_mask,
                position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0), P=query.shape[1],
                response=response, mask=mask, sample_logprobs=sample_logprobs,
                eos=torch.tensor(out.eos, dtype=torch.bool, device=response.device), texts=out.texts,
                instructions=list(instructions))


def response_values(value_model, batch):
    """V(s_t) for every response token t, (B, N). s_t, the state in which y_t is chosen, is the prefix up to
    the token BEFORE y_t, so the value for y_t is read at column P+t−1: the last prompt token for the first
    one."""
    P = batch["P"]
    values = value_model(batch["query_response"], attention_mask=batch["attention_mask"],
                         position_ids=batch["position_ids"])                  # (B, P+N)
    return values[:, P - 1: -1]                                               # (B, N)


def minibatch(batch, rows, keys):
    """The rows `rows` of the named per-response tensors of a rollout batch, with its prompt width P."""
    return {"P": batch["P"], **{k: batch[k][rows] for k in keys}}


@torch.no_grad()
def score(reward_model, tokenizer, batch, no_eos_penalty, reward="model"):
    """The reward of each response (--reward, REWARDS): r_θ(x, y) of its text (minigpt.scoring.reward_scores:
    the end-of-text after the text encoded as in the reward model's training, detail 2), plus with "verifier"
    the checker's ±1 where it can check the prompt (minigpt/verifier.py); no_eos_penalty where it never ended
    (detail 15). -> (score (B,), raw RM score (B,))."""
    rm_scores = reward_scores(reward_model, tokenizer, batch["instructions"], batch["texts"])
    rm_scores = rm_scores.to(batch["response"].device)                        # (B,)
    total = rm_scores
    if reward == "verifier":
        checked = [verifier_reward(x, y) for x, y in zip(batch["instructions"], batch["texts"])]
        total = rm_scores + torch.tensor([c or 0.0 for c in checked], device=rm_scores.device)
    return penalise_unfinished(total, batch["eos"], no_eos_penalty), rm_scores


def verified_rate(instructions, texts):
    """Share of the responses to checkable prompts that the checker finds right (None if no prompt is
    checkable): what the verifier's term pushes up, logged under either --reward."""
    checks = [(parse(x), y) for x, y in zip(instructions, texts)]
    right = [verify(c, y) for c, y in checks if c is not None]
    return sum(right) / len(right) if right else None


@torch.no_grad()
def validate(policy, reference, reward_model, tokenizer, world, tasks, cfg):
    """What a practitioner can measure on held-out prompts: the reward (val_rm_score: the RM score, plus the
    checker's term with --reward=verifier) and KL to the SFT model (PPO and GRPO select their checkpoint on
    these); val_verified, the checker's share of right answers where it can check. Sampled with the same
    noise every time (a fixed generator), so evaluations differ by the policy, not by luck. The gold score is
    computed for the report only; selection never looks at it."""
    noise = torch.Generator(device=next(policy.parameters()).device).manual_seed(cfg.seed)
    batch = rollout(policy, tokenizer, [t.prompt for t in tasks], cfg.max_new_tokens, cfg.temperature,
                    noise)
    scores, _ = score(reward_model, tokenizer, batch, cfg.no_eos_penalty, cfg.reward)
    return dict(val_rm_score=scores.mean().item(),
                val_verified=verified_rate(batch["instructions"], batch["texts"]),
                val_kl=rollout_kl(policy, reference, batch, cfg.temperature),
                val_gold=sum(world.gold_score(t, r) for t, r in zip(tasks, batch["texts"])) / len(tasks),
                val_eos_rate=batch["eos"].float().mean().item(),
                val_length=batch["mask"].sum(1).float().mean().item())


def prompts_for_iteration(n_prompts, iteration, global_batch, rank, world_size, seed):
    """Indices of this rank's prompts at `iteration`: a fresh permutation of the training prompts every pass,
    computed from (seed, pass) alone, so a resumed run continues the exact same prompt order."""
    positions = range(iteration * global_batch, (iteration + 1) * global_batch)
    perms = {}
    picked = []
    for p in positions:
        epoch = p // n_prompts
        if epoch not in perms:
            generator = torch.Generator().manual_seed(seed + epoch)
            perms[epoch] = torch.randperm(n_prompts, generator=generator).tolist()
        picked.append(perms[epoch][p % n_prompts])
    return picked[rank::world_size]


# Sampling and shuffling noise of one iteration on one rank: a function of (seed, iteration, rank) alone, so
# a resumed run draws exactly what the uninterrupted one would have. The streams of two seeds never meet
# while iteration * world_size + rank < SEED_STRIDE; the shuffler's stream is offset by SHUFFLE_OFFSET from
# the sampler's.
SEED_STRIDE, SHUFFLE_OFFSET = 1000, 7


def iteration_seeds(seed, iteration, rank, world_size):
    """-> (sampling seed, minibatch-shuffling seed) of this rank at this iteration."""
    base = seed * SEED_STRIDE + iteration * world_size + rank
    return base, base + SHUFFLE_OFFSET


# ---- around the loop: what train_ppo.py and train_grpo.py do the same way, written once -------------------

def split_prompts(world, cfg):
    """The world's 'ppo' prompts, shuffled by cfg.world_seed: the first cfg.val_prompts held out for
    checkpoint selection (each cfg.val_samples times), the rest to train on; never the test split. With
    --reward=verifier, also every prompt of the SFT and ranking splits the checker can parse.
    -> (val_tasks, train_tasks)."""
    tasks = list(world.split("ppo"))
    random.Random(cfg.world_seed).shuffle(tasks)
    if len(tasks) < cfg.val_prompts + cfg.batch_size:
        raise UserError(f"the world has {len(tasks)} ppo prompts: too few for "
                        f"--val_prompts={cfg.val_prompts} + --batch_size={cfg.batch_size}")
    val_tasks, train_tasks = tasks[:cfg.val_prompts] * cfg.val_samples, tasks[cfg.val_prompts:]
    if cfg.reward == "verifier":
        # A checker needs no labeller, so any question it can answer is a training prompt (RL with verifiable
        # rewards trains on large problem sets): the PPO prompts ask ~120 sums, only 84-93 of the world's 155
        # sums and differences; with the SFT and ranking splits' 1,956 checkable prompts, ~775 ask all 155,
        # and wrong sums on world 0's dev split fell by 51% instead of 14% (docs/defaults_history.md).
        # Held-out splits (test, dev, probe) stay out.
        train_tasks += [t for name in ("sft_train", "rm") for t in world.split(name) if parse(t.prompt)]
    return val_tasks, train_tasks


def validate_and_select(policy, reference, reward_model, tokenizer, world, val_tasks, pretrain_val_tokens,
                        cfg, iteration, best, log, master, device, dtype):
    """Validation RM score within the KL budget picks model.pt (never the gold score): validate, add the
    held-out pretraining loss, log, and when selected update `best` in place and (master) save model.pt."""
    with autocast(device, dtype):
        val = validate(policy, reference, reward_model, tokenizer, world, val_tasks, cfg)
        val["pretrain_val_loss"] = heldout_loss(policy, pretrain_val_tokens, cfg.val_tokens)
    log.log(step=iteration, **val)
    chosen = val["val_kl"] <= cfg.kl_budget and val["val_rm_score"] > best["val_rm_score"]
    if chosen:
        best.update(iteration=iteration, **val)
        if master:
            save_model(cfg.out_dir, policy, tokenizer, "lm", cfg, iteration)
    if master:
        verified = "–" if val["val_verified"] is None else f"{val['val_verified']:.2f}"
        what = "reward" if cfg.reward == "verifier" else "RM score"
        print(f"iteration {iteration}: validation {what} {val['val_rm_score']:+.3f} | verified {verified} | "
              f"KL {val['val_kl']:.2f} nats | gold {val['val_gold']:.3f} | eos {val['val_eos_rate']:.2f} | "
              f"pretraining loss {val['pretrain_val_loss']:.3f}{' | selected' if chosen else ''}", flush=True)


def iteration_stats(world, tasks, batch, scores, rm_scores, logprobs, ref_logprobs, kl_per_response, kl_coef,
                    entropy, logprob_gap, steps, **extra):
    """One iteration's log row, every number the mean over all ranks: scores, gold (watching only), KL,
    entropy, length, end-of-text rate, `extra`, then the mean of each update step's stats."""
    mask, texts = batch["mask"], batch["texts"]
    return {k: all_reduce_mean(v) for k, v in dict(
        score=scores.mean().item(), rm_score=rm_scores.mean().item(),
        gold=sum(world.gold_score(t, r) for t, r in zip(tasks, texts)) / len(texts),  # watching only
        kl=kl_per_response.mean().item(), non_score_reward=-kl_coef * kl_per_response.mean().item(),
        kl_k3=(k3_kl(logprobs, ref_logprobs) * mask).sum(1).mean().item(),   # the same KL, an estimator >= 0
        entropy=entropy, length=mask.sum(1).float().mean().item(),
        eos_rate=batch["eos"].float().mean().item(), logprob_gap=logprob_gap, **extra,
        **{k: sum(s[k] for s in steps) / len(steps) for k in steps[0] if k != "max_abs_log_ratio"},
        first_minibatch_log_ratio=steps[0]["max_abs_log_ratio"]).items()}   # 0: ratio exactly 1 (detail 13)


def print_samples(world, tasks, texts, scores, n=3):
    """The first n responses of a rollout with their RM and gold scores."""
    for t, r, s in list(zip(tasks, texts, scores.tolist()))[:n]:
        print(f"  > {t.instruction[:70]!r}\n    {r[:100]!r}  "
              f"(RM {s:+.2f}, gold {world.gold_score(t, r):.2f})")


def kl_explosion(kl, max_kl, iteration):
    """The warning (also printed) when the rollout KL per response `kl` exceeds max_kl, else None."""
    stopped = None
    if kl > max_kl:
        stopped = (f"KL to the SFT model reached {kl:.1f} nats per response (> --max_kl={max_kl}) "
                   f"at iteration {iteration}: stopped; lower --lr or raise --kl_coef")
        print(f"warning: {stopped}", file=sys.stderr)
    return stopped


def finish_run(cfg, best, fields):
    """The end of an RL run (master only): <algo>.png (the rollouts by iteration), proxy_vs_gold.png,
    summary.json (the selected checkpoint's validation numbers, then `fields`, which name the algo) and the
    done line."""
    algo = fields["algo"]
    rows = read_metrics(os.path.join(cfg.out_dir, "metrics.jsonl"))
    train_rows = [r for r in rows if "rm_score" in r]
    val_rows = [r for r in rows if "val_kl" in r]                  # in iteration order: a path, not a curve
    plot_metrics(os.path.join(cfg.out_dir, f"{algo}.png"), train_rows, "step",
                 {"reward": ["rm_score", "score"], "gold (watching only)": ["gold"],
                  "KL to SFT (nats)": ["kl"], "response length": ["length"]},
                 title=f"{algo.upper()} rollouts by iteration")
    # Where the policy went: proxy (RM) and gold score against KL, point by point in iteration order. Pushed
    # too far (Gao et al. 2022) the proxy keeps rising while gold turns down; whether it does here, the plot
    # shows. The KL is a 256-sample estimate (mean of log π − log π_SFT), so near 0 it can come out
    # slightly negative.
    plot_metrics(os.path.join(cfg.out_dir, "proxy_vs_gold.png"), val_rows, "val_kl",
                 {"RM score (proxy)": ["val_rm_score"], "gold score": ["val_gold"]},
                 title="validation prompts, in iteration order: scores against KL to the SFT model (nats)")
    write_json(os.path.join(cfg.out_dir, "summary.json"), {
        "selected_iteration": best["iteration"], "val_rm_score": best["val_rm_score"],
        "val_kl": best.get("val_kl"), "val_gold": best.get("val_gold"),
        "pretrain_val_loss": best.get("pretrain_val_loss"), "val_verified": best.get("val_verified"),
        **fields})
    what = "reward" if cfg.reward == "verifier" else "RM score"
    print(f"done: selected iteration {best['iteration']} (validation {what} {best['val_rm_score']:+.3f}, "
          f"KL {best.get('val_kl', 0):.2f} nats); weights in {cfg.out_dir}/model.pt")
