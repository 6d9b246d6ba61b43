"""How fast is this machine, and how close does minigpt get to it?

    python bench.py                    # table on stdout, ~1-2 minutes on 2 CPU cores
    python bench.py --json=bench.json  # the same figures as JSON
    python bench.py --only=serve       # just some sections: matmul, train, generate, ppo, serve

Everything is measured in this one run: the matmul rate is the ceiling, training MFU is measured
against it (not against a datasheet), and the KV cache is compared with recomputing the prefix.
"""

import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from minigpt.cli import check, run
from minigpt.losses import sft_loss
from minigpt.model import GPT, GPTConfig, RewardModel
from minigpt.sampling import generate
from minigpt.tokenizer import Tokenizer
from minigpt.training import autocast, make_adamw, pick_device
from minigpt.world import World


SECTIONS = ("matmul", "train", "generate", "ppo", "serve")


@dataclass
class Config:
    json: str = field(default="", metadata={"help": "also write the figures to this JSON file"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps"})
    threads: int = field(default=0, metadata={"help": "torch threads (0 = torch's default)"})
    train_steps: int = field(default=12, metadata={"help": "timed training steps per config"})
    compile: bool = field(default=False, metadata={"help": "also time training with torch.compile"})
    only: list = field(default_factory=list, metadata={
        "help": f"run only these sections ({', '.join(SECTIONS)}; default all)"})
    serve_requests: int = field(default=64, metadata={"help": "serve section: requests per phase "
                                                              "(sequential, concurrent)"})
    serve_clients: int = field(default=16, metadata={
        "help": "serve section: client threads in the concurrent phase"})
    serve_max_tokens: int = field(default=24, metadata={"help": "serve section: max_tokens of each request"})
    serve_model: str = field(default="", metadata={"help": "serve section: stage folder to serve ('' = a "
                                                           "random model of the default size)"})
    serve_rm: bool = field(default=False, metadata={"help": "serve section: also load a random reward "
                                                            "model scoring every answer"})
    serve_batch_wait_ms: float = field(default=5.0, metadata={
        "help": "serve section: serve.py --batch_wait_ms"})
    serve_max_batch: int = field(default=32, metadata={"help": "serve section: serve.py --max_batch"})

    def validate(self):
        check(self.train_steps > 0, f"--train_steps must be > 0, got {self.train_steps}")
        check(self.threads >= 0, f"--threads must be >= 0, got {self.threads}")
        bad = [s for s in self.only if s not in SECTIONS]
        check(not bad, f"--only: unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
        check(self.serve_requests > 0, f"--serve_requests must be > 0, got {self.serve_requests}")
        check(self.serve_clients > 0, f"--serve_clients must be > 0, got {self.serve_clients}")
        check(self.serve_max_tokens > 0, f"--serve_max_tokens must be > 0, got {self.serve_max_tokens}")


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


def train_throughput(device, model_config, batch_size, steps, compile_model=False, dtype="float32"):
    """Forward + backward + AdamW step on random tokens, under `dtype` (float32, or bfloat16 autocast as the
    training scripts run it) -> tokens per second."""
    torch.manual_seed(0)
    model = GPT(model_config).to(device)
    optimizer = make_adamw(model, 1e-4)
    step_model = torch.compile(model) if compile_model else model
    T = model_config.block_size
    x = torch.randint(model_config.vocab_size, (batch_size, T), device=device)
    y = torch.randint(model_config.vocab_size, (batch_size, T), device=device)
    ones = torch.ones_like(y)

    def step():
        with autocast(device, dtype):
            logits = step_model(x)
        loss = sft_loss(logits.float(), y, ones)
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
        tokens, _ = generate(model, prompts, new_tokens, eos_id=-1, pad_id=0, temperature=0,
                             use_cache=use_cache)
        sync(device)
        result[name] = (batch * new_tokens / (time.perf_counter() - t0), tokens)
    same = torch.equal(result["cached"][1], result["uncached"][1])
    return result["cached"][0], result["uncached"][0], same


def script_defaults(script):
    """The literal defaults of a script's Config, read from its source (bench.py imports no other script)."""
    import ast

    tree = ast.parse(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), script)).read())
    config = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Config")
    out = {}
    for item in config.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.value, ast.Call):
            default = next((k.value for k in item.value.keywords if k.arg == "default"), None)
            if isinstance(default, ast.Constant):
                out[item.target.id] = default.value
    return out


