"""Stage 5: reinforcement learning (强化学习) from the reward model with PPO, InstructGPT's last step.

The objective (InstructGPT, eq. 2), maximised over the policy's weights φ:

    objective(φ) = E_{x ~ prompts, y ~ π_RL(·|x)} [ r_θ(x, y) − β · log(π_RL(y|x) / π_SFT(y|x)) ]
                 + γ · E_{x ~ pretraining text} [ log π_RL(x) ]
                   reward model score  −  KL penalty to the SFT model  +  (PPO-ptx) pretraining likelihood

The seed's policy gradient, and what PPO puts in its place:

    ∇J(θ) = E[ ∇log π_θ(a|s) · R ]                        push up each sampled token a (the action) in its context s
                                                           (the state: prompt + response so far) by the return R
    L_clip = E[ min(ρ_t·A_t, clip(ρ_t, 1−ε, 1+ε)·A_t) ]   ρ_t = π_θ(a_t|s_t) / π_old(a_t|s_t)

At ρ = 1 the gradient of L_clip is E[∇log π · A]: the same formula, with R replaced by the advantage A
(the return minus what the value model expected, whitened), and the clip keeps the policy close to the one
that sampled the batch, so one batch can be reused for several epochs.

Four models: the policy (starts as the SFT model, trained), the reference (a frozen copy of the SFT model),
the reward model (frozen) and the value model (starts as the reward model, trained).

GRPO (Shao et al. 2024, --algo=grpo) drops the value model: it samples G responses per prompt and the group is
the baseline, A_i = (R_i − mean of the group) / std of the group, the same for every token of response i.
With A = R (no baseline, no normalising) both PPO's and GRPO's gradient at ρ = 1 are the seed formula above.
Its KL to the reference is not in the reward, as in PPO, but a term of the loss: + β · k3 per token.

    python train_ppo.py                                       # out/sft + out/rm -> out/ppo, about 1 minute
    python train_ppo.py --ptx_coef=1 --out_dir=out/ppo_ptx    # PPO-ptx
    python train_ppo.py --algo=grpo --batch_size=16 --lr=3e-5 --iterations=30 --out_dir=out/grpo
                                                              # GRPO as the pipeline runs it: 16 prompts x 4
                                                              # samples, no value model, about 30 s
    torchrun --standalone --nproc_per_node=2 train_ppo.py     # each process rolls out its own prompts
"""

import copy
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from minigpt.checkpoint import (check_out_dir, check_same_tokenizer, config_dict, load_checkpoint, load_model,
                                load_resumed, model_state, rng_state, save_checkpoint, save_model,
                                set_rng_state, write_json)
from minigpt.cli import UserError, check, run
from minigpt.data import lm_windows
from minigpt.losses import sft_loss
from minigpt.ppo import (AdaptiveKLController, FixedKLController, entropy_from_logits, explained_variance, gae,
                         group_advantages, k3_kl, kl_penalty_rewards, masked_mean, masked_whiten, policy_loss,
                         value_loss)
from minigpt.rollout import NO_EOS_PENALTY, response_logprobs, response_values, rollout, score
from minigpt.training import (MetricsLog, NonFiniteGuard, Progress, all_reduce_mean, autocast, check_dtype,
                              cleanup_distributed, resolve_dtype,
                              is_distributed, make_adamw, pick_device, plot_metrics, read_metrics, setup_distributed)
from minigpt.world import World


