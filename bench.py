"""How fast is this machine, and how close does minigpt get to it?

    python bench.py                    # table on stdout, ~1-2 minutes on 2 CPU cores
    python bench.py --json=bench.json  # the same figures as JSON

Everything is measured in this one run: the matmul rate is the ceiling, training MFU is measured
against it (not against a datasheet), and the KV cache is compared with recomputing the prefix.
"""

import resource
import time
from dataclasses import dataclass, field

import torch

from minigpt.cli import check, run
from minigpt.losses import sft_loss
from minigpt.model import GPT, GPTConfig, RewardModel
from minigpt.sampling import generate
from minigpt.tokenizer import Tokenizer
from minigpt.training import make_adamw, pick_device
from minigpt.world import World


@dataclass
class Config:
    json: str = field(default="", metadata={"help": "also write the figures to this JSON file"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps"})
    threads: int = field(default=0, metadata={"help": "torch threads (0 = torch's default)"})
    train_steps: int = field(default=12, metadata={"help": "timed training steps per config"})
    compile: bool = field(default=False, metadata={"help": "also time training with torch.compile"})
    skip_ppo: bool = field(default=False, metadata={"help": "skip the PPO iteration profile"})

    def validate(self):
        check(self.train_steps > 0, f"--train_steps must be > 0, got {self.train_steps}")
        check(self.threads >= 0, f"--threads must be >= 0, got {self.threads}")


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_gflops(device, dtype, n=1024, seconds=1.5):
    """The ceiling: a square matmul as large as the model's biggest, repeated for ~`seconds`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def train_throughput(device, model_config, batch_size, steps, compile_model=False):
    """Forward + backward + AdamW step on random tokens -> tokens per second."""
    torch.manual_seed(0)
    model = GPT(model_config).to(device)
    optimizer = make_adamw(model, 1e-4)
    step_model = torch.compile(model) if compile_model else model
    T = model_config.block_size
    x = torch.randint(model_config.vocab_size, (batch_size, T), device=device)
    y = torch.randint(model_config.vocab_size, (batch_size, T), device=device)
    ones = torch.ones_like(y)

    def step():
        loss = sft_loss(step_model(x), y, ones)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (and compilation)
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    tokens_per_s = batch_size * T * steps / (time.perf_counter() - t0)
    return tokens_per_s, model.flops_per_token()


def generation_speed(device, batch=16, prompt_len=128, new_tokens=256):
    """Tokens/s of sampling with and without the KV cache; both must produce the same tokens."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=prompt_len + new_tokens, vocab_size=2048, n_layer=4, n_head=4, n_embd=128,
                       flash=True)
    model = GPT(config).to(device).eval()
    prompts = torch.randint(2048, (batch, prompt_len)).tolist()
    result = {}
    for name, use_cache in (("cached", True), ("uncached", False)):
        sync(device)
        t0 = time.perf_counter()
        tokens, _ = generate(model, prompts, new_tokens, eos_id=-1, pad_id=0, temperature=0, use_cache=use_cache)
        sync(device)
        result[name] = (batch * new_tokens / (time.perf_counter() - t0), tokens)
    same = torch.equal(result["cached"][1], result["uncached"][1])
    return result["cached"][0], result["uncached"][0], same


def ppo_iteration(device):
    """One PPO iteration at train_ppo.py's default config, on freshly initialised models, timed in its
    three parts: rollout (sampling), scoring (policy, reference, value and reward forwards), update."""
    import copy

    import train_ppo
    from minigpt.ppo import kl_penalty_rewards
    from minigpt.training import NonFiniteGuard

    cfg = train_ppo.Config()
    world = World(0)
    tokenizer = Tokenizer.train(world.corpus()[:200_000], 2048)
    torch.manual_seed(0)
    policy = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, flash=True)).to(device).eval()
    reference = copy.deepcopy(policy).requires_grad_(False)
    reward_model = RewardModel.from_gpt(policy).to(device).eval().requires_grad_(False)
    value_model = copy.deepcopy(reward_model).requires_grad_(True)
    policy_opt = make_adamw(policy, cfg.lr, weight_decay=0.0, eps=1e-5)
    value_opt = make_adamw(value_model, cfg.value_lr, weight_decay=0.0, eps=1e-5)
    tasks = world.split("ppo")[: cfg.batch_size]
    generator = torch.Generator(device=device).manual_seed(0)
    t0 = time.perf_counter()
    batch = train_ppo.rollout(policy, tokenizer, tasks, cfg.max_new_tokens, cfg.temperature, generator)
    sync(device)
    t1 = time.perf_counter()
    with torch.no_grad():
        logprobs = train_ppo.response_logprobs(policy, batch, cfg.temperature)
        ref_logprobs = train_ppo.response_logprobs(reference, batch, cfg.temperature)
        values = train_ppo.response_values(value_model, batch)
        scores, _ = train_ppo.score(reward_model, tokenizer, batch, cfg.no_eos_penalty)
        rewards, _ = kl_penalty_rewards(logprobs, ref_logprobs, scores, batch["mask"], cfg.kl_coef)
        advantages, returns = train_ppo.compute_advantages(rewards, values, batch["mask"], cfg.gamma, cfg.lam)
    batch.update(logprobs=logprobs, values=values, advantages=advantages, returns=returns)
    sync(device)
    t2 = time.perf_counter()
    train_ppo.ppo_update(policy, value_model, policy_opt, value_opt, batch, cfg, torch.Generator().manual_seed(0),
                         None, NonFiniteGuard())
    sync(device)
    t3 = time.perf_counter()
    return {"rollout_s": t1 - t0, "score_s": t2 - t1, "update_s": t3 - t2, "batch_size": cfg.batch_size,
            "max_new_tokens": cfg.max_new_tokens, "ppo_epochs": cfg.ppo_epochs}


