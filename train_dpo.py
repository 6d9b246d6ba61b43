"""After InstructGPT: Direct Preference Optimisation (Rafailov et al. 2023), on the same comparisons.

PPO maximises r(x, y) − β·KL(π || π_SFT) with a reward model and sampling. That objective has a closed-form
optimum, π*(y|x) = π_SFT(y|x)·exp(r(x, y)/β) / Z(x), so a reward is implied by a policy:

    r(x, y) = β·log(π*(y|x) / π_SFT(y|x)) + β·log Z(x)

Put that reward into the reward model's Bradley–Terry loss, −log σ(r(x, y_w) − r(x, y_l)): log Z(x) cancels
within a pair, and what is left trains the policy directly on the comparisons, with no reward model and no
sampling (minigpt.losses.dpo_loss):

    loss(π) = −log σ( β·[(log π(y_w|x) − log π_SFT(y_w|x)) − (log π(y_l|x) − log π_SFT(y_l|x))] )

Each ranking of K responses gives all its C(K,2) pairs, averaged as ONE batch element (as train_rm.py does).
The reference (the frozen SFT model) is read once, before training. r̂ = β·log(π/π_SFT), the implicit reward,
is a reward model that lives in the language-model head; its held-out pair accuracy is reported like the RM's.

    python train_dpo.py                        # out/sft + out/labels -> out/dpo, about a minute on 2 cores
    python train_dpo.py --data=pairs.jsonl     # any preference file train_rm.py reads
    torchrun --standalone --nproc_per_node=2 train_dpo.py
"""

import functools
import math
import os
import time
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from minigpt.checkpoint import (config_dict, load_model, load_resumed, model_state, rng_state,
                                save_checkpoint, save_model, set_rng_state, write_json)
from minigpt.cli import UserError, check, run
from minigpt.data import encode_rankings, epoch_batches
from minigpt.rankings import load_rankings
from minigpt.evaluation import ranking_report
from minigpt.losses import dpo_loss
from minigpt.rollout import rollout
from minigpt.sampling import right_pad
from minigpt.scoring import rollout_kl, sequence_logprobs
from minigpt.training import (all_reduce_mean, autocast, check_dtype, cleanup_distributed, cosine_lr,
                              exit_interrupted, make_adamw, open_stage, plot_metrics, read_metrics,
                              resolve_dtype, set_lr, start_stage, step_optimizers)


