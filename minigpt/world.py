"""The instruction world: a small, fully known world that stands in for users, demonstrators and labellers.

InstructGPT needs three things we cannot hire on a laptop: users who write prompts, labellers who write
demonstrations, and labellers who rank model outputs. These files simulate all three over a toy world whose
every fact is known (minigpt/facts.py), so the gold judge (minigpt/judge.py) can say exactly how good any
response is.

  * tasks        seven kinds of short instructions in English and Chinese (KINDS), each a `Task`
                 (minigpt/tasks.py), and conversations: a follow-up after one earlier turn, the `dialogue`
                 kind (minigpt/dialogues.py), in their own held-out splits dialogue_test and dialogue_dev
  * gold judge   `gold_score` (minigpt/judge.py): the score in [0, 1] a response deserves
  * corpus       natural-ish pretraining text that teaches the world's facts (minigpt/corpus.py)
  * demonstrator `demonstration` (minigpt/demonstrators.py): the right answer, or (ERROR_RATE = 60%) a
                 response with one of the habits in MISTAKE_WEIGHTS: mostly style (a preamble, a closing
                 pleasantry, ...), some wrong answers
  * labeller     `SimulatedLabeler` (here): ranks responses by gold score plus Gumbel noise (Plackett-Luce)
  * probe facts  lexicon entries that the corpus teaches but that no SFT/RM/PPO prompt ever mentions
  * World        (here) all of them for one seed: the tasks dealt out to the splits, look-up, judge, corpus

Plain Python only (no torch, no numpy); everything is seeded by random.Random, same seed => same output.
"""

import math
import random

from minigpt.corpus import DEFAULT_CORPUS_CHARS, make_corpus
from minigpt.demonstrators import ERROR_RATE, demonstration, demonstrator_response
from minigpt.dialogues import build_dialogues
from minigpt.facts import LEXICON
from minigpt.judge import gold_score
from minigpt.tasks import KINDS, Task, build_pools

# probe facts are drawn from these: concrete nouns (never greetings, numbers, days: the seed examples
# use those)
PROBE_CATEGORIES = ("animal", "food", "body", "home", "nature", "place")
N_PROBE_ENTRIES = 25

# Split sizes (distinct instruction texts; disjoint). Each split is balanced across the kinds.
#   test  only reported, never looked at to choose anything;   dev  where every default is chosen
#   probe facts that only the pretraining text states (no later stage sees them)
SPLIT_SIZES = {"sft_train": 2400, "sft_val": 180, "rm": 1200, "ppo": 900, "test": 300, "probe": 100,
               "dev": 300}
# More prompts for the labellers, appended to "rm". It and "dev" are dealt after every other split (dev
# first), each shuffled with its own generator, so that adding them changed not one prompt of the others.
# Ranked prompts are what the reward model lacks most: 1,024 -> 2,095 training prompts took its held-out
# accuracy 0.624 -> 0.671 (README).
RM_EXTRA = 959
# Conversations (minigpt/dialogues.py), dealt after all of the above with their own generator, so that not one
# single-turn prompt changed: their own held-out splits, and more prompts for the training splits. Each split
# is balanced across the dialogue families.
DIALOGUE_SIZES = {"dialogue_test": 204, "dialogue_dev": 204, "sft_train": 1200, "sft_val": 60, "rm": 1002,
                  "ppo": 450}

