"""The checker behind --reward=verifier: it parses the world's phrasings in both languages, computes the
answer from the prompt alone, and says nothing about prompts it cannot check."""

import pytest
import torch

from minigpt.tasks import build_pools
from minigpt.verifier import VERIFIER_WEIGHT, Check, parse, verifier_reward, verify


@pytest.mark.parametrize("prompt, expected", [
    ("What is 3 + 4?", Check("arithmetic", (3, 4), 7)),
    ("What is 9 minus 4? Give the number only.", Check("arithmetic", (9, 4), 5)),
    ("Subtract 2 from 8.", Check("arithmetic", (8, 2), 6)),       # "from": the operands swap
    ("Add 6 and 9.", Check("arithmetic", (6, 9), 15)),
    ("计算3+4", Check("arithmetic", (3, 4), 7)),
    ("7减5等于几？", Check("arithmetic", (7, 5), 2)),
    ("8+8等于多少？只给出数字。", Check("arithmetic", (8, 8), 16)),
    ("Write a Python expression that multiplies 3 by 4.", Check("code", (3, 4), 12)),
    ("Write a Python expression that subtracts 4 from 9. Give the expression only.",
     Check("code", (9, 4), 5)),
    ("Give a Python expression for the product of 6 and 7.", Check("code", (6, 7), 42)),
    ("写一个Python表达式，计算5乘以6。", Check("code", (5, 6), 30)),
    ("用Python表达式表示9减去2。只写表达式。", Check("code", (9, 2), 7)),
    ("用Python表达式表示2和3的和。", Check("code", (2, 3), 5)),
    ("Which is larger, 5 or 7?", Check("compare", (5, 7), 7)),
    ("Which number is bigger: 19 or 4? Give the number only.", Check("compare", (19, 4), 19)),
    ("12和3中哪个数更大？", Check("compare", (12, 3), 12)),
])
def test_parses_both_languages(prompt, expected):
    assert parse(prompt) == expected


@pytest.mark.parametrize("prompt", [
    "Translate to French: red. Answer in capitals.", "What is the French word for seven?", "翻译成法语：你好",
    "Hi! How much does an umbrella cost?", "What time do you open on Monday?", "运费多少钱？",
    "How much must I spend for free delivery?", "Hello! Can you help me?", "What is the capital of Peru?",
    "伦敦离东京有多远？", "Which is larger, 5 or 5?", "", [("user", "What is 3 + 4?")],
])
def test_says_nothing_where_it_cannot_check(prompt):
    assert parse(prompt) is None
    assert verifier_reward(prompt, "7") is None


def test_every_prompt_of_the_world_is_read_right():
    # every task of every kind: the checkable kinds parse to a check that accepts the world's own answer
    # (bare and wrapped in a preamble and a tail), the other kinds never parse
    pools, _ = build_pools([])
    for kind, tasks in pools.items():
        for t in tasks:
            check = parse(t.instruction)
            if kind in ("arithmetic", "code", "compare"):
                assert check is not None and check.kind == kind, t.instruction
                assert verify(check, t.answer) == 1, t
                assert verify(check, f"Sure! The answer is {t.answer}. I hope this helps!") == 1, t
            else:
                assert check is None, t.instruction


@pytest.mark.parametrize("prompt, response, right", [
    ("What is 3 + 4?", "7", 1), ("What is 3 + 4?", "3 + 4 = 7.", 1), ("What is 3 + 4?", "8", 0),
    ("What is 3 + 4?", "7 or 8", 0),          # a hedge: a number that is neither the answer nor asked
    ("What is 3 + 4?", "seven", 0),           # no number written
    ("What is 3 + 0?", "3", 1),               # the answer is one of the operands
    ("计算9-4", "5", 1), ("计算9-4", "13", 0),
    ("Write a Python expression that multiplies 3 by 4.", "3 * 4", 1),
    ("Write a Python expression that multiplies 3 by 4.", "4*3", 1),
    ("Write a Python expression that multiplies 3 by 4.", "3 + 4", 0),
    ("Write a Python expression that multiplies 3 by 4.", "12", 0),   # a number, not an expression
    ("Write a Python expression that multiplies 3 by 4.", "Sure! print(3 * 4)", 1),
    ("Write a Python expression that multiplies 3 by 4.", "3 * 4 or 3 + 4", 0),   # the last one counts
    ("写一个Python表达式，计算9减4。", "9 - 4", 1), ("写一个Python表达式，计算9减4。", "4 - 9", 0),
    ("Which is larger, 5 or 7?", "7", 1), ("Which is larger, 5 or 7?", "5", 0),
    ("Which is larger, 5 or 7?", "5 or 7? 7", 0),     # names both: not an answer
    ("5和7哪个大？", "7。", 1), ("5和7哪个大？", "八", 0),
])
def test_verify_hand_computed(prompt, response, right):
    assert verify(parse(prompt), response) == right
    assert verifier_reward(prompt, response) == VERIFIER_WEIGHT * (2 * right - 1)


def test_the_reward_adds_to_the_rm_score_only_where_checked(monkeypatch):
    import minigpt.rollout as rollout

    # a reward model that scores every text 0.5: the checker's term is all that moves
    monkeypatch.setattr(rollout, "reward_scores", lambda rm, tok, xs, ys: torch.full((len(ys),), 0.5))
    batch = {"instructions": ["What is 3 + 4?", "What is 3 + 4?", "Hello!", "What is 3 + 4?"],
             "texts": ["7", "8", "Hello! How can I help?", "7"], "response": torch.zeros(4, 2),
             "eos": torch.tensor([True, True, True, False])}
    model_scores, raw = rollout.score(None, None, batch, -5.0)
    verifier_scores, raw2 = rollout.score(None, None, batch, -5.0, "verifier")
    assert model_scores.tolist() == [0.5, 0.5, 0.5, -5.0]
    assert verifier_scores.tolist() == [1.5, -0.5, 0.5, -5.0]     # +1 right, -1 wrong, unchecked, unfinished
    assert raw.tolist() == raw2.tolist() == [0.5] * 4


def test_the_verifier_run_trains_on_every_checkable_training_prompt_and_no_held_out_one():
    from types import SimpleNamespace

    from minigpt.rollout import split_prompts
    from minigpt.world import World

    world = World(0)
    cfg = SimpleNamespace(world_seed=0, val_prompts=64, val_samples=4, batch_size=64, reward="model")
    val, ppo_only = split_prompts(world, cfg)
    val2, train = split_prompts(world, SimpleNamespace(**{**vars(cfg), "reward": "verifier"}))
    assert val == val2 and train[:len(ppo_only)] == ppo_only          # the same PPO prompts, then the rest
    extra = train[len(ppo_only):]
    checkable = [t for name in ("sft_train", "rm") for t in world.split(name)
                 if isinstance(t.prompt, str) and parse(t.prompt) is not None]
    assert extra == checkable and {t.kind for t in extra} == {"arithmetic", "code", "compare"}
    # why: the PPO prompts ask only some of the world's 155 sums and differences, the checkable ones all
    def sums(tasks):
        return {(t.get("a"), t.get("b"), t.get("op")) for t in tasks if t.kind == "arithmetic"}
    assert len(sums(ppo_only)) < 100 and len(sums(train)) == 10 * 10 + 55        # a + b, and a - b for a >= b
    held_out = {t.prompt for name in ("test", "dev", "probe") for t in world.split(name)}
    assert not held_out & {t.prompt for t in train + val}
