"""Stage 3: collecting comparisons (数据标注). For each prompt, show K responses to a labeller and ask
for a ranking, best first. The reward model learns from these rankings.

By default the K candidates are what a model wrote, as in InstructGPT, whose labellers ranked only model
outputs: k_policy different samples of the SFT model at each of --temperatures, what PPO will later ask the
reward model about (InstructGPT's labellers ranked outputs of several models and sampling settings).
Three world-built kinds of candidate can be added, each measured (README, "What the rankings hold"):
  * k_decorated of those samples wrapped in a surface mistake (a preamble, a rambling tail, the question
    repeated): the same content in a worse style;
  * k_other samples the policy gave to OTHER prompts (of another task kind): fluent, but off-topic here;
  * k_demo responses by the world's demonstrators: the right answer or one named kind of mistake each
    (written answers: a ranking that holds them teaches the right fact directly, not by comparison).

    python label.py                           # simulated labeller on the world's RM prompts, seconds
    python label.py --labeler=human           # you rank them in the terminal; rerun to continue
    python label.py --labeler=human < keys.txt

Writes out/labels/{train,val}.jsonl, one ranked list per line:
    {"prompt": ..., "responses": [best, ..., worst], "labeler": "simulated-1337", "seed": 1337,
     "gold": [gold score of each response], "mistakes": [mistake kind or null],
     "sources": ["policy" | "decorated" | "other" | "demo"], "kind": task kind}
and summary.json with how far the labels can be trusted: their agreement with the noise-free gold
ranking (the ceiling for any reward model) and the agreement of two independent simulated labellers.

Ties: repeated samples are never shown (twice k_policy are drawn, the first k_policy distinct ones kept); the
simulated labeller cannot tell apart different responses with the same gold score (two wrong answers, say):
it keeps the first of each and drops the rest (world.SimulatedLabeler), so a list may hold fewer than K
responses; a prompt whose candidates are all tied has nothing to compare and is not written.
"""

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

import torch

from minigpt.checkpoint import config_dict, load_model, write_json
from minigpt.cli import UserError, check, run
from minigpt.data import prompt_to_json
from minigpt.demonstrators import SURFACE_MISTAKES, applicable_mistakes, decorate
from minigpt.judge import mistakes
from minigpt.respond import respond
from minigpt.training import autocast, check_dtype, pick_device, resolve_dtype
from minigpt.world import LABELER_TEMPERATURE, SimulatedLabeler, World, labeler_agreement


@dataclass
class Config:
    out_dir: str = field(default="out/labels", metadata={"help": "stage folder to write"})
    policy: str = field(default="out/sft", metadata={
        "help": "stage folder of the model whose responses are ranked"})
    labeler: str = field(default="simulated", metadata={"help": "simulated (world.SimulatedLabeler) or human "
                                                                "(you, in the terminal)"})
    world_seed: int = field(default=0, metadata={"help": "seed of the built-in instruction world"})
    seed: int = field(default=1337, metadata={
        "help": "seed for sampling, demonstrators and the simulated labeller"})
    n_prompts: int = field(default=0, metadata={
        "help": "RM prompts to label (0 = all of the world's rm split, 3165)"})
    val_fraction: float = field(default=0.15, metadata={
        "help": "fraction of prompts held out as validation comparisons (spread evenly over the prompts)"})
    k_policy: int = field(default=4, metadata={"help": "responses sampled from the policy per prompt"})
    k_decorated: int = field(default=0, metadata={
        "help": "policy samples also shown wrapped in a surface mistake (preamble, rambling, repeated "
                "question): style compared with content held fixed"})
    k_other: int = field(default=0, metadata={"help": "samples for other prompts (another task kind) shown "
                                                      "as responses to this one: fluent but off-topic"})
    k_demo: int = field(default=0, metadata={"help": "demonstrator responses per prompt (distinct mistake "
                                                     "kinds, or the right answer)"})
    temperatures: str = field(default="1.0", metadata={"help": "sampling temperatures of the policy, "
                                                               "comma-separated: k_policy samples at each"})
    max_new_tokens: int = field(default=24, metadata={
        "help": "longest sampled response (as in PPO's rollouts)"})
    labeler_temperature: float = field(default=LABELER_TEMPERATURE, metadata={
        "help": "noise of the simulated labeller (0 = always the gold order; "
                "minigpt.world.LABELER_TEMPERATURE)"})
    batch_size: int = field(default=512, metadata={"help": "responses sampled at once"})
    fresh: bool = field(default=False, metadata={"help": "discard labels already in out_dir (human labels "
                                                         "are otherwise continued, and never overwritten)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 autocast where this device's bf16 "
                                                         "matmul is clearly faster), float32 or bfloat16"})

    def validate(self):
        check_dtype(self.dtype)
        check(self.labeler in ("simulated", "human"),
              f"--labeler must be simulated or human, got {self.labeler!r}")
        check(self.n_prompts >= 0, f"--n_prompts must be >= 0, got {self.n_prompts}")
        check(0 <= self.val_fraction < 1, f"--val_fraction must be in [0, 1), got {self.val_fraction}")
        check(min(self.k_policy, self.k_decorated, self.k_other, self.k_demo) >= 0,
              "--k_policy, --k_decorated, --k_other and --k_demo must be >= 0")
        check(self.k_policy + self.k_demo >= 2, f"need K = k_policy + k_demo >= 2 responses per prompt to "
                                                f"rank, got {self.k_policy + self.k_demo}")
        try:
            temperatures = [float(t) for t in self.temperatures.split(",")]
        except ValueError:
            raise UserError("--temperatures: expected numbers separated by commas, "
                            f"got {self.temperatures!r}") from None
        check(all(t > 0 for t in temperatures), f"--temperatures must all be > 0, got {self.temperatures}")
        check(self.max_new_tokens > 0 and self.batch_size > 0,
              "--max_new_tokens and --batch_size must be > 0")
        check(self.labeler_temperature >= 0,
              f"--labeler_temperature must be >= 0, got {self.labeler_temperature}")