# ---------------------------------------------------------------------------------------------------------
class World:
    """The whole instruction world for one seed: splits, look-up, gold judge, demonstrators, corpus."""

    def __init__(self, seed=0):
        self.seed = seed
        rng = random.Random(seed)
        candidates = [e for e in LEXICON if e.cat in PROBE_CATEGORIES]
        self.probe_entries = sorted(rng.sample(candidates, N_PROBE_ENTRIES), key=lambda e: e.en)
        pools, probe_tasks = build_pools(set(self.probe_entries))
        self._by_prompt = {}
        for t in [t for kind in KINDS for t in pools[kind]] + probe_tasks:
            assert t.instruction not in self._by_prompt, f"duplicate instruction {t.instruction!r}"
            self._by_prompt[t.instruction] = t
        # deal each kind's shuffled pool out to the splits, the same number per kind (test first)
        self._splits = {name: [] for name in SPLIT_SIZES if name != "dev"}
        dev, extra_rm = [], []
        for kind in KINDS:
            pool = list(pools[kind])
            rng.shuffle(pool)
            i = 0
            for name in ("test", "sft_val", "rm", "ppo", "sft_train"):
                n = math.ceil(SPLIT_SIZES[name] / len(KINDS))
                assert i + n <= len(pool), f"not enough {kind} tasks for split {name}"
                self._splits[name] += pool[i:i + n]
                i += n
            n_dev, n_extra = math.ceil(SPLIT_SIZES["dev"] / len(KINDS)), math.ceil(RM_EXTRA / len(KINDS))
            assert i + n_dev + n_extra <= len(pool), \
                f"not enough {kind} tasks for the dev and extra rm prompts"
            dev += pool[i:i + n_dev]
            extra_rm += pool[i + n_dev:i + n_dev + n_extra]
        rng.shuffle(probe_tasks)
        self._splits["probe"] = probe_tasks[:SPLIT_SIZES["probe"]]
        for name in self._splits:
            rng.shuffle(self._splits[name])
        # their own generators: the shuffles above stay as they were
        random.Random(f"extra-rm-{seed}").shuffle(extra_rm)
        self._splits["rm"] += extra_rm
        random.Random(f"dev-{seed}").shuffle(dev)
        self._splits["dev"] = dev
        dialogues = build_dialogues(pools, set(self.probe_entries))
        self._deal_dialogues(dialogues, random.Random(f"dialogue-{seed}"))

    def _deal_dialogues(self, families, rng):
        """Deal each family's shuffled conversations: held-out splits first. A conversation that asks a
        held-out single-turn instruction word for word (as its first question, whose answer SFT would learn)
        may only go to a held-out split."""
        held_out = {t.instruction for name in ("test", "dev", "probe") for t in self._splits[name]}
        dealt = {name: [] for name in DIALOGUE_SIZES}
        for family, tasks in families.items():
            for t in tasks:
                assert t.prompt not in self._by_prompt, f"duplicate conversation {t.instruction!r}"
                self._by_prompt[t.prompt] = t
            pool = list(tasks)
            rng.shuffle(pool)
            asks_held_out = [any(text in held_out for role, text in t.prompt if role == "user") for t in pool]
            touching = [t for t, h in zip(pool, asks_held_out) if h]
            clean = [t for t, h in zip(pool, asks_held_out) if not h]
            for name, size in DIALOGUE_SIZES.items():
                n = math.ceil(size / len(families))
                if name.startswith("dialogue_"):
                    k = min(n, len(touching))
                    take, touching, clean = touching[:k] + clean[:n - k], touching[k:], clean[n - k:]
                else:
                    take, clean = clean[:n], clean[n:]
                assert len(take) == n, f"not enough {family} conversations for split {name}"
                dealt[name] += take
        for name, tasks in dealt.items():
            rng.shuffle(tasks)
            self._splits[name] = self._splits.get(name, []) + tasks

    def split(self, name):
        if name not in self._splits:
            raise KeyError(f"unknown split {name!r}; choose from {', '.join(self._splits)}")
        return list(self._splits[name])

    def task(self, prompt):
        """The task asked by a prompt: an instruction, or a conversation [(role, text), ...] (or as JSON keeps
        it, [{"role", "content"}, ...])."""
        key = prompt if isinstance(prompt, str) else tuple(
            (m["role"], m["content"]) if isinstance(m, dict) else tuple(m) for m in prompt)
        try:
            return self._by_prompt[key]
        except KeyError:
            raise KeyError(f"prompt not in this world: {prompt!r}") from None

    def gold_score(self, task_or_prompt, response):
        task = task_or_prompt
        if not isinstance(task, Task):
            task = self.task(task)
        return gold_score(task, response)

    def demonstration(self, task, rng, error_rate=ERROR_RATE):
        return demonstration(task, rng, error_rate)

    def demonstrator_response(self, task, rng, mistake=None):
        return demonstrator_response(task, rng, mistake)

    def corpus(self, n_chars=DEFAULT_CORPUS_CHARS):
        return make_corpus(random.Random(f"corpus-{self.seed}"), n_chars)

    def corpus_val(self, n_chars=200_000):
        return make_corpus(random.Random(f"corpus-val-{self.seed}"), n_chars)

    @staticmethod
    def fact_probes():
        """Has pretraining learnt the facts, or only the shape of the sentences? family -> (start of a corpus
        sentence, the word that ends it): every lexicon entry from English ("The French word for cat is",
        "chat") and from Chinese ("猫 in French is", "chat"), and every sum of two digits ("3 + 4 =",
        "7")."""
        return {"french_from_english": [(f"The French word for {e.en} is", e.fr) for e in LEXICON],
                "french_from_chinese": [(f"{e.zh} in French is", e.fr) for e in LEXICON],
                "sums": [(f"{a} + {b} =", str(a + b)) for a in range(10) for b in range(10)]}


