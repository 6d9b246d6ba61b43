import random
import re
import time

import pytest

from minigpt import demonstrators as D
from minigpt import judge
from minigpt import tasks as T
from minigpt import world as W
from minigpt.demonstrators import MISTAKES, applicable_mistakes, demonstration, demonstrator_response
from minigpt.facts import LEXICON
from minigpt.judge import gold_score
from minigpt.tasks import KINDS, Task
from minigpt.dialogues import FAMILIES
from minigpt.world import (DIALOGUE_SIZES, RM_EXTRA, SPLIT_SIZES, SimulatedLabeler, World, gold_agreement,
                           labeler_agreement)


@pytest.fixture(scope="module")
def world():
    return World(0)


# ---------------------------------------------------------------------------------------------------------
# the lexicon
def test_lexicon_is_big_unique_and_never_the_same_word_in_two_languages():
    assert len(LEXICON) >= 150
    for column in ("en", "zh", "fr"):
        values = [getattr(e, column).lower() for e in LEXICON]
        assert len(set(values)) == len(values), column
    assert not {e.en.lower() for e in LEXICON} & {e.fr.lower() for e in LEXICON}


def test_no_french_lexicon_word_hides_in_templates_preambles_or_tails():
    texts = [t for lang in ("en", "zh") for t in D.PREAMBLES[lang] + D.TAILS[lang] + D.NOTES[lang]]
    texts += [t for phrasings in T.PHRASINGS.values() for _, t in phrasings]
    texts += [s for pair in T.FORMAT_SUFFIX.values() for s in pair]
    texts += [g for gs in T.SHOP_GREETINGS.values() for g in gs] + list(judge.HELP_ANSWERS.values())
    texts += [t.instruction for t in World(0).split("sft_train") if t.kind == "help"]
    for text in texts:
        assert not judge._FRENCH_RE.search(text), text


# ---------------------------------------------------------------------------------------------------------
# the gold judge, kind by kind, on hand-written responses
def check(world, instruction, cases):
    task = world.task(instruction)
    for response, expected in cases:
        got = world.gold_score(task, response)
        if isinstance(expected, tuple):
            assert expected[0] <= got <= expected[1], (instruction, response, got)
        else:
            assert got == pytest.approx(expected), (instruction, response, got)


def test_judge_translate_en(world):
    check(world, "Translate to French: red", [
        ("rouge", 1.0), ("rouge.", 0.9), ("Rouge", 0.8), ("Sure! The answer is rouge.", 0.6),
        ("rouge. I hope this helps!", 0.5), ("Translate to French: red rouge", 0.4), ("red", 0.2),
        ("红色", 0.2),
        ("roge", 0.16), ("rougge", 0.1667), ("ruoge", 0.12),          # misspelt: 0.2 * (1 - edits / length)
        ("bleu", 0.0), ("vert", 0.0), ("rouge bleu", 0.0), ("Sure! The answer is bleu.", 0.0), ("", 0.0),
        ("   ", 0.0)])
    check(world, "Translate to French: red. Answer in capitals.", [
        ("ROUGE", 1.0), ("rouge", 0.5), ("RED", 0.2)])
    check(world, "Translate to French: red. Answer in one word.", [
        ("rouge", 1.0), ("rouge (red)", 0.5), ("The answer is rouge.", 0.5)])


def test_judge_translate_zh_and_the_seed_example(world):
    check(world, "翻译成法语：你好", [
        ("Bonjour", 1.0), ("bonjour", 0.8), ("hello", 0.2), ("你好", 0.2),
        ("好的！答案是Bonjour。", 0.6), ("Bonne nuit", (0.0, 0.2)),
        ("翻译成法语：你好 Bonjour", 0.4)])
    # a part of the answer is wrong
    check(world, "翻译成法语：晚安", [("Bonne nuit", 1.0), ("nuit", (0.0, 0.2))])