@dataclass
class Config:
    out_dir: str = field(default="out/dpo", metadata={"help": "stage folder to write"})
    sft: str = field(default="out/sft", metadata={
        "help": "SFT stage folder: the policy's start and the frozen reference"})
    labels: str = field(default="out/labels", metadata={
        "help": "label.py's folder: train.jsonl and val.jsonl"})
    data: str = field(default="", metadata={
        "help": "a preference file instead of --labels (any format train_rm.py reads; several "
                "comma-separated are read as one)"})
    val_data: str = field(default="", metadata={
        "help": "held-out comparisons for --data (empty = hold out --val_fraction)"})
    val_fraction: float = field(default=0.15, metadata={
        "help": "share of --data held out when no --val_data"})
    max_chars: int = field(default=2000, metadata={"help": "drop --data rankings whose prompt and longest "
                                                         "response exceed this many characters"})
    world_seed: int = field(default=0, metadata={"help": "seed of the built-in instruction world"})
    seed: int = field(default=1337, metadata={"help": "seed for data order and sampling"})
    n_prompts: int = field(default=0, metadata={"help": "train on the first N rankings (0 = all)"})
    beta: float = field(default=0.1, metadata={
        "help": "β: the KL coefficient of the objective DPO solves (Rafailov: 0.1)"})
    # optimisation
    epochs: int = field(default=2, metadata={"help": "passes over the comparisons"})
    batch_size: int = field(default=16, metadata={
        "help": "rankings per step per process (each with all its pairs)"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up steps"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decays to this fraction of lr"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm (0 = off)"})
    # measuring
    kl_prompts: int = field(default=64, metadata={
        "help": "held-out prompts sampled to measure the KL to the SFT model"})
    max_new_tokens: int = field(default=24, metadata={
        "help": "longest sampled response when measuring the KL"})
    eval_interval: int = field(default=25, metadata={"help": "steps between validation + checkpoint"})
    log_interval: int = field(default=5, metadata={"help": "steps between progress lines"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 autocast where this device's bf16 "
                                                         "matmul is clearly faster), float32 or bfloat16"})
    resume: bool = field(default=False, metadata={"help": "continue from out_dir/last.pt"})
    force: bool = field(default=False, metadata={"help": "overwrite a run already in out_dir"})

    def validate(self):
        check_dtype(self.dtype)
        for key in ("epochs", "batch_size", "eval_interval", "log_interval", "kl_prompts", "max_new_tokens",
                    "max_chars"):
            check(getattr(self, key) > 0, f"--{key} must be > 0, got {getattr(self, key)}")
        check(self.lr > 0 and self.beta > 0, f"--lr and --beta must be > 0, got {self.lr} and {self.beta}")
        check(0 < self.val_fraction < 1, f"--val_fraction must be in (0, 1), got {self.val_fraction}")
        check(self.n_prompts >= 0 and self.warmup_steps >= 0 and self.grad_clip >= 0,
              "--n_prompts, --warmup_steps and --grad_clip must be >= 0")


class SequenceLogprob(torch.nn.Module):
    """minigpt.scoring.sequence_logprobs as the forward pass, so DDP can wrap it (DDP only synchronises
    gradients of computations that went through its forward): idx (B, T), response (B, T) 1 on the response
    and its end-of-text -> (B,), under the run's dtype (bf16 autocast where it pays)."""

    def __init__(self, lm, dtype="float32"):
        super().__init__()
        self.lm = lm
        self.dtype = dtype

    def forward(self, idx, response):
        with autocast(str(idx.device), self.dtype):
            return sequence_logprobs(self.lm, idx, response)                 # (B,)


def logprobs_of(model, rankings, pad_id, device):
    """All K responses of each ranking in ONE forward pass -> list of (K_b,) log π(y|x), best..worst."""
    flat = [row for ranking in rankings for row in ranking]
    idx, _ = right_pad([ids for ids, _ in flat], pad_id)                      # (Σ K_b, T)
    response, _ = right_pad([mask for _, mask in flat], 0)                    # (Σ K_b, T)
    logps = model(idx.to(device), response.to(device))                        # (Σ K_b,)
    return list(torch.split(logps, [len(ranking) for ranking in rankings]))


@torch.no_grad()
def all_logprobs(model, rankings, pad_id, device, batch=32):
    return [lp.cpu() for i in range(0, len(rankings), batch)
            for lp in logprobs_of(model, rankings[i: i + batch], pad_id, device)]


# ======== read this first: the DPO loss over each ranking's C(K,2) pairs, and the implicit reward ========
def ranking_dpo_loss(logps, ref_logps, beta):
    """The DPO loss of a batch of rankings: each ranking's C(K,2) pairs (i above j) averaged as one element,
    then the mean over rankings -> (loss, pair accuracy of the implicit reward, mean margin r̂_w − r̂_l)."""
    losses, margins = [], []
    for lp, ref in zip(logps, ref_logps):                                     # one ranking: (K,), (K,)
        i, j = torch.triu_indices(len(lp), len(lp), offset=1)                 # every pair, i ranked above j
        loss, chosen, rejected = dpo_loss(lp[i], lp[j], ref[i].to(lp.device), ref[j].to(lp.device), beta)
        losses.append(loss.mean())
        margins.append((chosen - rejected).detach())
    margin = torch.cat(margins)
    return torch.stack(losses).mean(), (margin > 0).float().mean().item(), margin.mean().item()


def implicit_rewards(logps, ref_logps, beta):
    """r̂(x, y) = β·(log π(y|x) − log π_SFT(y|x)) per ranking: what DPO's policy says of each response."""
    return [beta * (lp - ref) for lp, ref in zip(logps, ref_logps)]
# ======== end of read this first ========


@torch.no_grad()
def kl_to_reference(policy, reference, tokenizer, prompts, cfg, device):
    """KL(π || π_SFT) per response, measured as PPO measures it (minigpt.scoring.rollout_kl: a sampled
    estimate, which near the start can dip below 0): responses sampled from π on held-out prompts with a fixed
    noise, so evaluations differ by the policy, not by luck -> (KL, mean length, share ended)."""
    noise = torch.Generator(device=device).manual_seed(cfg.seed)
    with autocast(str(device), cfg.dtype):
        batch = rollout(policy, tokenizer, prompts, cfg.max_new_tokens, 1.0, noise)
        kl = rollout_kl(policy, reference, batch, 1.0)
    return kl, batch["mask"].sum(1).float().mean().item(), batch["eos"].float().mean().item()


def main(cfg):
    # Data parallel: the loss's model wrapped. DDP wraps SequenceLogprob (scoring.sequence_logprobs as a
    # forward), because log π(y|x) reads the policy through trunk() and lm_head, not GPT.forward, and DDP only
    # averages the gradients of what went through the forward it wraps. The reference is read once, before
    # training.
    t0 = time.time()
    rank, world_size, device, resume = start_stage(cfg)
    master = rank == 0

    # ---- data and models: the policy starts as the SFT model, the reference IS the SFT model (frozen) ----
    train_recs, val_recs = load_rankings(cfg.labels, cfg.data, cfg.val_data, cfg.val_fraction, cfg.max_chars)
    if cfg.n_prompts:
        train_recs = train_recs[: cfg.n_prompts]
    dtype = resolve_dtype(cfg.dtype, device)
    policy, tokenizer, _ = load_model(cfg.sft, "lm", device)  # π, trained
    reference, _, _ = load_model(cfg.sft, "lm", device)       # π_SFT, frozen
    reference.requires_grad_(False).eval()
    policy.eval()                                             # dropout off: log-probs must match π_ref's
    block_size = policy.config.block_size
    train = encode_rankings(tokenizer, train_recs, block_size)
    val = encode_rankings(tokenizer, val_recs, block_size)
    if not train or not val:
        raise UserError(f"need training and held-out comparisons, got {len(train)} and {len(val)}")
    kl_prompts = list(dict.fromkeys(r["prompt"] for r in val_recs))[: cfg.kl_prompts]
    # log π_SFT(y|x) of every response, once: the reference never changes
    ref_train = all_logprobs(SequenceLogprob(reference, dtype), train, tokenizer.pad_id, device)
    ref_val = all_logprobs(SequenceLogprob(reference, dtype), val, tokenizer.pad_id, device)

    global_batch = cfg.batch_size * world_size
    steps_per_epoch = math.ceil(len(train) / global_batch)
    max_steps = cfg.epochs * steps_per_epoch
    # No weight decay: the β·KL of the objective, not decay towards zero, keeps π near π_SFT (as in PPO).
    optimizer = make_adamw(policy, cfg.lr, weight_decay=0.0)
    step = 0
    if resume:
        load_resumed(policy, resume["model"], os.path.join(cfg.out_dir, "last.pt"))
        optimizer.load_state_dict(resume["optimizer"])
        set_rng_state(resume["rng"])
        step = resume["step"]
        if master:
            print(f"resumed from {cfg.out_dir}/last.pt at step {step}")
    if master:
        n_pairs = sum(len(r) * (len(r) - 1) // 2 for r in train)
        print(f"data: {len(train)} train rankings ({n_pairs} pairs), {len(val)} held out; "
              f"policy {policy.num_params() / 1e6:.2f}M from {cfg.sft}; β = {cfg.beta}; dtype {dtype}; "
              f"{max_steps} steps")
    model = SequenceLogprob(policy, dtype)
    if world_size > 1:
        model = DDP(model)

    lengths = [max(len(ids) for ids, _ in ranking) for ranking in train]

    @functools.lru_cache(maxsize=1)
    def batches_of(epoch):
        return epoch_batches(lengths, global_batch, cfg.seed + epoch)

    def batch_at(step):
        """Indices of the rankings this rank trains on at `step` (the same after a resume)."""
        epoch, pos = divmod(step, steps_per_epoch)
        ids = batches_of(epoch)[pos]
        return ids[rank::world_size] or ids[:1]

    def evaluate(n=len(val)):
        logps = all_logprobs(SequenceLogprob(policy, dtype), val[:n], tokenizer.pad_id, device)
        loss, accuracy, margin = ranking_dpo_loss(logps, ref_val[:n], cfg.beta)
        kl, length, eos = kl_to_reference(policy, reference, tokenizer, kl_prompts, cfg, device)
        return dict(val_loss=loss.item(), val_accuracy=accuracy, val_margin=margin, val_kl=kl,
                    val_length=length, val_eos_rate=eos), logps

    def save_last():
        save_checkpoint(os.path.join(cfg.out_dir, "last.pt"), {
            "model": model_state(policy), "optimizer": optimizer.state_dict(), "step": step,
            "rng": rng_state(), "config": config_dict(cfg)})

    log, progress, guard = open_stage(cfg, master, max_steps, step, resume is not None)
    if master and not resume:
        log.log(step=0, **evaluate(64)[0])                          # loss log 2, accuracy 0: nothing moved

    # ---- the training loop ----
    try:
        while step < max_steps:
            lr = cosine_lr(step, max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
            set_lr(optimizer, lr)
            ids = batch_at(step)
            logps = logprobs_of(model, [train[i] for i in ids], tokenizer.pad_id, device)   # with gradients
            loss, accuracy, margin = ranking_dpo_loss(logps, [ref_train[i] for i in ids], cfg.beta)
            loss.backward()
            # clip, skip if non-finite, step
            step_optimizers(loss, [policy], [optimizer], cfg.grad_clip, guard)
            step += 1

            if step % cfg.log_interval == 0 or step == max_steps:
                row = dict(train_loss=all_reduce_mean(loss.item()), train_accuracy=all_reduce_mean(accuracy),
                           train_margin=all_reduce_mean(margin))
                progress.line(step, sum(len(ids) for r in ids for ids, _ in train[r]) * world_size,
                              loss=row["train_loss"], acc=row["train_accuracy"], margin=row["train_margin"],
                              lr=lr)
                log.log(step=step, lr=lr, **row)
            if master and (step % cfg.eval_interval == 0 or step == max_steps):
                rep, _ = evaluate(64)
                log.log(step=step, elapsed_s=time.time() - t0, **rep)
                print(f"step {step}: held-out loss {rep['val_loss']:.4f}, implicit-reward accuracy "
                      f"{rep['val_accuracy']:.3f}, margin {rep['val_margin']:+.3f}, KL to SFT (sampled "
                      f"estimate, can dip below 0) {rep['val_kl']:.2f} nats")
                save_last()
    except KeyboardInterrupt:
        exit_interrupted(save_last, master, cfg.out_dir, f"step {step}")

    if master:
        save_model(cfg.out_dir, policy, tokenizer, "lm", cfg, step)
        rep, logps = evaluate()
        # The implicit reward as a reward model: the same held-out report train_rm.py writes for r_θ
        ranking = ranking_report(val_recs, [r.tolist() for r in implicit_rewards(logps, ref_val, cfg.beta)])
        rows = read_metrics(os.path.join(cfg.out_dir, "metrics.jsonl"))
        plot_metrics(os.path.join(cfg.out_dir, "loss.png"), rows, "step",
                     {"DPO loss": ["train_loss", "val_loss"],
                      "implicit-reward pair accuracy": ["train_accuracy", "val_accuracy"],
                      "KL to SFT (nats)": ["val_kl"]}, title="DPO")
        summary = {
            **rep, "accuracy": ranking["accuracy"], "gold_accuracy": ranking.get("gold_accuracy"),
            "on_policy_gold_accuracy": ranking.get("on_policy_gold_accuracy"),
            "on_policy_pairs": ranking.get("on_policy_pairs"),
            "spearman": None if math.isnan(ranking.get("spearman", math.nan)) else ranking["spearman"],
            "per_mistake_accuracy": ranking.get("per_mistake_accuracy"), "beta": cfg.beta,
            "n_train_prompts": len(train), "n_val_prompts": len(val), "epochs": cfg.epochs, "steps": step,
            "seconds": time.time() - t0, "skipped_steps": guard.skipped, "dtype": dtype,
        }
        write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"implicit reward β·log(π/π_SFT) on held-out pairs: accuracy {fmt(summary['accuracy'])}, "
              f"vs gold order {fmt(summary['gold_accuracy'])}, on pairs of policy samples "
              f"{fmt(summary['on_policy_gold_accuracy'])}; "
              f"KL to SFT (sampled estimate) {rep['val_kl']:.2f} nats; done in {summary['seconds']:.0f}s; "
              f"weights in {cfg.out_dir}/model.pt")
    cleanup_distributed()


if __name__ == "__main__":
    run(main, Config)
