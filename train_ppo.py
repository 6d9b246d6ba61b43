"""Stage 5: reinforcement learning (强化学习) from the reward model with PPO, InstructGPT's last step.

The objective (InstructGPT, eq. 2), maximised over the policy's weights φ:

    objective(φ) = E_{x ~ prompts, y ~ π_RL(·|x)} [ r_θ(x, y) − β · log(π_RL(y|x) / π_SFT(y|x)) ]
                 + γ · E_{x ~ pretraining text} [ log π_RL(x) ]
                   reward model score  −  KL penalty to the SFT model  +  (PPO-ptx) pretraining likelihood

The seed's policy gradient, and what PPO puts in its place:

    ∇J(θ) = E[ ∇log π_θ(a|s) · R ]                        push up each sampled token a (the action)
                                                           in its context s (the state: prompt + response
                                                           so far) by the return R
    L_clip = E[ min(ρ_t·A_t, clip(ρ_t, 1−ε, 1+ε)·A_t) ]   ρ_t = π_θ(a_t|s_t) / π_old(a_t|s_t)

At ρ = 1 the gradient of L_clip is E[∇log π · A]: the same formula, with R replaced by the advantage A
(the return minus what the value model expected, whitened), and the clip keeps the policy close to the one
that sampled the batch, so one batch can be reused for several epochs.

Four models: the policy (starts as the SFT model, trained), the reference (a frozen copy of the SFT model),
the reward model (frozen) and the value model (starts as the reward model, trained).

GRPO, which drops the value model for a group baseline, is train_grpo.py: one algorithm, one file.

    python train_ppo.py                                       # out/sft + out/rm -> out/ppo, about 1 minute
    python train_ppo.py --ptx_coef=1 --out_dir=out/ppo_ptx    # PPO-ptx
    torchrun --standalone --nproc_per_node=2 train_ppo.py     # each process rolls out its own prompts
"""

import copy
import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from minigpt.checkpoint import (check_same_tokenizer, config_dict, load_model, load_resumed, model_state,
                                rng_state, save_checkpoint, set_rng_state)
from minigpt.cli import UserError, check, run
from minigpt.data import lm_windows
from minigpt.losses import sft_loss
from minigpt.ppo import (AdaptiveKLController, FixedKLController, entropy_from_logits, explained_variance,
                         gae, kl_penalty_rewards, masked_whiten, policy_loss, value_loss)
from minigpt.rollout import (REWARDS, finish_run, iteration_seeds, iteration_stats, kl_explosion, minibatch,
                             print_samples, prompts_for_iteration, response_values, rollout, score,
                             split_prompts, validate_and_select)
from minigpt.scoring import NO_EOS_PENALTY, response_logprobs
from minigpt.training import (autocast, average_gradients, check_dtype, cleanup_distributed, exit_interrupted,
                              is_distributed, make_adamw, open_stage, resolve_dtype, start_stage,
                              step_optimizers)
from minigpt.world import World