def test_judge_arithmetic(world):
    check(world, "计算2+2", [("4", 1.0), ("5", 0.1), ("9", 0.0), ("四", 0.5), ("four", 0.2),
                            ("2+2=4", 0.6), ("4 or 5", (0.0, 0.1))])
    check(world, "What is 3 + 5? Give the number only.", [
        ("8", 1.0), ("The answer is 8.", 0.5), ("eight", 0.5), ("huit", 0.2), ("8 (eight)", 0.5),
        ("What is 3 + 5? 8", 0.4)])
    check(world, "What is 9 - 4?", [("5", 1.0), ("5. Have a great day!", 0.5), ("4", 0.1)])


def test_judge_code_parses_never_evals(world):
    check(world, "Write a Python expression that adds 3 and 4.", [
        ("3 + 4", 1.0), ("4+3", 1.0), ("(3 + 4)", 1.0), ("7", 0.3), ("1 + 6", 0.3), ("3 - 4", 0.1),
        ("hello", 0.0), ("print(3 + 4)", 0.6), ("Sure! The answer is 3 + 4.", 0.6),
        ("__import__('os').system('echo hacked')", 0.0), ("9 ** 9 ** 9", 0.0)])
    check(world, "Write a Python expression that subtracts 2 from 7. Give the expression only.", [
        ("7 - 2", 1.0), ("2 - 7", 0.1), ("print(7 - 2)", 0.5), ("x = 7 - 2", 0.5)])


def test_judge_shop(world):
    check(world, "When does the shop open on Monday?", [
        ("9am", 1.0), ("9AM", 0.8), ("10am", (0.05, 0.2)), ("We open at 9am on Monday.", 0.5),
        ("Sure! The answer is 9am.", 0.6), ("9am or 10am", (0.0, 0.2))])
    check(world, "When does the shop close on Sunday?", [("closed", 1.0), ("6pm", (0.0, 0.1))])
    check(world, "How much does an umbrella cost? Answer in one word.", [
        ("$12", 1.0), ("$12 (I think)", 0.5)])


def test_judge_compare(world):
    check(world, "Which is larger, 3 or 7?", [("7", 1.0), ("3", 0.0), ("7. I hope this helps!", 0.5),
                                              ("Which is larger, 3 or 7? 7", 0.4), ("3 7", (0.0, 0.1))])


def test_judge_never_reads_the_repeated_questions_numbers_as_the_answer(world):
    """The question names the numbers; only what follows it can answer it
    (a repeated question caps at 0.4)."""
    check(world, "Which is larger, 3 or 7?", [
        ("Which is larger, 3 or 7? 7", 0.4), ("Which is larger, 3 or 7? 3", 0.0),
        ("Which is larger, 3 or 7?", 0.0), ("Which is larger, 3 or 7?\n7", 0.4),
        ("Which is larger, 3 or 7? 7. I hope this helps!", 0.4)])
    check(world, "What is 5 + 0?", [("What is 5 + 0? 5", 0.4), ("What is 5 + 0?", 0.0),
                                    ("What is 5 + 0? 6", 0.1), ("What is 5 + 0? 9", 0.0)])
    check(world, "计算2+2", [("计算2+2 4", 0.4), ("计算2+2", 0.0), ("计算2+2 5", 0.1)])


def test_judge_help_desk(world):
    """Greetings get a greeting, requests outside the world a short refusal; a made-up fact scores 0."""
    greeting = next(t for t in world.split("test") if t.kind == "help" and t.get("topic") == "greeting")
    request = next(t for t in world.split("test") if t.kind == "help" and t.get("topic") == "request")
    for task, right, other in ((greeting, "Hello! How can I help?", "Sorry, I cannot help with that."),
                               (request, "Sorry, I cannot help with that.", "Hello! How can I help?")):
        if task.get("lang") == "zh":
            right, other = {"Hello! How can I help?": "你好！有什么可以帮你？",
                            "Sorry, I cannot help with that.": "抱歉，这个我帮不了。"}[right], right
        assert task.answer == right
        assert gold_score(task, right) == 1.0 and gold_score(task, other) == 0.3   # the other polite line
        assert gold_score(task, "6pm") == gold_score(task, "Bonjour") == gold_score(task, "4") == 0.0
        assert gold_score(task, right + " Have a great day!") == 0.5
    check(world, "Hello!", [("Hello! How can I help?", 1.0), ("Sorry, I cannot help with that.", 0.3),
                            ("Hello! Hello! How can I help?", 0.4), ("6pm", 0.0)])
    check(world, "What is the capital of Spain?", [("Sorry, I cannot help with that.", 1.0), ("Madrid", 0.0),
                                                   ("Hello! How can I help?", 0.3)])


