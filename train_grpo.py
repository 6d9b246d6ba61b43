"""After InstructGPT: GRPO (Shao et al. 2024, DeepSeekMath): PPO without a value model, same reward model.

PPO (train_ppo.py) needs a value model V(s_t) to say how much better than expected each token turned out. GRPO
samples G responses to each prompt instead and lets the group be the baseline:

    A_i = (R_i − mean(R_1..R_G)) / std(R_1..R_G)          the same advantage for every token of response i
    (--baseline=rloo: A_i = R_i − mean of the other G−1 scores, RLOO's leave-one-out baseline, not scaled)

    L(θ) = −E_t[ min(ρ_t·A_t, clip(ρ_t, 1−ε, 1+ε)·A_t) ] + β · E_t[ k3_t ]
    ρ_t = π_θ(a_t|s_t) / π_old(a_t|s_t)
    k3_t = π_ref/π_θ − log(π_ref/π_θ) − 1    (≥ 0: an estimator of KL(π_θ ‖ π_ref)
                                               from the policy's own samples)

The KL to the reference is a term of the loss, not subtracted from the reward as in PPO. With A = R (no
baseline, no normalising) the gradient at ρ = 1 is the seed policy gradient E[∇log π · R], as PPO's is.
Three models: the policy (starts as the SFT model, trained), the reference (a frozen copy of it) and the
reward model (frozen). The rollout, the scores, the validation and the losses are the ones train_ppo.py uses
(minigpt/rollout.py, minigpt/scoring.py, minigpt/ppo.py); only the advantage and the KL's place differ.

    python train_grpo.py                                      # out/sft + out/rm -> out/grpo: 32 prompts x 4
                                                              # samples per iteration, about 50 s
    torchrun --standalone --nproc_per_node=2 train_grpo.py    # each process rolls out its own prompts
"""

import copy
import math
import os
import time
from dataclasses import dataclass, field

import torch

from minigpt.checkpoint import (check_same_tokenizer, config_dict, load_model, load_resumed, model_state,
                                rng_state, save_checkpoint, set_rng_state)
from minigpt.cli import UserError, check, run
from minigpt.ppo import (entropy_from_logits, group_advantages, k3_kl, masked_mean, policy_loss,
                         rloo_advantages)
from minigpt.rollout import (REWARDS, finish_run, iteration_seeds, iteration_stats, kl_explosion, minibatch,
                             print_samples, prompts_for_iteration, rollout, score, split_prompts,
                             validate_and_select)
from minigpt.scoring import NO_EOS_PENALTY, response_logprobs
from minigpt.training import (autocast, average_gradients, check_dtype, cleanup_distributed, exit_interrupted,
                              make_adamw, open_stage, resolve_dtype, start_stage, step_optimizers)
from minigpt.world import World


# --baseline: what each response's score is measured against (minigpt/ppo.py)
BASELINES = {"group": group_advantages, "rloo": rloo_advantages}