def ppo_iteration(device):
    """One PPO iteration at train_ppo.py's default config, on freshly initialised models, timed in its
    three parts: rollout (sampling), scoring (policy, reference, value and reward forwards), update (the
    clipped losses of train_ppo.py's ppo_loss, minibatch by minibatch, for its ppo_epochs)."""
    import copy

    from minigpt.ppo import gae, kl_penalty_rewards, masked_whiten, policy_loss, value_loss
    from minigpt.rollout import response_values, rollout, score
    from minigpt.scoring import NO_EOS_PENALTY, response_logprobs

    cfg = SimpleNamespace(**{"no_eos_penalty": NO_EOS_PENALTY, **script_defaults("train_ppo.py")})
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
    batch = rollout(policy, tokenizer, [t.prompt for t in tasks], cfg.max_new_tokens, cfg.temperature,
                    generator)
    sync(device)
    t1 = time.perf_counter()
    mask = batch["mask"]
    with torch.no_grad():
        logprobs = response_logprobs(policy, batch, cfg.temperature)
        ref_logprobs = response_logprobs(reference, batch, cfg.temperature)
        values = response_values(value_model, batch)
        scores, _ = score(reward_model, tokenizer, batch, cfg.no_eos_penalty)
        rewards, _ = kl_penalty_rewards(logprobs, ref_logprobs, scores, mask, cfg.kl_coef)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)
    sync(device)
    t2 = time.perf_counter()
    order = torch.Generator().manual_seed(0)
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(cfg.batch_size, generator=order)
        for start in range(0, cfg.batch_size, cfg.minibatch_size):
            rows = perm[start: start + cfg.minibatch_size]
            mb_keys = ("query_response", "attention_mask", "position_ids", "response")
            mb = {"P": batch["P"], **{k: batch[k][rows] for k in mb_keys}}
            pg, _ = policy_loss(response_logprobs(policy, mb, cfg.temperature), logprobs[rows],
                                advantages[rows], mask[rows], cfg.clip)
            vf, _ = value_loss(response_values(value_model, mb), values[rows], returns[rows], mask[rows],
                               cfg.value_clip)
            (pg + cfg.vf_coef * vf).backward()
            for model, opt in ((policy, policy_opt), (value_model, value_opt)):
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
    sync(device)
    t3 = time.perf_counter()
    return {"rollout_s": t1 - t0, "score_s": t2 - t1, "update_s": t3 - t2, "batch_size": cfg.batch_size,
            "max_new_tokens": cfg.max_new_tokens, "ppo_epochs": cfg.ppo_epochs}


SERVE_INSTRUCTION = "Add 3 and 4."


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _percentile(values, q):
    """The q-th percentile (0..100) of `values`, by linear interpolation between the sorted values."""
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def _serve_stage_folder(folder, with_rm):
    """A stage folder of serve.py's kind: the default GPTConfig (4 layers x 128 wide), random weights."""
    from minigpt.checkpoint import save_model

    tokenizer = Tokenizer.train(World(0).corpus()[:200_000], 2048)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, flash=True)
    save_model(os.path.join(folder, "sft"), GPT(config), tokenizer, "lm")
    if with_rm:
        save_model(os.path.join(folder, "rm"), RewardModel(config), tokenizer, "reward")