def test_mistakes_name_what_is_wrong(world):
    """judge.mistakes names each demonstrator mistake as the demonstrators made it, and off-topic answers."""
    rng = random.Random(0)
    hits = total = 0
    for task in world.split("rm")[:700]:
        for mistake in [None] + applicable_mistakes(task):
            total += 1
            expected = [] if mistake is None else [mistake]
            hits += judge.mistakes(task, demonstrator_response(task, rng, mistake)) == expected
    assert hits / total > 0.99
    t = world.task
    assert judge.mistakes(t("Which is larger, 3 or 7?"), "Which is larger, 3 or 7? 3") == ["repeat_question",
                                                                                          "wrong_answer"]
    assert judge.mistakes(t("计算2+2"), "Bonjour") == ["off_topic"]
    assert judge.mistakes(t("Translate to French: red"), "Sorry, I cannot help with that.") == ["refusal"]
    assert gold_score(t("Translate to French: red"), "Sorry, I cannot help with that.") == 0.0
    assert judge.mistakes(t("Translate to French: red"), "Sure! The answer is rouge. Have a great day!") == [
        "preamble", "rambling"]
    assert judge.mistakes(t("Hello!"), "6pm") == ["wrong_answer"]
    assert judge.mistakes(t("Hello!"), "") == ["wrong_answer"]
    assert judge.mistakes(t("Translate to French: red"), "rouge.") == []
    check(world, "Which is larger, 3 or 7? Give the number only.", [
        ("7", 1.0), ("seven", 0.5), ("The answer is 7.", 0.5)])


def test_judge_long_answers_are_capped(world):
    task = world.task("Translate to French: red")
    assert gold_score(task, "rouge " + "and so on " * 10) <= 0.3


def test_judge_survives_arbitrary_text(world):
    # PPO samples anything; the judge must return a score in [0, 1] and never raise
    rng = random.Random(0)
    alphabet = list("0123456789+-*() .!?:`'\"abcxyzAMé猫答案是。²٣_")
    alphabet += ["chat", "7", "3 + 4", "((", "print", "\n"]
    tasks = world.split("test")
    for i in range(3000):
        response = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert 0.0 <= gold_score(tasks[i % len(tasks)], response) <= 1.0, response
    assert gold_score(world.task("What is 3 + 5?"), "(" * 300 + "8" + ")" * 300) <= 1.0


def test_world_and_data_import_without_torch():
    import subprocess
    import sys
    code = ("import sys, minigpt.world, minigpt.judge, minigpt.corpus, minigpt.data; "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules")
    repo_root = __file__.rsplit("/tests/", 1)[0]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root)


def test_score_accepts_instruction_text(world):
    assert world.gold_score("计算2+2", "4") == 1.0
    with pytest.raises(KeyError):
        world.task("not an instruction of this world")


# ---------------------------------------------------------------------------------------------------------
# demonstrators
EXPECTED = {None: (1.0, 1.0), "preamble": (0.5, 0.6), "rambling": (0.5, 0.5), "repeat_question": (0.4, 0.4),
            "format": (0.5, 0.5), "wrong_language": (0.2, 0.2), "wrong_answer": (0.0, 0.2),
            "refusal": (0.0, 0.0), "earlier_answer": (0.0, 0.0), "forgot_system": (0.5, 0.5)}


def test_every_mistake_scores_as_documented(world):
    rng = random.Random(0)
    seen = set()
    conversations = world.split("rm")[-200:]                                       # dealt last
    for task in world.split("rm")[:600] + conversations + world.split("probe"):
        for mistake in [None] + applicable_mistakes(task):
            response = demonstrator_response(task, rng, mistake)
            lo, hi = EXPECTED[mistake]
            assert lo <= gold_score(task, response) <= hi, (task.instruction, mistake, response)
            seen.add((task.kind, mistake))
    assert {k for k, _ in seen} == set(KINDS) | {"dialogue"}
    assert {m for _, m in seen} == set(MISTAKES) | {None}
    with pytest.raises(ValueError):
        demonstrator_response(world.task("How much is delivery?"), rng, "wrong_language")