def is_val(i, fraction):
    """Prompt i is held out when i * fraction crosses an integer: exactly ~fraction of any prefix, spread
    evenly, so the split of a prompt never depends on how many prompts are labelled."""
    return math.floor((i + 1) * fraction) > math.floor(i * fraction)


DRAWS_PER_SHOWN = 2   # policy samples drawn per answer shown to the labeller (repeats are not shown)


def demo_responses(world, task, k, seed):
    """k demonstrator responses to task, each of a different kind (the right answer or one named mistake)."""
    rng = random.Random(f"demo-{seed}-{task.instruction}")   # per prompt: the same whatever else is labelled
    kinds = [None] + applicable_mistakes(task)
    rng.shuffle(kinds)
    return [(world.demonstrator_response(task, rng, kind), kind) for kind in kinds[:k]]


def candidates(world, model, tokenizer, tasks, cfg, generator, chunk):
    """Yield (task, [{"response", "mistake", "source", "gold"}]) per task, sampling the policy `chunk` prompts
    at a time. A policy sample's mistake is the first that minigpt.judge.mistakes names (None when right)."""
    temperatures = [float(t) for t in cfg.temperatures.split(",")]
    for start in range(0, len(tasks), chunk):
        part = tasks[start: start + chunk]
        texts = [[] for _ in part]                                            # per prompt: the samples shown
        for temperature in temperatures if cfg.k_policy else []:
            # A labeller is shown k_policy DIFFERENT answers (two copies of one text teach nothing): draw
            # twice as many, keep the first k_policy distinct ones (short answers repeat: on world 0's dev
            # split this gave 2.57 answers per ranking instead of 2.41, and 1,765 rankings instead of 1,588).
            draws = DRAWS_PER_SHOWN * cfg.k_policy
            instructions = [t.prompt for t in part for _ in range(draws)]
            with autocast(str(next(model.parameters()).device), cfg.dtype):
                out = respond(model, tokenizer, instructions, cfg.max_new_tokens, temperature,
                              generator=generator, batch_size=cfg.batch_size)
            for n in range(len(part)):
                # A sample that never emitted end-of-text is left out: the reward model reads a response +
                # eos, and PPO never asks it about an unfinished one (that gets the fixed no-EOS penalty).
                mine = slice(n * draws, (n + 1) * draws)
                ended = [text for text, e in zip(out.texts[mine], out.eos[mine]) if e]
                texts[n] += distinct(ended)[: cfg.k_policy]
        for n, task in enumerate(part):
            cands = []
            samples = texts[n]
            for r in samples:   # its mistake as the judge names it (the first, if it shows two)
                cands.append({"response": r, "mistake": (mistakes(task, r) or [None])[0], "source": "policy",
                              "gold": world.gold_score(task, r)})
            # Without these, every preamble the RM sees sits on a demonstrator's (right) answer and every bare
            # answer on a policy sample (often wrong): it would learn "a preamble means a right answer".
            rng = random.Random(f"decorate-{cfg.seed}-{task.instruction}")
            for r in [s for s in samples if s][: cfg.k_decorated]:
                mistake = rng.choice(SURFACE_MISTAKES)
                d = decorate(task, r, rng, mistake)
                cands.append({"response": d, "mistake": mistake, "source": "decorated",
                              "gold": world.gold_score(task, d)})
            # A fluent answer to another question: another prompt's sample (another kind) shown here. Without
            # these the RM never saw an off-topic answer, and PPO learnt to answer "3 * 1" to everything.
            rng = random.Random(f"other-{cfg.seed}-{task.instruction}")
            others = [m for m, t in enumerate(part) if t.kind != task.kind and texts[m] and texts[m][0]]
            for m in rng.sample(others, min(cfg.k_other, len(others))):
                r = texts[m][0]
                cands.append({"response": r, "mistake": "off_topic", "source": "other",
                              "gold": world.gold_score(task, r)})
            for r, kind in demo_responses(world, task, cfg.k_demo, cfg.seed):
                cands.append({"response": r, "mistake": kind, "source": "demo",
                              "gold": world.gold_score(task, r)})
            random.Random(f"order-{cfg.seed}-{task.instruction}").shuffle(cands)  # sources mixed in any order
            yield task, cands