def serve_throughput(cfg, device):
    """serve.py as a subprocess, asked over HTTP (urllib, no seed so that requests batch): `serve_requests`
    requests one after another, then the same number from `serve_clients` threads at once."""
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.serve_model:
            models, rm = f"bench:{cfg.serve_model}", ""
        else:
            _serve_stage_folder(tmp, cfg.serve_rm)
            models, rm = f"bench:{os.path.join(tmp, 'sft')}", os.path.join(tmp, "rm") if cfg.serve_rm else ""
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = os.path.join(tmp, "serve.log")
        args = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.py"),
                f"--models={models}", f"--rm={rm}", f"--port={port}", f"--device={device}",
                f"--batch_wait_ms={cfg.serve_batch_wait_ms}", f"--max_batch={cfg.serve_max_batch}"]
        env = dict(os.environ)
        if cfg.threads:  # the server is where the work happens: give it the same thread count
            env.update(OMP_NUM_THREADS=str(cfg.threads), MKL_NUM_THREADS=str(cfg.threads))
        with open(log_path, "w") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise RuntimeError("serve.py exited: " + open(log_path).read()[-2000:])
                try:
                    _get_json(url + "/health", timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("serve.py did not come up: " + open(log_path).read()[-2000:])
                    time.sleep(0.1)
            body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": SERVE_INSTRUCTION}],
                               "max_tokens": cfg.serve_max_tokens, "temperature": 1.0}).encode()

            def ask():
                req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})
                t0 = time.perf_counter()
                with urllib.request.urlopen(req, timeout=300) as r:
                    answer = json.loads(r.read())
                return time.perf_counter() - t0, answer["usage"]["completion_tokens"]

            for _ in range(3):  # warm-up: first calls allocate, and the KV cache paths get exercised
                ask()

            def phase(clients):
                before = _get_json(url + "/health")["generate_calls"]
                per_client = [cfg.serve_requests // clients + (k < cfg.serve_requests % clients)
                              for k in range(clients)]
                results, errors = [], []
                lock = threading.Lock()

                def client(count):
                    start.wait()
                    for _ in range(count):
                        try:
                            got = ask()
                        except Exception as e:  # noqa: BLE001 - reported below
                            with lock:
                                errors.append(repr(e))
                            continue
                        with lock:
                            results.append(got)

                threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in per_client if c]
                start = threading.Barrier(len(threads) + 1)
                for t in threads:
                    t.start()
                start.wait()
                t0 = time.perf_counter()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - t0
                if errors:
                    raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
                calls = _get_json(url + "/health")["generate_calls"] - before
                latencies = [r[0] for r in results]
                tokens = sum(r[1] for r in results)
                return {"clients": len(threads), "requests": len(results), "wall_s": wall,
                        "requests_per_s": len(results) / wall, "completion_tokens_per_s": tokens / wall,
                        "p50_latency_s": _percentile(latencies, 50),
                        "p95_latency_s": _percentile(latencies, 95),
                        "generate_calls_per_request": calls / len(results)}

            sequential = phase(1)
            concurrent = phase(min(cfg.serve_clients, cfg.serve_requests))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {"model": cfg.serve_model or "random GPTConfig() (L4 H4 E128 T128 V2048)",
            "reward_model": bool(rm), "server_threads": cfg.threads or None,
            "max_tokens": cfg.serve_max_tokens, "batch_wait_ms": cfg.serve_batch_wait_ms,
            "max_batch": cfg.serve_max_batch, "sequential": sequential, "concurrent": concurrent,
            "speedup": concurrent["requests_per_s"] / sequential["requests_per_s"]}