def test_demonstrations_mistake_rate_and_mostly_visible(world):
    rng = random.Random(1)
    tasks = world.split("sft_train")
    mistakes = [demonstration(t, rng)[1] for t in tasks]
    wrong = [m for m in mistakes if m is not None]
    assert abs(len(wrong) / len(mistakes) - D.ERROR_RATE) < 0.03
    assert wrong.count("wrong_answer") / len(wrong) < 0.25   # most mistakes are habits of style, visible
    assert set(wrong) == set(MISTAKES)
    assert all(demonstration(t, rng, error_rate=0.0) == (t.answer, None) for t in tasks[:50])


# ---------------------------------------------------------------------------------------------------------
# splits and determinism
def test_splits_sizes_disjoint_and_balanced(world):
    splits = {name: world.split(name) for name in [*SPLIT_SIZES, "dialogue_test", "dialogue_dev"]}
    for name, tasks in splits.items():
        size = SPLIT_SIZES.get(name, 0) + (RM_EXTRA if name == "rm" else 0) + DIALOGUE_SIZES.get(name, 0)
        assert abs(len(tasks) - size) <= len(KINDS) + len(FAMILIES), name
        assert len({t.instruction for t in tasks}) == len(tasks)
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not {t.instruction for t in splits[a]} & {t.instruction for t in splits[b]}, (a, b)
    counts = {k: sum(t.kind == k for t in splits["test"]) for k in KINDS}
    assert min(counts.values()) == max(counts.values())
    families = {f: sum(t.get("family") == f for t in splits["dialogue_test"]) for f in FAMILIES}
    assert min(families.values()) == max(families.values()) == 34