def record(task, cands, order, labeler, seed):
    """The JSON line of one ranked prompt: responses best -> worst, each with its gold score and source."""
    ranked = [cands[i] for i in order]
    return {"prompt": prompt_to_json(task.prompt), "responses": [c["response"] for c in ranked],
            "labeler": labeler,
            "seed": seed, "gold": [c["gold"] for c in ranked], "mistakes": [c["mistake"] for c in ranked],
            "sources": [c["source"] for c in ranked], "kind": task.kind}


def read_labels(path):
    """Records of a label file; a half-written last line (killed mid-write) is cut off and reported."""
    if not os.path.exists(path):
        return []
    records, good_bytes = [], 0
    with open(path, "rb") as f:
        for line in f:
            try:
                records.append(json.loads(line))
                good_bytes += len(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                print(f"warning: {path}: dropped an unfinished last line", file=sys.stderr)
                break
    with open(path, "rb+") as f:
        f.truncate(good_bytes)
    return records


def append_line(path, obj):
    """Append one JSON line and flush it to disk -> the file size before (for undo)."""
    with open(path, "a", encoding="utf-8") as f:
        offset = f.tell()
        f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return offset


# agreement = fraction of a ranking's pairs (i above j) where gold_i > gold_j; pairs of equal gold are skipped
def gold_agreement_of(records):
    agree = total = 0
    for r in records:
        g = r["gold"]
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                if g[i] != g[j]:
                    total += 1
                    agree += g[i] > g[j]
    return agree / total if total else float("nan")


# ---- the human labeller: a terminal session -------------------------------------------------------------

HINT = "type the numbers best first (e.g. 2 4 1 3), s = skip, u = undo the last prompt, q = quit"


def parse_ranking(text, n):
    """'2 4 1 3' / '2,4,1,3' / '2413' -> [1, 3, 0, 2] (0-based), or None unless a permutation of 1..n."""
    text = text.replace(",", " ").strip()
    parts = text.split() if " " in text or n >= 10 else list(text)
    try:
        order = [int(p) - 1 for p in parts]
    except ValueError:
        return None
    return order if sorted(order) == list(range(n)) else None


def show(task, cands, position, total):
    print(f"\n[{position}/{total}] ### Instruction:\n{task.instruction}\n")
    for i, c in enumerate(cands, 1):
        text = c["response"].replace("\n", " ⏎ ") if c["response"] else "(empty response)"
        print(f"  {i}) {text}")


def human_session(tasks, pending, make_cands, paths, seed):
    """Rank each pending prompt from stdin; every answer is on disk before the next prompt is shown.
    Returns (labelled, skipped, quit_early)."""
    history, cache, k, labelled, skipped = [], {}, 0, 0, 0  # history: (index into pending, file, offset|None)
    print(f"{len(pending)} prompts to rank; {HINT}; end of input also stops, keeping your work")
    while k < len(pending):
        i = pending[k]
        if i not in cache:
            cache[i] = make_cands(i)
        cands = cache[i]
        show(tasks[i], cands, k + 1, len(pending))
        while True:
            print("ranking> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:                                  # end of input: stop, the work is already saved
                print()
                return labelled, skipped, True
            answer = line.strip().lower()
            if answer == "q":
                return labelled, skipped, True
            if answer == "s":
                history.append((k, None, None))
                skipped += 1
                k += 1
                break
            if answer == "u":
                if not history:
                    print("nothing to undo in this session")
                    continue
                k, path, offset = history.pop()
                if path is None:
                    skipped -= 1
                else:
                    with open(path, "rb+") as f:
                        f.truncate(offset)
                    labelled -= 1
                print("undone")
                break
            order = parse_ranking(answer, len(cands))
            if order is None:
                print(f"expected a ranking of 1..{len(cands)}: {HINT}")
                continue
            path = paths["val" if is_val(i, paths["fraction"]) else "train"]
            offset = append_line(path, record(tasks[i], cands, order, "human", seed))
            history.append((k, path, offset))
            labelled += 1
            k += 1
            break
    return labelled, skipped, False


class StoredOrder:
    """A 'labeller' whose ranking is the order the responses are stored in (a ranked list from the file)."""

    def rank(self, task, responses):
        return list(range(len(responses)))


def distinct(items, text=lambda x: x):
    """The first of each text (compared without surrounding whitespace), in order: a person is never shown,
    nor can rank, two identical texts (short answers repeat; a policy sample and a demonstrator's answer can
    coincide)."""
    seen, out = set(), []
    for item in items:
        if text(item).strip() not in seen:
            seen.add(text(item).strip())
            out.append(item)
    return out


# ---- main -----------------------------------------------------------------------------------------------

def main(cfg):
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    world = World(cfg.world_seed)
    tasks = world.split("rm")
    if cfg.n_prompts:
        check(cfg.n_prompts <= len(tasks),
              f"--n_prompts={cfg.n_prompts}: the world has {len(tasks)} RM prompts")
        tasks = tasks[: cfg.n_prompts]
    device = pick_device(cfg.device)
    model, tokenizer, _ = load_model(cfg.policy, "lm", device)
    model.eval()
    check(cfg.max_new_tokens < model.config.block_size,
          f"--max_new_tokens ({cfg.max_new_tokens}) must be < the policy's block_size "
          f"({model.config.block_size})")
    identity = "human" if cfg.labeler == "human" else f"simulated-{cfg.seed}"

    os.makedirs(cfg.out_dir, exist_ok=True)
    paths = {"train": os.path.join(cfg.out_dir, "train.jsonl"), "val": os.path.join(cfg.out_dir, "val.jsonl"),
             "fraction": cfg.val_fraction}
    summary_path = os.path.join(cfg.out_dir, "summary.json")
    existing = read_labels(paths["train"]) + read_labels(paths["val"])
    others = {r.get("labeler") for r in existing} - {identity}
    if existing and not cfg.fresh and "human" in others:
        raise UserError(f"{cfg.out_dir} holds human labels; use another --out_dir, "
                        "or --fresh to discard them")
    if existing and not cfg.fresh and cfg.labeler == "human" and others:
        raise UserError(f"{cfg.out_dir} holds labels by {sorted(others)[0]}; "
                        "use another --out_dir or --fresh")
    if cfg.fresh or cfg.labeler == "simulated":   # simulated labels are reproducible: redo them from scratch
        existing = []
        for name in ("train", "val"):
            open(paths[name], "w").close()
    if os.path.exists(summary_path):
        os.remove(summary_path)                   # the stage is in progress until summary.json is back
    write_json(os.path.join(cfg.out_dir, "config.json"), config_dict(cfg))
    generator = torch.Generator().manual_seed(cfg.seed)
    k = cfg.k_policy * len(cfg.temperatures.split(","))
    K = k + (min(cfg.k_decorated, k) + cfg.k_other if k else 0) + cfg.k_demo
    # "up to": a prompt's responses with equal gold scores are tied and all but one dropped before ranking
    print(f"labelling {len(tasks)} prompts x up to K={K} responses ({k} from {cfg.policy} at temperatures "
          f"{cfg.temperatures}, dtype {resolve_dtype(cfg.dtype, device)}, up to "
          f"{cfg.k_decorated} of them decorated, {cfg.k_other} off-topic, {cfg.k_demo} from the "
          f"demonstrators); labeller {identity}")

    skipped, quit_early, dropped = 0, False, 0
    # ======== read this first: the labelling: K candidates per prompt, ranked best first (or by you) ========
    if cfg.labeler == "simulated":
        labeler = SimulatedLabeler(cfg.seed, cfg.labeler_temperature)
        chunk = max(1, cfg.batch_size // max(k, 1))
        ranked = {"train": [], "val": []}
        for n, (task, cands) in enumerate(candidates(world, model, tokenizer, tasks, cfg, generator, chunk)):
            order = labeler.rank(task, [c["response"] for c in cands])   # ties (equal gold) dropped
            if len(order) < 2:
                dropped += 1                          # every candidate equally good: nothing to learn
                continue
            ranked["val" if is_val(n, cfg.val_fraction) else "train"].append(
                record(task, cands, order, identity, cfg.seed))
            if (n + 1) % 250 == 0 or n + 1 == len(tasks):
                print(f"{n + 1}/{len(tasks)} prompts ranked ({time.time() - t0:.0f}s)", flush=True)
        for name in ("train", "val"):
            with open(paths[name], "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in ranked[name])
    else:
        done = {json.dumps(r["prompt"]) for r in existing}
        pending = [i for i, t in enumerate(tasks) if json.dumps(prompt_to_json(t.prompt)) not in done]
        if done:
            print(f"continuing: {len(done)} prompts already ranked in {cfg.out_dir}")

        def make_cands(i):  # sample one prompt at a time: the first prompt appears at once
            return distinct(next(candidates(world, model, tokenizer, [tasks[i]], cfg, generator, 1))[1],
                            text=lambda c: c["response"])

        labelled, skipped, quit_early = human_session(tasks, pending, make_cands, paths, cfg.seed)
        print(f"{labelled} prompts ranked this session, {skipped} skipped")
    # ======== end of read this first ========

    # ---- how good are the labels? ----
    train, val = read_labels(paths["train"]), read_labels(paths["val"])
    if not train and not val:
        print("no labels written yet")
        return
    # ceiling: these labels vs the noise-free gold order; agreement: two fresh, independent simulated
    # labellers on the same held-out responses (the labels' own noise, as InstructGPT measured between people)
    held_out = val or train
    instructions, lists = [r["prompt"] for r in held_out], [r["responses"] for r in held_out]
    agreement = labeler_agreement(world, instructions, lists,
                                  SimulatedLabeler(cfg.seed + 1, cfg.labeler_temperature),
                                  SimulatedLabeler(cfg.seed + 2, cfg.labeler_temperature))
    policy_gold = [g for r in train + val for g, s in zip(r["gold"], r["sources"]) if s == "policy"]
    summary = {
        "labeler": identity, "seed": cfg.seed, "policy": cfg.policy, "K": K, "k_policy": cfg.k_policy,
        "k_other": cfg.k_other, "k_demo": cfg.k_demo, "n_train": len(train), "n_val": len(val),
        "dropped_all_tied": dropped,
        "skipped": skipped, "complete": not quit_early,
        "mean_responses_per_list": sum(len(r["responses"]) for r in train + val) / len(train + val),
        "ceiling": gold_agreement_of(held_out), "labeler_agreement": agreement,
        "ceiling_train": gold_agreement_of(train) if train else None,
        "policy_mean_gold": sum(policy_gold) / len(policy_gold) if policy_gold else None,
        "seconds": time.time() - t0, "dtype": resolve_dtype(cfg.dtype, device),
    }
    if cfg.labeler == "human":   # how often the person orders a pair like a simulated labeller would
        summary["human_vs_simulated"] = labeler_agreement(
            world, instructions, lists, SimulatedLabeler(cfg.seed + 3, cfg.labeler_temperature),
            StoredOrder())
    write_json(summary_path, summary)
    fmt = lambda x: "n/a" if x is None or x != x else f"{x:.3f}"  # noqa: E731
    mean = summary["mean_responses_per_list"]
    print(f"{len(train)} train + {len(val)} val ranked lists ({mean:.2f} responses ranked on average of up "
          f"to K={K}, ties dropped; {dropped} prompts all tied) in {summary['seconds']:.0f}s")
    print(f"held-out labels vs gold (ceiling) {fmt(summary['ceiling'])} | two simulated labellers agree "
          f"{fmt(summary['labeler_agreement'])} | policy samples' mean gold "
          f"{fmt(summary['policy_mean_gold'])}")
    if cfg.labeler == "human":
        print(f"you agree with a simulated labeller on {fmt(summary['human_vs_simulated'])} of pairs")
    print(f"wrote {paths['train']}, {paths['val']}, {summary_path}")


if __name__ == "__main__":
    run(main, Config)