def main(cfg):
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    report = {"device": device, "threads": torch.get_num_threads()}
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")

    sections = set(cfg.only or SECTIONS)
    report["sections"] = [name for name in SECTIONS if name in sections]

    if sections & {"matmul", "train"}:  # training MFU is measured against this ceiling
        fp32 = matmul_gflops(device, torch.float32)
        bf16 = matmul_gflops(device, torch.bfloat16)
        report["matmul_gflops"] = {"fp32": fp32, "bf16": bf16}
        print(f"matmul 1024x1024: fp32 {fp32:8.1f} GFLOP/s | bf16 {bf16:8.1f} GFLOP/s")

    if "train" in sections:
        # the default pretraining config of train_pretrain.py, and the reference config
        pc = SimpleNamespace(**script_defaults("train_pretrain.py"))
        configs = {
            "default_pretrain": (GPTConfig(block_size=pc.block_size, vocab_size=pc.vocab_size,
                                           n_layer=pc.n_layer, n_head=pc.n_head, n_embd=pc.n_embd,
                                           flash=pc.flash), pc.batch_size),
            "L4_H4_E128_T128_V2048_B32": (GPTConfig(block_size=128, vocab_size=2048, n_layer=4, n_head=4,
                                                    n_embd=128, flash=True), 32),
            "L4_H4_E128_T128_V2048_B32_manual_attention": (
                GPTConfig(block_size=128, vocab_size=2048, n_layer=4, n_head=4, n_embd=128, flash=False), 32),
        }
        # Each dtype's MFU is against its own measured matmul peak: bf16 runs more tokens/s but its ceiling is
        # higher still, so a model this small (128-wide matrices) reaches a smaller share of it.
        report["train"] = {}
        print(f"\n{'training config':<45} {'fp32 tok/s':>10} {'MFU':>6} {'bf16 tok/s':>10} {'MFU':>6} "
              f"{'bf16/fp32':>9}")
        for name, (mc, bs) in configs.items():
            variants = [(name, False)] + ([(name + "_compiled", True)] if cfg.compile else [])
            for vname, comp in variants:
                row = {}
                for dtype, peak in (("float32", fp32), ("bfloat16", bf16)):
                    tps, flops = train_throughput(device, mc, bs, cfg.train_steps, comp, dtype)
                    row[dtype] = {"tokens_per_s": tps, "mfu": tps * flops / (peak * 1e9)}
                report["train"][vname] = row
                f, b = row["float32"], row["bfloat16"]
                print(f"{vname:<45} {f['tokens_per_s']:10.0f} {f['mfu']:6.1%} {b['tokens_per_s']:10.0f} "
                      f"{b['mfu']:6.1%} {b['tokens_per_s'] / f['tokens_per_s']:8.2f}x")

    if "generate" in sections:
        cached, uncached, same = generation_speed(device)
        report["generate"] = {"cached_tokens_per_s": cached, "uncached_tokens_per_s": uncached,
                              "speedup": cached / uncached, "same_tokens": same}
        print(f"\ngeneration (batch 16, prompt 128, 256 new): cached {cached:.0f} tok/s, "
              f"uncached {uncached:.0f} tok/s, speedup {cached / uncached:.1f}x, identical tokens: {same}")

    if "ppo" in sections:
        report["ppo_iteration"] = ppo_iteration(device)
        p = report["ppo_iteration"]
        print(f"\nPPO iteration: rollout {p['rollout_s']:.2f}s | score {p['score_s']:.2f}s | "
              f"update {p['update_s']:.2f}s")
    else:
        report["ppo_iteration"] = None

    if "serve" in sections:
        report["serve"] = sv = serve_throughput(cfg, device)
        threads = "" if sv["server_threads"] is None else f", {sv['server_threads']} server threads"
        print(f"\nserve.py ({sv['model']}{', reward model' if sv['reward_model'] else ''}; "
              f"max_tokens {sv['max_tokens']}, temperature 1, no seed; "
              f"--batch_wait_ms={sv['batch_wait_ms']:g} --max_batch={sv['max_batch']}{threads})")
        print(f"{'phase':<12} {'clients':>7} {'requests':>8} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} "
              f"{'p95 s':>7} {'gen calls/req':>13}")
        for name in ("sequential", "concurrent"):
            r = sv[name]
            print(f"{name:<12} {r['clients']:>7} {r['requests']:>8} {r['requests_per_s']:7.2f} "
                  f"{r['completion_tokens_per_s']:7.0f} {r['p50_latency_s']:7.3f} {r['p95_latency_s']:7.3f} "
                  f"{r['generate_calls_per_request']:13.2f}")
        print(f"concurrent / sequential requests/s: {sv['speedup']:.2f}x")
    else:
        report["serve"] = None

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