def test_dev_and_extra_rm_prompts_change_no_other_prompt(world, monkeypatch):
    """The rm split is its first deal (SPLIT_SIZES["rm"]) followed by RM_EXTRA more; those and the dev split
    are dealt last: without them every other split and the first deal are the same prompts in the same order.
    Both parts are balanced. The conversations come after all of them."""
    rm = [t for t in world.split("rm") if t.kind != "dialogue"]
    monkeypatch.setattr(W, "RM_EXTRA", 0)
    monkeypatch.setitem(W.SPLIT_SIZES, "dev", 0)
    without = World(0)
    assert without.split("dev") == [] and len(world.split("dev")) == 301
    for name in SPLIT_SIZES:
        if name != "dev":
            single = [t for t in without.split(name) if t.kind != "dialogue"]
            expected = rm[:len(single)] if name == "rm" else world.split(name)[:len(single)]
            assert single == expected, name
    first = len(KINDS) * -(-SPLIT_SIZES["rm"] // len(KINDS))    # ceil per kind, times the kinds
    assert len(rm) == first + RM_EXTRA
    for part in (rm[:first], rm[first:]):
        counts = [sum(t.kind == k for t in part) for k in KINDS]
        assert min(counts) == max(counts) == len(part) // len(KINDS)


def test_probe_facts_never_reach_sft_rm_or_ppo(world):
    probe_en = {e.en for e in world.probe_entries}
    probe_zh = {e.zh for e in world.probe_entries}
    assert len(world.split("probe")) == SPLIT_SIZES["probe"]
    assert all(t.get("en") in probe_en for t in world.split("probe"))
    for name in ("sft_train", "sft_val", "rm", "ppo", "test"):
        for t in world.split(name):
            assert t.get("en") not in probe_en and t.get("word") not in probe_en, t
            assert t.get("zh") not in probe_zh, t


def test_same_seed_same_world_different_seed_different_world(world):
    a, b, c = world, World(0), World(1)
    assert a.split("test") == b.split("test") and a.split("sft_train") == b.split("sft_train")
    assert a.split("test") != c.split("test")
    assert a.corpus(20_000) == b.corpus(20_000) != c.corpus(20_000)
    demos = lambda seed: [demonstration(t, random.Random(seed)) for t in a.split("rm")[:200]]
    assert demos(5) == demos(5)


def test_seed_examples_belong_to_the_world(world):
    for instruction, output in [("翻译成法语：你好", "Bonjour"), ("计算2+2", "4")]:
        task = world.task(instruction)
        assert task.answer == output and world.gold_score(task, output) == 1.0


def test_prompts_and_answers_are_short(world):
    for t in world.split("sft_train"):
        if t.kind == "dialogue":                          # each message: tests/test_dialogues.py
            continue
        assert len(t.instruction.split()) < 20 and len(t.instruction) < 80, t.instruction
        assert len(t.answer) <= (32 if t.kind == "help" else 16), t.answer   # help: one polite line


# ---------------------------------------------------------------------------------------------------------
# pretraining corpus
def test_corpus_size_speed_and_facts(world):
    t0 = time.process_time()
    text = world.corpus()
    # ~1.3 s of CPU on a laptop core (limit generous for busy machines)
    assert time.process_time() - t0 < 4.0
    # a 2048-token BPE trained on this corpus gives ~3.0 chars/token; chars/4 is a conservative proxy
    assert len(text) / 4 >= 1_000_000
    for e in world.probe_entries:   # probe facts ARE taught by pretraining
        assert f" {e.fr}" in text or f"{e.fr} " in text, e
    assert "\ufffd" not in text
    val = world.corpus_val()
    assert 150_000 < len(val) < 250_000 and val[:5000] not in text


# ---------------------------------------------------------------------------------------------------------
# simulated labellers
def _realistic(world, n_tasks=600, k=4):
    rng = random.Random(7)
    tasks = world.split("rm")[:n_tasks]
    return tasks, [[demonstration(t, rng)[0] for _ in range(k)] for t in tasks]


def test_labeler_agreement_at_default_matches_instructgpt(world):
    tasks, responses = _realistic(world)
    agree = labeler_agreement(world, tasks, responses, SimulatedLabeler(1), SimulatedLabeler(2))
    ceiling = gold_agreement(world, tasks, responses, SimulatedLabeler(1))
    assert 0.70 <= agree <= 0.80
    assert agree < ceiling < 0.95
    assert gold_agreement(world, tasks, responses, SimulatedLabeler(1, temperature=0)) == 1.0


def test_labeler_drops_ties_and_is_seeded(world):
    task = world.task("计算2+2")
    responses = ["4", "4", "The answer is 4.", "5", "Sure! The answer is 4."]
    ranking = SimulatedLabeler(0, temperature=0).rank(task, responses)
    assert ranking == [0, 2, 3]  # "4" twice and two 0.6 preambles are ties: only the first of each kept
    assert SimulatedLabeler(9).rank(task, responses * 3) == SimulatedLabeler(9).rank(task, responses * 3)
    instructions = [t.instruction for t in world.split("rm")[:50]]
    responses = [["4", "5"] for _ in instructions]
    agreement = labeler_agreement(world, instructions, responses, SimulatedLabeler(1), SimulatedLabeler(2))
    assert 0.0 <= agreement <= 1.0


def test_task_is_hashable_and_meta_readable(world):
    task = world.task("Translate to French: red. Answer in capitals.")
    assert isinstance(task, Task) and hash(task)
    assert task.get("fmt") == "caps" and task.get("plain") == "rouge" and task.get("missing", 1) == 1
    assert re.fullmatch(r"[A-Z]+", task.answer)


def test_misspelling_never_reads_as_the_right_answer():
    """A 'wrong answer' that the judge scores as right would teach the reward model nonsense."""
    from minigpt.facts import LEXICON
    from minigpt.demonstrators import _misspell
    rng = random.Random(0)
    for e in LEXICON:
        for _ in range(300):                    # "Bonne nuit" -> "Bonne  nuit" came up ~3% of the time
            wrong = _misspell(e.fr, rng)
            assert " ".join(wrong.lower().split()) != " ".join(e.fr.lower().split()), (e.fr, wrong)