@dataclass
class Config:
    out_dir: str = field(default="out/ppo", metadata={"help": "stage folder to write"})
    sft: str = field(default="out/sft", metadata={"help": "SFT stage folder: the policy's start and the frozen reference"})
    rm: str = field(default="out/rm", metadata={"help": "reward model stage folder (frozen; also the value model's start)"})
    world_seed: int = field(default=0, metadata={"help": "seed of the built-in instruction world (its 'ppo' prompts)"})
    seed: int = field(default=1337, metadata={"help": "seed for sampling, prompt order and minibatches"})
    algo: str = field(default="ppo", metadata={"help": "ppo (value model, GAE, KL in the reward) or grpo (group "
                                                      "baseline, no value model, KL in the loss)"})
    group_size: int = field(default=4, metadata={"help": "GRPO: samples per prompt, G (PPO samples one)"})
    # rollouts
    iterations: int = field(default=60, metadata={"help": "rollout + update rounds"})
    batch_size: int = field(default=64, metadata={"help": "prompts rolled out per iteration per process (GRPO: "
                                                          "each --group_size times)"})
    max_new_tokens: int = field(default=24, metadata={"help": "longest response; one that never emits end-of-text is penalised"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (the log-probs use the same one)"})
    no_eos_penalty: float = field(default=NO_EOS_PENALTY, metadata={
        "help": "score instead of the RM's for a response without end-of-text (train_rm.py scales the "
                "demonstrations' rewards to std 1; finished SFT samples then score down to -4.6, none "
                "below -5, so not ending never pays)"})
    # reward: r = RM score - beta * KL
    kl_coef: float = field(default=0.2, metadata={"help": "beta, the per-token KL penalty to the SFT model, in "
                                                          "units of the demonstrations' reward spread (InstructGPT "
                                                          "0.02; here small values let PPO find the RM's holes)"})
    adaptive_kl: bool = field(default=False, metadata={"help": "adapt beta towards --kl_target (Ziegler et al.)"})
    kl_target: float = field(default=6.0, metadata={"help": "adaptive KL: target KL per response, nats"})
    kl_horizon: int = field(default=1000, metadata={"help": "adaptive KL: horizon in episodes (Ziegler: 10000 of ~1M episodes; "
                                                           "a default run has ~1300)"})
    # PPO update
    ppo_epochs: int = field(default=2, metadata={"help": "passes over each rollout batch"})
    minibatch_size: int = field(default=32, metadata={"help": "responses per gradient step (divides the responses "
                                                              "of an iteration)"})
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
    ptx_coef: float = field(default=0.0, metadata={"help": "gamma of PPO-ptx: weight of the pretraining LM loss (0 = plain PPO)"})
    ptx_batch_size: int = field(default=8, metadata={"help": "pretraining windows per PPO minibatch"})
    # selection and safety
    val_prompts: int = field(default=64, metadata={"help": "ppo prompts held out to select the checkpoint by RM score"})
    val_samples: int = field(default=4, metadata={"help": "responses sampled per validation prompt (one RM score "
                                                          "per response has std ~1: 64 of them give +-0.25)"})
    kl_budget: float = field(default=10.0, metadata={"help": "select only checkpoints whose validation KL is below this, nats"})
    max_kl: float = field(default=50.0, metadata={"help": "stop if the rollout KL per response exceeds this, nats"})
    eval_interval: int = field(default=5, metadata={"help": "iterations between validation + checkpoint"})
    log_interval: int = field(default=1, metadata={"help": "iterations between progress lines"})
    sample_interval: int = field(default=20, metadata={"help": "iterations between printed sample responses (0 = never)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 autocast where this device's bf16 matmul is "
                                                         "clearly faster), float32 or bfloat16"})
    debug: bool = field(default=False, metadata={"help": "assert the sanity checks: recomputed log-probs == sampled ones, ratio 1 at the start"})
    resume: bool = field(default=False, metadata={"help": "continue from out_dir/last.pt"})
    force: bool = field(default=False, metadata={"help": "overwrite a run already in out_dir"})

    def validate(self):
        check_dtype(self.dtype)
        for key in ("iterations", "batch_size", "max_new_tokens", "ppo_epochs", "minibatch_size", "eval_interval",
                    "log_interval", "ptx_batch_size", "val_prompts", "val_samples"):
            check(getattr(self, key) > 0, f"--{key} must be > 0, got {getattr(self, key)}")
        check(self.algo in ("ppo", "grpo"), f"--algo must be ppo or grpo, got {self.algo!r}")
        check(self.group_size > 0, f"--group_size must be > 0, got {self.group_size}")
        check(self.responses_per_iteration % self.minibatch_size == 0,
              f"--minibatch_size ({self.minibatch_size}) must divide the {self.responses_per_iteration} responses "
              f"of an iteration (--batch_size{' x --group_size' if self.algo == 'grpo' else ''})")
        check(self.temperature > 0, f"--temperature must be > 0 (log-probs need a distribution), got {self.temperature}")
        check(self.lr > 0 and self.value_lr > 0, "--lr and --value_lr must be > 0")
        check(self.kl_coef >= 0 and self.ptx_coef >= 0 and self.vf_coef >= 0, "--kl_coef, --ptx_coef, --vf_coef must be >= 0")
        check(self.clip > 0 and self.value_clip > 0, "--clip and --value_clip must be > 0")
        check(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "--gamma and --lam must be in [0, 1]")
        check(0 < self.adam_beta2 < 1, f"--adam_beta2 must be in (0, 1), got {self.adam_beta2}")
        check(self.kl_target > 0 and self.kl_horizon > 0, "--kl_target and --kl_horizon must be > 0")
        check(self.max_kl > 0 and self.kl_budget > 0, "--max_kl and --kl_budget must be > 0")

    @property
    def responses_per_iteration(self):
        return self.batch_size * (self.group_size if self.algo == "grpo" else 1)


# ---- the pieces of one iteration (each used by main and by tests/test_train_ppo.py) -------------------------
# The rollout, and the per-token log-probs, values and scores read from it, are in minigpt/rollout.py.

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


def ppo_loss(policy, value_model, mb, cfg):
    """Clipped surrogate + cfg.vf_coef * clipped value loss on one minibatch -> (loss, stats); no entropy
    bonus (detail 10). mb holds the rollout's logprobs, values, advantages and returns for its rows.
    GRPO (value_model None): the clipped surrogate + mb["kl_coef"] * the k3 KL to the reference, per token."""
    logprobs = response_logprobs(policy, mb, cfg.temperature)                 # (b, N) with gradients
    pg_loss, stats = policy_loss(logprobs, mb["logprobs"], mb["advantages"], mb["mask"], cfg.clip)  # ε = 0.2
    log_ratio = torch.where(mb["mask"].bool(), logprobs.detach() - mb["logprobs"], torch.zeros_like(logprobs))
    stats.update(pg_loss=pg_loss.item(), max_abs_log_ratio=log_ratio.abs().max().item())
    if value_model is None:
        # GRPO: L = L_clip + β · mean_t k3_t,  k3_t = π_ref/π − log(π_ref/π) − 1 (≥ 0), on the policy's own
        # samples. PPO instead subtracts β·(log π − log π_ref) from the reward, and GAE carries it to every token.
        # Both terms are means over all tokens of the minibatch, as for PPO here; the GRPO paper averages each
        # response's tokens first, which gives a short response's tokens more weight.
        kl_loss = masked_mean(k3_kl(logprobs, mb["ref_logprobs"]), mb["mask"])
        stats.update(kl_loss=kl_loss.item())
        return pg_loss + mb["kl_coef"] * kl_loss, stats
    values = response_values(value_model, mb)                                 # (b, N) with gradients
    vf_loss, vf_clipfrac = value_loss(values, mb["values"], mb["returns"], mb["mask"], cfg.value_clip)
    stats.update(vf_loss=vf_loss.item(), vf_clipfrac=vf_clipfrac)
    # The value network here is separate, with its own Adam: Adam divides out a constant gradient scale, so the
    # 0.1 of detail 10 (made for a value head sharing the policy's trunk) matters only through gradient clipping.
    return pg_loss + cfg.vf_coef * vf_loss, stats


def average_gradients(model):
    """Data parallel by hand: each rank rolled out its own prompts; the gradient is the mean over ranks."""
    if is_distributed():
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def ppo_update(policy, value_model, policy_optimizer, value_optimizer, batch, cfg, generator,
               ptx_tokens=None, guard=None):
    """cfg.ppo_epochs passes over the rollout batch in shuffled minibatches (detail 11) -> list of per-step stats.

    PPO-ptx: when cfg.ptx_coef > 0, each step also adds γ · (next-token loss on pretraining windows), its
    gradient accumulated with PPO's (InstructGPT)."""
    B = batch["response"].shape[0]
    block_size = policy.config.block_size
    all_stats = []
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator)                        # shuffled minibatches
        for start in range(0, B, cfg.minibatch_size):
            rows = order[start: start + cfg.minibatch_size]
            mb = {k: (v[rows] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == B else v) for k, v in batch.items()}
            device = mb["response"].device
            with autocast(str(device), cfg.dtype):
                loss, stats = ppo_loss(policy, value_model, mb, cfg)
            if epoch == 0 and start == 0 and cfg.debug:                      # detail 13: nothing has moved yet
                assert stats["max_abs_log_ratio"] < 1e-5, f"ratio != 1 on the first minibatch: {stats}"
            if cfg.ptx_coef > 0:
                x, y = (t.to(mb["response"].device) for t in lm_windows(ptx_tokens, block_size, cfg.ptx_batch_size, generator))
                with autocast(str(device), cfg.dtype):
                    ptx_loss = sft_loss(policy(x), y, torch.ones_like(y))     # -(1/N) Σ log π(x_{t+1} | x_≤t)
                loss = loss + cfg.ptx_coef * ptx_loss                        # objective's γ · E[log π_RL(x)] term
                stats["ptx_loss"] = ptx_loss.item()
            loss.backward()
            models = [m for m in (policy, value_model) if m is not None]       # GRPO has no value model
            optimizers = [o for o in (policy_optimizer, value_optimizer) if o is not None]
            for m in models:
                average_gradients(m)
            if cfg.grad_clip > 0:
                stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip).item()
                if value_model is not None:
                    torch.nn.utils.clip_grad_norm_(value_model.parameters(), cfg.grad_clip)
            if guard is None or all(guard.ok(loss.detach(), m) for m in models):
                for o in optimizers:                                          # non-finite loss -> step skipped
                    o.step()
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            all_stats.append(stats)
    return all_stats