@dataclass
class Config:
    out_dir: str = field(default="out/ppo", metadata={"help": "stage folder to write"})
    sft: str = field(default="out/sft", metadata={
        "help": "SFT stage folder: the policy's start and the frozen reference"})
    rm: str = field(default="out/rm", metadata={
        "help": "reward model stage folder (frozen; also the value model's start)"})
    world_seed: int = field(default=0, metadata={
        "help": "seed of the built-in instruction world (its 'ppo' prompts)"})
    seed: int = field(default=1337, metadata={"help": "seed for sampling, prompt order and minibatches"})
    # rollouts
    iterations: int = field(default=60, metadata={"help": "rollout + update rounds"})
    batch_size: int = field(default=64, metadata={"help": "prompts rolled out per iteration per process"})
    max_new_tokens: int = field(default=24, metadata={"help": "longest response; one that never emits "
                                                              "end-of-text is penalised"})
    temperature: float = field(default=1.0, metadata={
        "help": "sampling temperature (the log-probs use the same one)"})
    reward: str = field(default="model", metadata={
        "help": "model (the reward model's score) or verifier (plus +-1 from a checker of sums, code "
                "expressions and comparisons where it can parse the prompt: minigpt/verifier.py; every "
                "checkable SFT and ranking prompt joins the PPO prompts: minigpt/rollout.split_prompts)"})
    no_eos_penalty: float = field(default=NO_EOS_PENALTY, metadata={
        "help": "score instead of the RM's for a response without end-of-text "
                "(minigpt.scoring.NO_EOS_PENALTY)"})
    # reward: r = RM score - beta * KL
    kl_coef: float = field(default=0.2, metadata={
        "help": "beta, the per-token KL penalty to the SFT model, in units of the demonstrations' reward "
                "spread (InstructGPT 0.02; here small values let PPO find the RM's holes)"})
    adaptive_kl: bool = field(default=False, metadata={
        "help": "adapt beta towards --kl_target (Ziegler et al.)"})
    kl_target: float = field(default=6.0, metadata={"help": "adaptive KL: target KL per response, nats"})
    kl_horizon: int = field(default=1000, metadata={
        "help": "adaptive KL: horizon in episodes (Ziegler: 10000 of ~1M episodes; a default run has ~1300)"})
    # PPO update
    ppo_epochs: int = field(default=2, metadata={"help": "passes over each rollout batch"})
    minibatch_size: int = field(default=32, metadata={"help": "responses per gradient step (divides the "
                                                              "responses of an iteration)"})
    lr: float = field(default=1e-4, metadata={"help": "policy learning rate (constant)"})
    value_lr: float = field(default=1e-4, metadata={"help": "value model learning rate (constant)"})
    clip: float = field(default=0.2, metadata={"help": "PPO ratio clip epsilon"})
    value_clip: float = field(default=0.2, metadata={"help": "value clip around the rollout's values"})
    vf_coef: float = field(default=0.1, metadata={"help": "value loss coefficient"})
    gamma: float = field(default=1.0, metadata={"help": "discount (1: none)"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip each model's gradient norm (0 = off)"})
    adam_beta2: float = field(default=0.95, metadata={"help": "Adam beta2 (beta1 is 0.9)"})
    # PPO-ptx
    ptx_coef: float = field(default=0.0, metadata={"help": "gamma of PPO-ptx: weight of the pretraining LM "
                                                           "loss (0 = plain PPO)"})
    ptx_batch_size: int = field(default=8, metadata={"help": "pretraining windows per PPO minibatch"})
    # selection and safety
    val_prompts: int = field(default=64, metadata={
        "help": "ppo prompts held out to select the checkpoint by RM score"})
    val_samples: int = field(default=4, metadata={"help": "responses sampled per validation "
                                                          "prompt (one RM score per response "
                                                          "has std ~1: 64 of them give +-0.25)"})
    val_tokens: int = field(default=16384, metadata={
        "help": "tokens of held-out pretraining text for pretrain_val_loss (minigpt.scoring.heldout_loss)"})
    kl_budget: float = field(default=10.0, metadata={
        "help": "select only checkpoints whose validation KL is below this, nats"})
    max_kl: float = field(default=50.0, metadata={
        "help": "stop if the rollout KL per response exceeds this, nats"})
    eval_interval: int = field(default=5, metadata={"help": "iterations between validation + checkpoint"})
    log_interval: int = field(default=1, metadata={"help": "iterations between progress lines"})
    sample_interval: int = field(default=20, metadata={"help": "iterations between printed sample "
                                                               "responses (0 = never)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 autocast where this device's bf16 "
                                                         "matmul is clearly faster), float32 or bfloat16"})
    debug: bool = field(default=False, metadata={"help": "assert the sanity checks: recomputed log-probs "
                                                         "== sampled ones, ratio 1 at the start"})
    resume: bool = field(default=False, metadata={"help": "continue from out_dir/last.pt"})
    force: bool = field(default=False, metadata={"help": "overwrite a run already in out_dir"})

    def validate(self):
        check_dtype(self.dtype)
        check(self.reward in REWARDS, f"--reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        for key in ("iterations", "batch_size", "max_new_tokens", "ppo_epochs", "minibatch_size",
                    "eval_interval", "log_interval", "ptx_batch_size", "val_prompts", "val_samples",
                    "val_tokens"):
            check(getattr(self, key) > 0, f"--{key} must be > 0, got {getattr(self, key)}")
        check(self.batch_size % self.minibatch_size == 0,
              f"--minibatch_size ({self.minibatch_size}) must divide the {self.batch_size} responses "
              f"of an iteration (--batch_size)")
        check(self.temperature > 0,
              f"--temperature must be > 0 (log-probs need a distribution), got {self.temperature}")
        check(self.lr > 0 and self.value_lr > 0, "--lr and --value_lr must be > 0")
        check(self.kl_coef >= 0 and self.ptx_coef >= 0 and self.vf_coef >= 0,
              "--kl_coef, --ptx_coef, --vf_coef must be >= 0")
        check(self.clip > 0 and self.value_clip > 0, "--clip and --value_clip must be > 0")
        check(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "--gamma and --lam must be in [0, 1]")
        check(0 < self.adam_beta2 < 1, f"--adam_beta2 must be in (0, 1), got {self.adam_beta2}")
        check(self.kl_target > 0 and self.kl_horizon > 0, "--kl_target and --kl_horizon must be > 0")
        check(self.max_kl > 0 and self.kl_budget > 0, "--max_kl and --kl_budget must be > 0")


# ---- the pieces of one iteration (each used by main and by tests/test_train_ppo.py) ----------------------
# The rollout, its values, scores and validation are in minigpt/rollout.py; log-probs in minigpt/scoring.py.

def whiten(x, mask):
    """masked_whiten over the whole batch: with several processes the mean and variance are those of ALL
    ranks' rollouts (sums all-reduced), as one process with the global batch would compute them."""
    if not is_distributed():
        return masked_whiten(x, mask)
    m = mask.to(torch.float64)
    xm = torch.where(mask.bool(), x, torch.zeros_like(x)).to(torch.float64)
    sums = torch.stack([xm.sum(), (xm * xm).sum(), m.sum()])
    dist.all_reduce(sums)                                                     # Σx, Σx², n over all ranks
    n = sums[2].clamp(min=2)
    mean = sums[0] / n
    var = (sums[1] / n - mean ** 2) * n / (n - 1)                            # unbiased, like masked_var
    return torch.where(mask.bool(), (x - mean) * torch.rsqrt(var + 1e-8), torch.zeros_like(x)).to(x.dtype)


def compute_advantages(rewards, values, mask, gamma=1.0, lam=0.95):
    """GAE over the response tokens (detail 8: γ = 1, λ = 0.95, returns = advantages + values), then the
    advantages whitened over the batch (detail 9). -> (advantages (B, N), returns (B, N))."""
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    return whiten(advantages, mask), returns


# ======== read this first: the PPO update: clipped ratio, clipped value loss, PPO-ptx, minibatches ========
def ppo_loss(policy, value_model, mb, cfg):
    """Clipped surrogate + cfg.vf_coef * clipped value loss on one minibatch -> (loss, stats); no entropy
    bonus (detail 10). mb holds the rollout's logprobs, values, advantages and returns for its rows."""
    logprobs = response_logprobs(policy, mb, cfg.temperature)                 # (b, N) with gradients
    pg_loss, stats = policy_loss(logprobs, mb["logprobs"], mb["advantages"], mb["mask"], cfg.clip)  # ε = 0.2
    log_ratio = torch.where(mb["mask"].bool(), logprobs.detach() - mb["logprobs"], torch.zeros_like(logprobs))
    stats.update(pg_loss=pg_loss.item(), max_abs_log_ratio=log_ratio.abs().max().item())
    values = response_values(value_model, mb)                                 # (b, N) with gradients
    vf_loss, vf_clipfrac = value_loss(values, mb["values"], mb["returns"], mb["mask"], cfg.value_clip)
    stats.update(vf_loss=vf_loss.item(), vf_clipfrac=vf_clipfrac)
    # The value network here is separate, with its own Adam: Adam divides out a constant gradient scale, so
    # the 0.1 of detail 10 (made for a value head sharing the policy's trunk) matters only through gradient
    # clipping.
    return pg_loss + cfg.vf_coef * vf_loss, stats


# what ppo_loss reads of each minibatch's rows (the rollout's prompt width P rides along)
MINIBATCH_KEYS = ("query_response", "attention_mask", "position_ids", "response", "mask", "logprobs",
                  "values", "advantages", "returns")


def ppo_update(policy, value_model, policy_optimizer, value_optimizer, batch, cfg, generator,
               ptx_tokens=None, guard=None):
    """cfg.ppo_epochs passes over the rollout batch in shuffled minibatches (detail 11) -> list of per-step
    stats.

    PPO-ptx: when cfg.ptx_coef > 0, each step also adds γ · (next-token loss on pretraining windows), its
    gradient accumulated with PPO's (InstructGPT)."""
    B = batch["response"].shape[0]
    block_size = policy.config.block_size
    all_stats = []
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator)                      # shuffled minibatches
        for start in range(0, B, cfg.minibatch_size):
            rows = order[start: start + cfg.minibatch_size]
            mb = minibatch(batch, rows, MINIBATCH_KEYS)
            device = mb["response"].device
            with autocast(str(device), cfg.dtype):
                loss, stats = ppo_loss(policy, value_model, mb, cfg)
            if epoch == 0 and start == 0 and cfg.debug:                     # detail 13: nothing has moved yet
                assert stats["max_abs_log_ratio"] < 1e-5, f"ratio != 1 on the first minibatch: {stats}"
            if cfg.ptx_coef > 0:
                windows = lm_windows(ptx_tokens, block_size, cfg.ptx_batch_size, generator)
                x, y = (t.to(device) for t in windows)
                with autocast(str(device), cfg.dtype):                      # -(1/N) Σ log π(x_{t+1}|x_≤t)
                    ptx_loss = sft_loss(policy(x), y, torch.ones_like(y))
                loss = loss + cfg.ptx_coef * ptx_loss                       # objective's γ·E[log π_RL(x)]
                stats["ptx_loss"] = ptx_loss.item()
            loss.backward()
            average_gradients(policy)                                       # data parallel by hand (see main)
            average_gradients(value_model)
            grad_norm = step_optimizers(loss, [policy, value_model], [policy_optimizer, value_optimizer],
                                        cfg.grad_clip, guard)               # each model clipped on its own
            if grad_norm is not None:
                stats["grad_norm"] = grad_norm
            all_stats.append(stats)
    return all_stats
# ======== end of read this first ========


def main(cfg):
    # Data parallel: gradients averaged by hand (minigpt.training.average_gradients). Each rank rolls out its
    # own prompts, two models step, and the loss reads the policy through trunk() and lm_head, not forward(),
    # which a DDP wrapper would need; whitening's statistics are all-reduced too (whiten).
    rank, world_size, device, resume = start_stage(cfg)
    master = rank == 0

    # ---- four models (detail 1) ----
    policy, tokenizer, _ = load_model(cfg.sft, "lm", device)              # π_RL, starts as π_SFT
    reward_model, rm_tokenizer, _ = load_model(cfg.rm, "reward", device)  # r_θ, frozen
    check_same_tokenizer(tokenizer, rm_tokenizer, cfg.sft, cfg.rm)
    reference = copy.deepcopy(policy).requires_grad_(False)               # π_SFT, frozen
    reward_model.requires_grad_(False)
    value_model = copy.deepcopy(reward_model).requires_grad_(True)        # V starts as the RM
    for model in (policy, reference, reward_model, value_model):
        model.eval()                                                      # dropout off everywhere (detail 14)
    if policy.config.block_size <= cfg.max_new_tokens:
        raise UserError(f"--max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in block_size "
                        f"{policy.config.block_size}")
    # Adam eps 1e-5 (detail 17); betas (0.9, β2) spelled out: a (β1, β1) typo is a known bug. No weight decay:
    # the KL penalty, not decay towards zero, is what keeps the policy near the SFT model.
    betas = (0.9, cfg.adam_beta2)
    policy_optimizer = make_adamw(policy, cfg.lr, weight_decay=0.0, betas=betas, eps=1e-5)
    value_optimizer = make_adamw(value_model, cfg.value_lr, weight_decay=0.0, betas=betas, eps=1e-5)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl  # detail 6
              else FixedKLController(cfg.kl_coef))

    # ---- prompts: the world's 'ppo' split, some held out for checkpoint selection (not the test split) ----
    world = World(cfg.world_seed)
    val_tasks, train_tasks = split_prompts(world, cfg)
    pretrain_val_tokens = torch.tensor(tokenizer.encode(world.corpus_val()), dtype=torch.long)
    ptx_tokens = (torch.tensor(tokenizer.encode(world.corpus()), dtype=torch.long) if cfg.ptx_coef > 0
                  else None)
    dtype = resolve_dtype(cfg.dtype, device)
    if master:
        print(f"dtype: {dtype}")
        print(f"models: policy {policy.num_params() / 1e6:.2f}M from {cfg.sft}, value "
              f"{value_model.gpt.num_params() / 1e6:.2f}M from {cfg.rm}; {len(train_tasks)} training "
              f"prompts, {len(val_tasks)} validation responses ({cfg.val_prompts} prompts x "
              f"{cfg.val_samples})")

    iteration, elapsed_before = 0, 0.0
    best = dict(iteration=-1, val_rm_score=-math.inf)
    if resume:
        load_resumed(policy, resume["policy"], os.path.join(cfg.out_dir, "last.pt"))
        policy_optimizer.load_state_dict(resume["policy_optimizer"])
        load_resumed(value_model, resume["value"], os.path.join(cfg.out_dir, "last.pt"))
        value_optimizer.load_state_dict(resume["value_optimizer"])
        kl_ctl.value = resume["kl_coef"]
        set_rng_state(resume["rng"])
        iteration, best, elapsed_before = resume["iteration"], resume["best"], resume["elapsed_s"]
        if master:
            print(f"resumed from {cfg.out_dir}/last.pt at iteration {iteration} (beta {kl_ctl.value:.4f})")

    def save_last():
        save_checkpoint(os.path.join(cfg.out_dir, "last.pt"), {
            "policy": model_state(policy), "policy_optimizer": policy_optimizer.state_dict(),
            "value": model_state(value_model), "value_optimizer": value_optimizer.state_dict(),
            "kl_coef": kl_ctl.value, "iteration": iteration, "best": best, "rng": rng_state(),
            "elapsed_s": elapsed_before + time.time() - start_time, "config": config_dict(cfg)})
            # prompt order and sampling noise are functions of (seed, iteration): see iteration_seeds

    def evaluate_and_select():
        validate_and_select(policy, reference, reward_model, tokenizer, world, val_tasks, pretrain_val_tokens,
                            cfg, iteration, best, log, master, device, dtype)
        if master:
            save_last()

    log, progress, guard = open_stage(cfg, master, cfg.iterations, iteration, resume is not None)
    start_time = time.time()
    stopped = None
    global_batch = cfg.batch_size * world_size
    if not resume:
        evaluate_and_select()                                             # iteration 0 = the SFT model itself

    # ---- the RL loop ----
    try:
        while iteration < cfg.iterations:
            t0 = time.time()
            # 1. Rollout: this rank's prompts, one response each sampled at temperature T with the KV cache
            picked = prompts_for_iteration(len(train_tasks), iteration, global_batch, rank, world_size,
                                           cfg.seed)
            sample_seed, shuffle_seed = iteration_seeds(cfg.seed, iteration, rank, world_size)
            sampler = torch.Generator(device=device).manual_seed(sample_seed)
            batch_tasks = [train_tasks[i] for i in picked]
            with autocast(device, dtype):
                batch = rollout(policy, tokenizer, [t.prompt for t in batch_tasks], cfg.max_new_tokens,
                                cfg.temperature, sampler)
            mask = batch["mask"]                                       # (B, N) 1 on response tokens incl. eos
            with torch.no_grad(), autocast(device, dtype):             # the frozen forwards, batched
                # π_old (detail 12), π_ref at the same T, V(s_t): each (B, N)
                logprobs, logits = response_logprobs(policy, batch, cfg.temperature, with_logits=True)
                ref_logprobs = response_logprobs(reference, batch, cfg.temperature)
                values = response_values(value_model, batch)
                entropy = entropy_from_logits(logits.float() / cfg.temperature, mask).item()
                gap = torch.where(mask.bool(), logprobs - batch["sample_logprobs"], 0.0)
                logprob_gap = gap.abs().max().item()
                # debug: rollout and scoring see one distribution (bf16: the KV cache's one-token steps and
                # the full forward round differently, ~1e-2)
                if cfg.debug:
                    assert logprob_gap < (1e-4 if dtype == "float32" else 0.1), \
                        f"recomputed log-probs differ from sampled ones by {logprob_gap}"

                # 2. Reward: RM score (+ the checker's ±1, --reward=verifier) at the last real token,
                #    −β·(log π − log π_ref) on every response token
                scores, rm_scores = score(reward_model, tokenizer, batch, cfg.no_eos_penalty,
                                          cfg.reward)                                     # (B,)
                rewards, kl = kl_penalty_rewards(logprobs, ref_logprobs, scores, mask, kl_ctl.value)

                # 3. Advantages: GAE (γ=1, λ=0.95) over response tokens, whitened over all ranks' batch
                advantages, returns = compute_advantages(rewards, values, mask, cfg.gamma, cfg.lam)
            batch.update(logprobs=logprobs, values=values, advantages=advantages, returns=returns)

            # 4. Update: clipped PPO on policy and value, several epochs of shuffled minibatches (+ PPO-ptx)
            shuffler = torch.Generator().manual_seed(shuffle_seed)
            steps = ppo_update(policy, value_model, policy_optimizer, value_optimizer, batch, cfg, shuffler,
                               ptx_tokens, guard)
            iteration += 1

            # 5. Log; the KL controller moves β after seeing this batch's KL (all ranks' mean)
            kl_per_response = (kl * mask).sum(1)                       # (B,) Σ_t log π − log π_ref
            row = iteration_stats(world, batch_tasks, batch, scores, rm_scores, logprobs, ref_logprobs,
                                  kl_per_response, kl_ctl.value, entropy, logprob_gap, steps,
                                  explained_variance=explained_variance(values, returns, mask))
            row.update(step=iteration, kl_coef=kl_ctl.value, episodes=iteration * global_batch,
                       iteration_s=time.time() - t0, seconds=elapsed_before + time.time() - start_time)
            log.log(**row)
            kl_ctl.update(row["kl"], global_batch)
            if iteration % cfg.log_interval == 0 and master:
                progress.line(iteration, int(mask.sum()) * world_size, rm=row["rm_score"], gold=row["gold"],
                              kl=row["kl"], beta=row["kl_coef"], ent=row["entropy"], len=row["length"],
                              eos=row["eos_rate"], clip=row["clipfrac"], ev=row["explained_variance"])
            if master and cfg.sample_interval and iteration % cfg.sample_interval == 0:
                print_samples(world, batch_tasks, batch["texts"], scores)
            stopped = kl_explosion(row["kl"], cfg.max_kl, iteration)          # stop, keep the selected model
            if iteration % cfg.eval_interval == 0 or iteration == cfg.iterations or stopped:
                evaluate_and_select()
            if stopped:
                break
    except KeyboardInterrupt:
        exit_interrupted(save_last, master, cfg.out_dir, f"iteration {iteration}")

    if master:
        finish_run(cfg, best, dict(
            kl_coef=cfg.kl_coef, final_kl_coef=kl_ctl.value, ptx_coef=cfg.ptx_coef, algo="ppo",
            reward=cfg.reward,
            iterations=iteration, episodes=iteration * global_batch,
            seconds=elapsed_before + time.time() - start_time, skipped_steps=guard.skipped, stopped=stopped,
            dtype=dtype))
    cleanup_distributed()


if __name__ == "__main__":
    run(main, Config)
