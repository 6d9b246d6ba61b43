"""Conversations in the world (minigpt/dialogues.py): the tasks, the judge on the last turn, the
demonstrators' dialogue habits, the splits, and every stage's view of a conversation prompt."""

import json
import random

import pytest

from minigpt.data import (as_conversation, encode_conversation, load_comparisons, prompt_to_json,
                          render_conversation)
from minigpt.demonstrators import applicable_mistakes, demonstration, demonstrator_response
from minigpt.dialogues import FAMILIES, NEEDS_EARLIER
from minigpt.judge import EARLIER_ANSWER, FORGOT_SYSTEM, gold_score, mistakes
from minigpt.rankings import clean_rankings
from minigpt.sft_data import world_demonstrations
from minigpt.tokenizer import Tokenizer
from minigpt.world import World


@pytest.fixture(scope="module")
def world():
    return World(0)


def test_a_price_follow_up_is_judged_on_the_last_turn(world):
    t = world.task([("user", "How much is the umbrella?"), ("assistant", "$12"), ("user", "How much for 2?")])
    assert t.kind == "dialogue" and t.answer == "$24" and t.get("earlier") == "$12"
    assert gold_score(t, "$24") == 1.0 and mistakes(t, "$24") == []
    assert gold_score(t, "$12") == 0.0 and mistakes(t, "$12") == [EARLIER_ANSWER]   # the first question again
    assert gold_score(t, "Sure! The answer is $24.") == 0.6                          # style as in one turn
    assert gold_score(t, "$25") == 0.1333                  # a near miss, as in one turn (0.2 x 2/3)
    assert gold_score(t, "$100") == 0.0 and mistakes(t, "$100") == ["wrong_answer"]


def test_the_system_format_holds_on_every_turn(world):
    caps = [t for t in world.split("rm") if t.get("system_fmt") == "caps"]
    t = caps[0]
    assert t.prompt[0] == ("system", "Always answer in capitals.") or t.prompt[0][1] == "请一直用大写字母回答。"
    assert t.prompt[2][1] == t.prompt[2][1].upper()                    # the earlier answer followed it
    assert t.answer == t.answer.upper()
    assert gold_score(t, t.answer) == 1.0
    assert gold_score(t, t.answer.lower()) == 0.5 and mistakes(t, t.answer.lower()) == [FORGOT_SYSTEM]


def test_a_compare_follow_up_asks_the_larger_of_the_answer_and_the_new_number(world):
    t = world.task([("user", "Which number is bigger: 1 or 9?"), ("assistant", "9"),
                    ("user", "What about 17?")])
    assert t.answer == "17"
    same = [t for t in world.split("sft_train")
            if t.get("family") == "compare" and t.answer == t.get("earlier")]
    assert same, "some follow-ups keep the answer"
    assert gold_score(same[0], same[0].answer) == 1.0      # then repeating it is right, not earlier_answer


def test_greeting_then_request(world):
    greet = [t for t in world.split("dialogue_test") if t.get("family") == "greeting"]
    t = greet[0]
    assert t.prompt[1][0] == "assistant" and t.get("earlier") == t.prompt[1][1]
    assert gold_score(t, t.answer) == 1.0
    assert gold_score(t, t.get("earlier")) == 0.0 and mistakes(t, t.get("earlier")) == [EARLIER_ANSWER]


def test_every_dialogue_habit_is_named_by_the_judge(world):
    rng = random.Random(0)
    seen = set()
    for t in world.split("rm")[-420:]:                       # the conversations are dealt last
        assert t.kind == "dialogue"
        for m in applicable_mistakes(t):
            r = demonstrator_response(t, rng, m)
            if m in (EARLIER_ANSWER, FORGOT_SYSTEM):
                assert mistakes(t, r) == [m], (t.instruction, m, r)
                seen.add(m)
    assert seen == {EARLIER_ANSWER, FORGOT_SYSTEM}


def test_splits_are_balanced_and_keep_held_out_questions_out_of_training(world):
    test = world.split("dialogue_test")
    assert {t.get("family") for t in test} == set(FAMILIES) and set(NEEDS_EARLIER) < set(FAMILIES)
    held_out = {t.instruction for name in ("test", "dev", "probe") for t in world.split(name)}
    for name in ("sft_train", "sft_val", "rm", "ppo"):
        convs = [t for t in world.split(name) if t.kind == "dialogue"]
        assert convs and not any(text in held_out for t in convs for role, text in t.prompt if role == "user")
    keys = [t.prompt for name in ("sft_train", "rm", "ppo", "dialogue_test", "dialogue_dev")
            for t in world.split(name) if t.kind == "dialogue"]
    assert len(keys) == len(set(keys))                                  # disjoint splits
    probe_words = {e.en for e in world.probe_entries} | {e.zh for e in world.probe_entries}
    for t in world.split("sft_train") + world.split("rm"):
        if t.get("family") == "translate":
            assert t.get("last").get("en") not in probe_words
    assert World(0).split("dialogue_test") == test and World(1).split("dialogue_test") != test


def test_sft_learns_every_assistant_turn_of_a_conversation(world):
    tok = Tokenizer.train(render_conversation(world.split("sft_train")[-1].prompt) * 3, vocab_size=300)
    convs, _ = world_demonstrations(world, "sft_val", random.Random(0), error_rate=0.0)
    conv = next(c for c in convs if len(c) >= 4)
    ids, mask = encode_conversation(tok, conv)
    answers = [text for role, text in conv if role == "assistant"]
    assert len(answers) == 2                                           # the earlier answer and the last
    learnt = [i for i, m in zip(ids, mask) if m]
    assert learnt == tok.encode(answers[0]) + [tok.eos_id] + tok.encode(answers[1]) + [tok.eos_id]


def test_a_conversation_prompt_survives_a_label_file(world, tmp_path):
    t = world.split("dialogue_dev")[0]
    line = {"prompt": prompt_to_json(t.prompt), "responses": [t.answer, t.get("earlier")]}
    assert line["prompt"][-1] == {"role": "user", "content": t.prompt[-1][1]}
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps(line, ensure_ascii=False) + "\n", encoding="utf-8")
    [record] = load_comparisons(str(path))
    assert record["prompt"] == t.prompt and world.task(record["prompt"]) is t
    assert world.task(line["prompt"]) is t                              # as JSON keeps it, too
    kept, _ = clean_rankings([record])
    assert kept[0]["prompt"] == t.prompt
    assert as_conversation("Add 2 and 2.") == [("user", "Add 2 and 2.")]