@dataclass
class Config:
    out_dir: str = field(default="out/grpo", metadata={"help": "stage folder to write"})
    sft: str = field(default="out/sft", metadata={
        "help": "SFT stage folder: the policy's start and the frozen reference"})
    rm: str = field(default="out/rm", metadata={"help": "reward model stage folder (frozen)"})
    world_seed: int = field(default=0, metadata={
        "help": "seed of the built-in instruction world (its 'ppo' prompts)"})
    seed: int = field(default=1337, metadata={"help": "seed for sampling, prompt order and minibatches"})
    group_size: int = field(default=4, metadata={
        "help": "G: responses sampled per prompt, the group baseline"})
    baseline: str = field(default="group", metadata={
        "help": "group (GRPO: (R_i - the group's mean) / its std) or rloo (RLOO: R_i - the mean of the "
                "other G-1, not scaled)"})
    # rollouts
    iterations: int = field(default=30, metadata={"help": "rollout + update rounds"})
    # 32 prompts (128 answers) an iteration: on world 0's dev split, three seeds each, the gain over SFT rose
    # from +0.065..+0.076 with 16 prompts to +0.080..+0.094 (docs/defaults_history.md), in 50 s instead of 42
    batch_size: int = field(default=32, metadata={"help": "prompts rolled out per iteration per process, "
                                                          "each --group_size times"})
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
    kl_coef: float = field(default=0.2, metadata={"help": "beta, the weight of the per-token k3 KL to the "
                                                          "SFT model in the loss"})
    # update
    epochs: int = field(default=2, metadata={"help": "passes over each rollout batch"})
    minibatch_size: int = field(default=32, metadata={"help": "responses per gradient step (divides "
                                                              "the batch_size x group_size "
                                                              "responses of an iteration)"})
    # GRPO optimises the reward model faster than PPO (its baseline is the mean reward of the prompt's 4
    # samples, its own included, not a learnt value), into its holes too: at PPO's lr 1e-4 gold fell after
    # ~15 iterations (seed 2: test gold 0.27, answers collapsing to "0"); lr 3e-5 and 30 iterations stop
    # short of that.
    lr: float = field(default=3e-5, metadata={"help": "policy learning rate (constant)"})
    clip: float = field(default=0.2, metadata={"help": "ratio clip epsilon"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm (0 = off)"})
    adam_beta2: float = field(default=0.95, metadata={"help": "Adam beta2 (beta1 is 0.9)"})
    # selection and safety
    val_prompts: int = field(default=64, metadata={
        "help": "ppo prompts held out to select the checkpoint by RM score"})
    val_samples: int = field(default=4, metadata={"help": "responses sampled per validation prompt"})
    val_tokens: int = field(default=16384, metadata={
        "help": "tokens of held-out pretraining text for pretrain_val_loss (minigpt.scoring.heldout_loss)"})
    kl_budget: float = field(default=10.0, metadata={
        "help": "select only checkpoints whose validation KL is below this, nats"})
    max_kl: float = field(default=50.0, metadata={
        "help": "stop if the rollout KL per response exceeds this, nats"})
    eval_interval: int = field(default=5, metadata={"help": "iterations between validation + checkpoint"})
    log_interval: int = field(default=1, metadata={"help": "iterations between progress lines"})
    sample_interval: int = field(default=20, metadata={"help": "iterations between printed sample responses "
                                                               "(0 = never)"})
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
        for key in ("iterations", "batch_size", "group_size", "max_new_tokens", "epochs", "minibatch_size",
                    "eval_interval", "log_interval", "val_prompts", "val_samples", "val_tokens"):
            check(getattr(self, key) > 0, f"--{key} must be > 0, got {getattr(self, key)}")
        responses = self.batch_size * self.group_size
        check(responses % self.minibatch_size == 0,
              f"--minibatch_size ({self.minibatch_size}) must divide the "
              f"{responses} responses of an iteration (--batch_size x --group_size)")
        check(self.temperature > 0,
              f"--temperature must be > 0 (log-probs need a distribution), got {self.temperature}")
        check(self.lr > 0, "--lr must be > 0")
        check(self.kl_coef >= 0, "--kl_coef must be >= 0")
        check(self.baseline in BASELINES, f"--baseline must be group or rloo, got {self.baseline!r}")
        check(self.baseline == "group" or self.group_size >= 2, "--baseline=rloo needs --group_size >= 2")
        check(self.clip > 0, "--clip must be > 0")
        check(0 < self.adam_beta2 < 1, f"--adam_beta2 must be in (0, 1), got {self.adam_beta2}")
        check(self.max_kl > 0 and self.kl_budget > 0, "--max_kl and --kl_budget must be > 0")


# ---- the loss and the update (each used by main and by tests/test_train_grpo.py) ---------------------------

# ======== read this first: the GRPO update: clipped ratio + β·k3 KL to the reference, minibatches ========
def grpo_loss(policy, mb, cfg):
    """Clipped surrogate + cfg.kl_coef * the k3 KL to the reference on one minibatch -> (loss, stats).

    L = L_clip + β · mean_t k3_t, on the policy's own samples. PPO instead subtracts
    β·(log π − log π_ref) from the reward, and GAE carries it to every token. Both terms are means over
    all tokens of the minibatch, as PPO's are here; the GRPO paper averages each response's tokens first,
    which gives a short response's tokens more weight."""
    logprobs = response_logprobs(policy, mb, cfg.temperature)                 # (b, N) with gradients
    pg_loss, stats = policy_loss(logprobs, mb["logprobs"], mb["advantages"], mb["mask"], cfg.clip)
    log_ratio = torch.where(mb["mask"].bool(), logprobs.detach() - mb["logprobs"], torch.zeros_like(logprobs))
    kl_loss = masked_mean(k3_kl(logprobs, mb["ref_logprobs"]), mb["mask"])
    stats.update(pg_loss=pg_loss.item(), max_abs_log_ratio=log_ratio.abs().max().item(),
                 kl_loss=kl_loss.item())
    return pg_loss + cfg.kl_coef * kl_loss, stats


# what grpo_loss reads of each minibatch's rows (the rollout's prompt width P rides along)
MINIBATCH_KEYS = ("query_response", "attention_mask", "position_ids", "response", "mask", "logprobs",
                  "ref_logprobs", "advantages")


def grpo_update(policy, optimizer, batch, cfg, generator, guard=None):
    """cfg.epochs passes over the rollout batch in shuffled minibatches -> list of per-step stats."""
    B = batch["response"].shape[0]
    all_stats = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(B, generator=generator)                      # shuffled minibatches
        for start in range(0, B, cfg.minibatch_size):
            mb = minibatch(batch, order[start: start + cfg.minibatch_size], MINIBATCH_KEYS)
            with autocast(str(mb["response"].device), cfg.dtype):
                loss, stats = grpo_loss(policy, mb, cfg)
            if epoch == 0 and start == 0 and cfg.debug:                     # nothing has moved yet: ratio 1
                assert stats["max_abs_log_ratio"] < 1e-5, f"ratio != 1 on the first minibatch: {stats}"
            loss.backward()
            average_gradients(policy)                                       # data parallel by hand (see main)
            grad_norm = step_optimizers(loss, [policy], [optimizer], cfg.grad_clip, guard)
            if grad_norm is not None:
                stats["grad_norm"] = grad_norm
            all_stats.append(stats)
    return all_stats
# ======== end of read this first ========


def main(cfg):
    # Data parallel: gradients averaged by hand (minigpt.training.average_gradients), as in train_ppo.py: each
    # rank rolls out its own prompts and the loss reads the policy through trunk() and lm_head, not forward().
    rank, world_size, device, resume = start_stage(cfg)
    master = rank == 0

    # ---- three models: no value model ----
    policy, tokenizer, _ = load_model(cfg.sft, "lm", device)                   # π_θ, starts as π_SFT
    reward_model, rm_tokenizer, _ = load_model(cfg.rm, "reward", device)       # r_θ, frozen
    check_same_tokenizer(tokenizer, rm_tokenizer, cfg.sft, cfg.rm)
    reference = copy.deepcopy(policy).requires_grad_(False)                    # π_SFT, frozen
    reward_model.requires_grad_(False)
    for model in (policy, reference, reward_model):
        model.eval()                                                           # dropout off everywhere
    if policy.config.block_size <= cfg.max_new_tokens:
        raise UserError(f"--max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in block_size "
                        f"{policy.config.block_size}")
    # Adam eps 1e-5 and no weight decay, as PPO: the KL term, not decay towards zero, keeps π near π_SFT
    optimizer = make_adamw(policy, cfg.lr, weight_decay=0.0, betas=(0.9, cfg.adam_beta2), eps=1e-5)
    G = cfg.group_size

    # ---- prompts: the world's 'ppo' split, some held out for checkpoint selection (not the test split) ----
    world = World(cfg.world_seed)
    val_tasks, train_tasks = split_prompts(world, cfg)
    pretrain_val_tokens = torch.tensor(tokenizer.encode(world.corpus_val()), dtype=torch.long)
    dtype = resolve_dtype(cfg.dtype, device)
    if master:
        print(f"dtype: {dtype}")
        print(f"models: policy {policy.num_params() / 1e6:.2f}M from {cfg.sft}, no value model; "
              f"{len(train_tasks)} training prompts, {G} samples each per iteration; {len(val_tasks)} "
              f"validation responses ({cfg.val_prompts} prompts x {cfg.val_samples})")

    iteration, elapsed_before = 0, 0.0
    best = dict(iteration=-1, val_rm_score=-math.inf)
    if resume:
        load_resumed(policy, resume["policy"], os.path.join(cfg.out_dir, "last.pt"))
        optimizer.load_state_dict(resume["policy_optimizer"])
        set_rng_state(resume["rng"])
        iteration, best, elapsed_before = resume["iteration"], resume["best"], resume["elapsed_s"]
        if master:
            print(f"resumed from {cfg.out_dir}/last.pt at iteration {iteration}")

    def save_last():
        save_checkpoint(os.path.join(cfg.out_dir, "last.pt"), {
            "policy": model_state(policy), "policy_optimizer": optimizer.state_dict(), "iteration": iteration,
            "best": best, "rng": rng_state(), "elapsed_s": elapsed_before + time.time() - start_time,
            "config": config_dict(cfg)})     # prompt order and sampling noise: functions of (seed, iteration)

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
            # 1. Rollout: this rank's prompts, each sampled G times at temperature T with the KV cache
            picked = prompts_for_iteration(len(train_tasks), iteration, global_batch, rank, world_size,
                                           cfg.seed)
            sample_seed, shuffle_seed = iteration_seeds(cfg.seed, iteration, rank, world_size)
            sampler = torch.Generator(device=device).manual_seed(sample_seed)
            batch_tasks = [train_tasks[i] for i in picked for _ in range(G)]  # a group's samples side by side
            with autocast(device, dtype):
                batch = rollout(policy, tokenizer, [t.prompt for t in batch_tasks], cfg.max_new_tokens,
                                cfg.temperature, sampler)
            mask = batch["mask"]                                       # (B, N) 1 on response tokens incl. eos
            with torch.no_grad(), autocast(device, dtype):             # the frozen forwards, batched
                # π_old and π_ref at the same T: each (B, N)
                logprobs, logits = response_logprobs(policy, batch, cfg.temperature, with_logits=True)
                ref_logprobs = response_logprobs(reference, batch, cfg.temperature)
                entropy = entropy_from_logits(logits.float() / cfg.temperature, mask).item()
                gap = torch.where(mask.bool(), logprobs - batch["sample_logprobs"], 0.0)
                logprob_gap = gap.abs().max().item()
                # debug: rollout and scoring see one distribution
                if cfg.debug:
                    assert logprob_gap < (1e-4 if dtype == "float32" else 0.1), \
                        f"recomputed log-probs differ from sampled ones by {logprob_gap}"

                # 2. Reward: the RM score of each whole response (no KL in it: the KL is in the loss)
                scores, rm_scores = score(reward_model, tokenizer, batch, cfg.no_eos_penalty,
                                          cfg.reward)                                     # (B,)

                # 3. Advantages: each response's score against its group's, on every one of its tokens
                advantages = BASELINES[cfg.baseline](scores, G)[:, None] * mask                   # (B, N)
            batch.update(logprobs=logprobs, ref_logprobs=ref_logprobs, advantages=advantages)

            # 4. Update: the clipped surrogate + β·k3, several epochs of shuffled minibatches
            shuffler = torch.Generator().manual_seed(shuffle_seed)
            steps = grpo_update(policy, optimizer, batch, cfg, shuffler, guard)
            iteration += 1

            # 5. Log (all ranks' means)
            kl_per_response = ((logprobs - ref_logprobs) * mask).sum(1)  # (B,) Σ_t log π − log π_ref
            row = iteration_stats(world, batch_tasks, batch, scores, rm_scores, logprobs, ref_logprobs,
                                  kl_per_response, cfg.kl_coef, entropy, logprob_gap, steps)
            row.update(step=iteration, kl_coef=cfg.kl_coef, episodes=iteration * global_batch * G,
                       iteration_s=time.time() - t0, seconds=elapsed_before + time.time() - start_time)
            log.log(**row)
            if iteration % cfg.log_interval == 0 and master:
                progress.line(iteration, int(mask.sum()) * world_size, rm=row["rm_score"], gold=row["gold"],
                              kl=row["kl"], beta=row["kl_coef"], ent=row["entropy"], len=row["length"],
                              eos=row["eos_rate"], clip=row["clipfrac"])
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
            kl_coef=cfg.kl_coef, algo="grpo", reward=cfg.reward, group_size=G, iterations=iteration,
            episodes=iteration * global_batch * G, seconds=elapsed_before + time.time() - start_time,
            skipped_steps=guard.skipped, stopped=stopped, dtype=dtype))
    cleanup_distributed()


if __name__ == "__main__":
    run(main, Config)