# ---------------------------------------------------------------------------------------------------------
# Simulated labellers
# calibrated: two labellers agree on ~76% of pairs of demonstrations (InstructGPT: 73-77%)
LABELER_TEMPERATURE = 0.27


class SimulatedLabeler:
    """Ranks responses like a noisy human: Plackett-Luce with utilities gold/temperature.

    Sorting by  u_i = g_i / temperature + Gumbel noise  samples a Plackett-Luce ranking; for any two responses
    P(i ranked above j) = sigmoid((g_i - g_j) / temperature)  (Bradley-Terry). temperature=0: noise-free.
    Ties dropped: responses with equal gold score are tied for the labeller, so rank() keeps only the FIRST
    response of each distinct gold score; the returned list may be shorter than `responses` (possibly 1).
    """

    def __init__(self, seed=0, temperature=LABELER_TEMPERATURE):
        self.rng = random.Random(seed)
        self.temperature = temperature

    def rank(self, task, responses):
        """-> indices into responses, best to worst (one per distinct gold score)."""
        gold = [gold_score(task, r) for r in responses]
        keep, seen = [], set()
        for i, g in enumerate(gold):
            if round(g, 6) not in seen:
                seen.add(round(g, 6))
                keep.append(i)
        if self.temperature <= 0:
            return sorted(keep, key=lambda i: -gold[i])
        utility = {i: gold[i] / self.temperature - math.log(-math.log(self.rng.random() or 1e-12))
                   for i in keep}
        return sorted(keep, key=lambda i: -utility[i])


def _pair_agreement(world, tasks, responses_per_task, order_a, order_b):
    agree = total = 0
    for task, responses in zip(tasks, responses_per_task):
        task = task if isinstance(task, Task) else world.task(task)
        ra, rb = order_a(task, responses), order_b(task, responses)
        pos_b = {i: k for k, i in enumerate(rb)}
        for x in range(len(ra)):
            for y in range(x + 1, len(ra)):   # a prefers ra[x] to ra[y]; does b?
                total += 1
                agree += pos_b[ra[x]] < pos_b[ra[y]]
    return agree / max(total, 1)


def labeler_agreement(world, tasks, responses_per_task, labeler_a, labeler_b):
    """Fraction of response pairs that two labellers order the same way (tied pairs excluded).
    tasks: Tasks or instruction strings; responses_per_task: one list of responses per task."""
    return _pair_agreement(world, tasks, responses_per_task, labeler_a.rank, labeler_b.rank)


def gold_agreement(world, tasks, responses_per_task, labeler):
    """Fraction of pairs a labeller orders like the noise-free gold judge: the ceiling for a reward model."""
    gold = SimulatedLabeler(temperature=0)
    return _pair_agreement(world, tasks, responses_per_task, labeler.rank, gold.rank)