@torch.no_grad()
def pretrain_loss(policy, tokens, n_batches=4, batch_size=16):
    """Next-token loss on held-out pretraining text (fixed windows): the 'alignment tax' PPO-ptx limits."""
    g, device = torch.Generator().manual_seed(0), next(policy.parameters()).device
    losses = [sft_loss(policy(x.to(device)), y.to(device), torch.ones_like(y, device=device)).item()
              for x, y in (lm_windows(tokens, policy.config.block_size, batch_size, g) for _ in range(n_batches))]
    return sum(losses) / len(losses)


@torch.no_grad()
def validate(policy, reference, reward_model, tokenizer, world, tasks, cfg):
    """What a practitioner can measure on held-out prompts: RM score and KL to the SFT model. Sampled with the
    same noise every time (a fixed generator), so evaluations differ by the policy, not by luck. The gold score
    is computed for the report only; selection never looks at it."""
    noise = torch.Generator(device=next(policy.parameters()).device).manual_seed(cfg.seed)
    batch = rollout(policy, tokenizer, tasks, cfg.max_new_tokens, cfg.temperature, noise)
    scores, _ = score(reward_model, tokenizer, batch, cfg.no_eos_penalty)
    kl = (response_logprobs(policy, batch, cfg.temperature) - response_logprobs(reference, batch, cfg.temperature))
    return dict(val_rm_score=scores.mean().item(), val_kl=(kl * batch["mask"]).sum(1).mean().item(),
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


def main(cfg):
    check_out_dir(cfg.out_dir, cfg.resume, cfg.force)
    rank, world_size, device = setup_distributed(pick_device(cfg.device))
    master = rank == 0
    torch.manual_seed(cfg.seed)
    resume = load_checkpoint(os.path.join(cfg.out_dir, "last.pt")) if cfg.resume else None

    # ---- four models (detail 1) ----
    policy, tokenizer, _ = load_model(cfg.sft, "lm", device)                   # π_RL, starts as π_SFT
    reward_model, rm_tokenizer, _ = load_model(cfg.rm, "reward", device)       # r_θ, frozen
    check_same_tokenizer(tokenizer, rm_tokenizer, cfg.sft, cfg.rm)
    reference = copy.deepcopy(policy).requires_grad_(False)                    # π_SFT, frozen
    reward_model.requires_grad_(False)
    grpo = cfg.algo == "grpo"
    G = cfg.group_size if grpo else 1                                          # responses per prompt
    value_model = None if grpo else copy.deepcopy(reward_model).requires_grad_(True)  # V starts as the RM
    for model in (policy, reference, reward_model, value_model):
        if model is not None:
            model.eval()                                                       # dropout off everywhere (detail 14)
    if policy.config.block_size <= cfg.max_new_tokens:
        raise UserError(f"--max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in block_size "
                        f"{policy.config.block_size}")
    # Adam eps 1e-5 (detail 17); betas (0.9, β2) spelled out: a (β1, β1) typo is a known bug. No weight decay:
    # the KL penalty, not decay towards zero, is what keeps the policy near the SFT model.
    betas = (0.9, cfg.adam_beta2)
    policy_optimizer = make_adamw(policy, cfg.lr, weight_decay=0.0, betas=betas, eps=1e-5)
    value_optimizer = None if grpo else make_adamw(value_model, cfg.value_lr, weight_decay=0.0, betas=betas, eps=1e-5)
    if cfg.adaptive_kl:
        kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)  # detail 6
    else:
        kl_ctl = FixedKLController(cfg.kl_coef)

    # ---- prompts: the world's 'ppo' split, some held out for checkpoint selection (never the test split) ----
    world = World(cfg.world_seed)
    tasks = list(world.split("ppo"))
    random.Random(cfg.world_seed).shuffle(tasks)
    if len(tasks) < cfg.val_prompts + cfg.batch_size:
        raise UserError(f"the world has {len(tasks)} ppo prompts: too few for --val_prompts={cfg.val_prompts} "
                        f"+ --batch_size={cfg.batch_size}")
    val_tasks, train_tasks = tasks[:cfg.val_prompts] * cfg.val_samples, tasks[cfg.val_prompts:]
    pretrain_val_tokens = torch.tensor(tokenizer.encode(world.corpus_val()), dtype=torch.long)
    ptx_tokens = torch.tensor(tokenizer.encode(world.corpus()), dtype=torch.long) if cfg.ptx_coef > 0 else None
    dtype = resolve_dtype(cfg.dtype, device)
    if master:
        print(f"dtype: {dtype}")
        value = "no value model (GRPO)" if grpo else f"value {value_model.gpt.num_params() / 1e6:.2f}M from {cfg.rm}"
        print(f"models: policy {policy.num_params() / 1e6:.2f}M from {cfg.sft}, {value}; {len(train_tasks)} "
              f"training prompts, {len(val_tasks)} validation responses ({cfg.val_prompts} prompts x {cfg.val_samples})")

    iteration, elapsed_before = 0, 0.0
    best = dict(iteration=-1, val_rm_score=-math.inf)
    if resume:
        load_resumed(policy, resume["policy"], os.path.join(cfg.out_dir, "last.pt"))
        policy_optimizer.load_state_dict(resume["policy_optimizer"])
        if not grpo:
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
            **({} if grpo else {"value": model_state(value_model), "value_optimizer": value_optimizer.state_dict()}),
            "kl_coef": kl_ctl.value, "iteration": iteration, "best": best, "rng": rng_state(),
            "elapsed_s": elapsed_before + time.time() - start_time, "config": config_dict(cfg)})
            # prompt order and sampling noise are functions of (seed, iteration): see prompts_for_iteration

    def evaluate_and_select():
        """Validation RM score within the KL budget picks model.pt (never the gold score)."""
        with autocast(device, dtype):
            val = validate(policy, reference, reward_model, tokenizer, world, val_tasks, cfg)
            val["pretrain_val_loss"] = pretrain_loss(policy, pretrain_val_tokens)
        log.log(step=iteration, **val)
        chosen = val["val_kl"] <= cfg.kl_budget and val["val_rm_score"] > best["val_rm_score"]
        if chosen:
            best.update(iteration=iteration, **val)
            if master:
                save_model(cfg.out_dir, policy, tokenizer, "lm", cfg, iteration)
        if master:
            print(f"iteration {iteration}: validation RM score {val['val_rm_score']:+.3f} | KL {val['val_kl']:.2f} nats | "
                  f"gold {val['val_gold']:.3f} | eos {val['val_eos_rate']:.2f} | pretraining loss "
                  f"{val['pretrain_val_loss']:.3f}{' | selected' if chosen else ''}", flush=True)
            save_last()

    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        write_json(os.path.join(cfg.out_dir, "config.json"), config_dict(cfg))
    log = MetricsLog(os.path.join(cfg.out_dir, "metrics.jsonl"), enabled=master, resume_step=iteration if resume else None)
    progress = Progress(cfg.iterations, enabled=master, start_step=iteration)
    guard = NonFiniteGuard()
    start_time = time.time()
    stopped = None
    global_batch = cfg.batch_size * world_size
    if not resume:
        evaluate_and_select()                                                  # iteration 0 = the SFT model itself

    # ---- the RL loop ----
    try:
        while iteration < cfg.iterations:
            t0 = time.time()
            # 1. Rollout: this rank's prompts, responses sampled at temperature T with the KV cache (GRPO: G each)
            picked = prompts_for_iteration(len(train_tasks), iteration, global_batch, rank, world_size, cfg.seed)
            sampler = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + iteration * world_size + rank)
            with autocast(device, dtype):
                batch = rollout(policy, tokenizer, [train_tasks[i] for i in picked for _ in range(G)],
                                cfg.max_new_tokens, cfg.temperature, sampler)
            mask = batch["mask"]                                               # (B, N) 1 on response tokens incl. eos
            with torch.no_grad(), autocast(device, dtype):                     # the frozen forwards, batched
                logprobs, logits = response_logprobs(policy, batch, cfg.temperature, with_logits=True)  # π_old (detail 12)
                ref_logprobs = response_logprobs(reference, batch, cfg.temperature)                        # π_ref, same T
                values = None if grpo else response_values(value_model, batch)                             # V(s_t), (B, N)
                entropy = entropy_from_logits(logits.float() / cfg.temperature, mask).item()
                logprob_gap = torch.where(mask.bool(), logprobs - batch["sample_logprobs"], 0.0).abs().max().item()
                if cfg.debug:                                                  # rollout and scoring see one distribution
                    # (bf16: the KV cache's one-token steps and the full forward round differently, ~1e-2)
                    assert logprob_gap < (1e-4 if dtype == "float32" else 0.1), f"recomputed log-probs differ from sampled ones by {logprob_gap}"

                # 2. Reward: RM score at the last real token, −β·(log π − log π_ref) on every response token
                scores, rm_scores = score(reward_model, tokenizer, batch, cfg.no_eos_penalty)          # (B,)
                rewards, kl = kl_penalty_rewards(logprobs, ref_logprobs, scores, mask, 0.0 if grpo else kl_ctl.value)

                # 3. Advantages. PPO: GAE (γ=1, λ=0.95) over response tokens, whitened over all ranks' batch.
                # GRPO: each response's score against its group's, on every one of its tokens; β·k3 goes in the loss.
                if grpo:
                    advantages, returns = group_advantages(scores, G)[:, None] * mask, None               # (B, N)
                else:
                    advantages, returns = compute_advantages(rewards, values, mask, cfg.gamma, cfg.lam)
            batch.update(logprobs=logprobs, ref_logprobs=ref_logprobs, values=values, advantages=advantages,
                         returns=returns, kl_coef=kl_ctl.value)

            # 4. Update: clipped PPO on policy and value, several epochs of shuffled minibatches (+ PPO-ptx)
            shuffler = torch.Generator().manual_seed(cfg.seed * 1000 + iteration * world_size + rank + 7)
            steps = ppo_update(policy, value_model, policy_optimizer, value_optimizer, batch, cfg, shuffler, ptx_tokens, guard)
            iteration += 1

            # 5. Log; the KL controller moves β after seeing this batch's KL (all ranks' mean)
            kl_per_response = (kl * mask).sum(1)                               # (B,) Σ_t log π − log π_ref
            row = {k: all_reduce_mean(v) for k, v in dict(
                score=scores.mean().item(), rm_score=rm_scores.mean().item(),
                gold=sum(world.gold_score(t, r) for t, r in zip(batch["tasks"], batch["texts"])) / len(batch["texts"]),  # watching only
                kl=kl_per_response.mean().item(), non_score_reward=-kl_ctl.value * kl_per_response.mean().item(),
                kl_k3=(k3_kl(logprobs, ref_logprobs) * mask).sum(1).mean().item(),   # the same KL, an estimator >= 0
                entropy=entropy, length=mask.sum(1).float().mean().item(), eos_rate=batch["eos"].float().mean().item(),
                logprob_gap=logprob_gap,
                # GRPO has no value model, so no value statistics (they would read nan)
                **({} if grpo else dict(explained_variance=explained_variance(values, returns, mask))),
                **{k: sum(s[k] for s in steps) / len(steps) for k in steps[0] if k != "max_abs_log_ratio"},
                first_minibatch_log_ratio=steps[0]["max_abs_log_ratio"]).items()}   # 0: ratio exactly 1 (detail 13)
            row.update(step=iteration, kl_coef=kl_ctl.value, episodes=iteration * global_batch * G,
                       iteration_s=time.time() - t0, seconds=elapsed_before + time.time() - start_time)
            log.log(**row)
            kl_ctl.update(row["kl"], global_batch * G)
            if iteration % cfg.log_interval == 0 and master:
                progress.line(iteration, int(mask.sum()) * world_size, rm=row["rm_score"], gold=row["gold"], kl=row["kl"],
                              beta=row["kl_coef"], ent=row["entropy"], len=row["length"], eos=row["eos_rate"],
                              clip=row["clipfrac"], **({} if grpo else dict(ev=row["explained_variance"])))
            if master and cfg.sample_interval and iteration % cfg.sample_interval == 0:
                for t, r, s in list(zip(batch["tasks"], batch["texts"], scores.tolist()))[:3]:
                    print(f"  > {t.instruction[:70]!r}\n    {r[:100]!r}  (RM {s:+.2f}, gold {world.gold_score(t, r):.2f})")
            if row["kl"] > cfg.max_kl:                                         # KL explosion: stop, keep the selected model
                stopped = (f"KL to the SFT model reached {row['kl']:.1f} nats per response (> --max_kl={cfg.max_kl}) "
                           f"at iteration {iteration}: stopped; lower --lr or raise --kl_coef")
                print(f"warning: {stopped}", file=sys.stderr)
            if iteration % cfg.eval_interval == 0 or iteration == cfg.iterations or stopped:
                evaluate_and_select()
            if stopped:
                break
    except KeyboardInterrupt:
        if master:
            save_last()
            print(f"\ninterrupted: saved {cfg.out_dir}/last.pt at iteration {iteration}; rerun with --resume to continue")
        cleanup_distributed()
        sys.exit(130)

    if master:
        rows = read_metrics(os.path.join(cfg.out_dir, "metrics.jsonl"))
        train_rows = [r for r in rows if "rm_score" in r]
        val_rows = [r for r in rows if "val_kl" in r]                       # in iteration order: a path, not a curve
        plot_metrics(os.path.join(cfg.out_dir, "ppo.png"), train_rows, "step",
                     {"reward": ["rm_score", "score"], "gold (watching only)": ["gold"], "KL to SFT (nats)": ["kl"],
                      "response length": ["length"]}, title="PPO rollouts by iteration")
        # Where the policy went: proxy (RM) and gold score against KL, point by point in iteration order. Pushed
        # too far (Gao et al. 2022) the proxy keeps rising while gold turns down; whether it does here, the plot shows.
        # The KL is a 256-sample estimate (mean of log π − log π_SFT), so near 0 it can come out slightly negative.
        plot_metrics(os.path.join(cfg.out_dir, "proxy_vs_gold.png"), val_rows, "val_kl",
                     {"RM score (proxy)": ["val_rm_score"], "gold score": ["val_gold"]},
                     title="validation prompts, in iteration order: scores against KL to the SFT model (nats)")
        write_json(os.path.join(cfg.out_dir, "summary.json"), {
            "selected_iteration": best["iteration"], "val_rm_score": best["val_rm_score"],
            "val_kl": best.get("val_kl"), "val_gold": best.get("val_gold"),
            "pretrain_val_loss": best.get("pretrain_val_loss"), "kl_coef": cfg.kl_coef, "final_kl_coef": kl_ctl.value,
            "ptx_coef": cfg.ptx_coef, "algo": cfg.algo, "iterations": iteration,
            "episodes": iteration * global_batch * G,
            "seconds": elapsed_before + time.time() - start_time, "skipped_steps": guard.skipped, "stopped": stopped,
            "dtype": dtype})
        print(f"done: selected iteration {best['iteration']} (validation RM score {best['val_rm_score']:+.3f}, "
              f"KL {best.get('val_kl', 0):.2f} nats); weights in {cfg.out_dir}/model.pt")
    cleanup_distributed()


if __name__ == "__main__":
    run(main, Config)