def main(cfg):
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    report = {"device": device, "threads": torch.get_num_threads()}
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")

    fp32 = matmul_gflops(device, torch.float32)
    bf16 = matmul_gflops(device, torch.bfloat16)
    report["matmul_gflops"] = {"fp32": fp32, "bf16": bf16}
    print(f"matmul 1024x1024: fp32 {fp32:8.1f} GFLOP/s | bf16 {bf16:8.1f} GFLOP/s")

    # the default pretraining config of train_pretrain.py, and the reference config
    from train_pretrain import Config as PretrainConfig
    pc = PretrainConfig()
    configs = {
        "default_pretrain": (GPTConfig(block_size=pc.block_size, vocab_size=pc.vocab_size, n_layer=pc.n_layer,
                                       n_head=pc.n_head, n_embd=pc.n_embd, flash=pc.flash), pc.batch_size),
        "L4_H4_E128_T128_V2048_B32": (GPTConfig(block_size=128, vocab_size=2048, n_layer=4, n_head=4, n_embd=128,
                                                flash=True), 32),
        "L4_H4_E128_T128_V2048_B32_manual_attention": (GPTConfig(block_size=128, vocab_size=2048, n_layer=4,
                                                                 n_head=4, n_embd=128, flash=False), 32),
    }
    report["train"] = {}
    print(f"\n{'training config':<45} {'tokens/s':>10} {'MFU':>7}")
    for name, (mc, bs) in configs.items():
        variants = [(name, False)] + ([(name + "_compiled", True)] if cfg.compile else [])
        for vname, comp in variants:
            tps, flops = train_throughput(device, mc, bs, cfg.train_steps, comp)
            mfu = tps * flops / (fp32 * 1e9)
            report["train"][vname] = {"tokens_per_s": tps, "mfu": mfu}
            print(f"{vname:<45} {tps:10.0f} {mfu:7.1%}")

    cached, uncached, same = generation_speed(device)
    report["generate"] = {"cached_tokens_per_s": cached, "uncached_tokens_per_s": uncached,
                          "speedup": cached / uncached, "same_tokens": same}
    print(f"\ngeneration (batch 16, prompt 128, 256 new): cached {cached:.0f} tok/s, uncached {uncached:.0f} tok/s, "
          f"speedup {cached / uncached:.1f}x, identical tokens: {same}")

    if not cfg.skip_ppo:
        report["ppo_iteration"] = ppo_iteration(device)
        p = report["ppo_iteration"]
        print(f"\nPPO iteration: rollout {p['rollout_s']:.2f}s | score {p['score_s']:.2f}s | update {p['update_s']:.2f}s")
    else:
        report["ppo_iteration"] = None

    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report["peak_rss_mb"] = max(rss_self, rss_children) / 1024
    print(f"peak memory {report['peak_rss_mb']:.0f} MB")
    if cfg.json:
        from minigpt.checkpoint import write_json
        write_json(cfg.json, report)
        print(f"wrote {cfg.json}")


if __name__ == "__main__":
    run(main, Config)
