"""minigpt/human_labels.py, the label file of serve.py's ranking tab: a ranking with ties becomes label.py's
line (hand-checked), bad rankings and a file that is not whole are refused with one line and change nothing,
undo removes exactly the last line, and train_rm.py's reader takes the file, alone or mixed with simulated
labels (--data=a,b)."""

import json
import random

import pytest

from minigpt.evaluation import ranking_report
from minigpt.human_labels import LabelFile, LabelFileError, check_labeler, ranking_record
from minigpt.rankings import load_rankings
from minigpt.world import World

SHOWN = {"prompt": "Say something nice.", "answers": ["Hello!", "hi", "You are kind.", "no"],
         "models": ["sft", "ppo", "dpo", "sft"]}


def test_a_ranking_with_a_tie_becomes_one_label_line():
    groups = [["You are kind."], ["hi", "Hello!"], ["no"]]
    r = ranking_record(SHOWN, groups, "ada")
    assert r["prompt"] == "Say something nice." and r["labeler"] == "ada" and r["source"] == "page"
    assert r["responses"] == ["You are kind.", "hi", "no"]             # a tied group keeps its first answer
    assert r["tied"] == [[], ["Hello!"], []]                            # ... and the others beside it
    assert r["models"] == ["dpo", "ppo", "sft"]
    assert "gold" not in r and "kind" not in r                          # not a prompt of the world


def test_a_prompt_of_the_world_gets_its_gold_scores():
    world = World(0)
    task = world.split("rm")[0]
    answers = [world.demonstrator_response(task, random.Random(0)), "banana", "no idea"]   # right, 2 wrong
    shown = {"prompt": task.instruction, "answers": answers, "models": ["sft"] * 3}
    r = ranking_record(shown, [[answers[2]], [answers[0]], [answers[1]]], "ada", world)
    assert r["gold"] == [world.gold_score(task, a) for a in (answers[2], answers[0], answers[1])]
    assert r["gold"][1] > r["gold"][0]                                  # the person put the right one 2nd
    assert r["kind"] == task.kind


@pytest.mark.parametrize("groups, message", [
    ([["You are kind."], ["hi", "Hello!"], ["no", "Goodbye."]], 'unknown answer "Goodbye."'),
    ([["You are kind."], ["hi", "Hello!"], ["no", "hi"]], 'answer "hi" is ranked twice'),
    ([["You are kind."], ["hi", "Hello!"]], 'answer "no" is not ranked'),
    ([["You are kind.", "hi", "Hello!", "no"]], "every answer is tied"),
    ([["You are kind."], []], "'ranking' must be a list of groups"),
    ("hi > no", "'ranking' must be a list of groups"),
])
def test_a_bad_ranking_is_one_line(groups, message):
    with pytest.raises(ValueError) as e:
        ranking_record(SHOWN, groups, "ada")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_labeler_names():
    assert check_labeler("  ada ") == "ada"
    for bad in ("", "   ", None, "a" * 61, "ada\nbob"):
        with pytest.raises(ValueError):
            check_labeler(bad)


def line(record):
    return json.dumps(record, ensure_ascii=False) + "\n"


def test_append_and_undo_change_exactly_the_last_line(tmp_path):
    path = tmp_path / "labels" / "human.jsonl"                           # its folder is made
    f = LabelFile(str(path))
    assert f.records() == [] and not path.exists()
    first = ranking_record(SHOWN, [["hi"], ["no"], ["Hello!", "You are kind."]], "ada")
    second = ranking_record(SHOWN, [["no"], ["hi", "Hello!", "You are kind."]], "bob")
    assert f.append(first) == 1 and f.append(second) == 2
    assert path.read_text() == line(first) + line(second)
    with pytest.raises(ValueError, match='is by "bob", not by "ada"'):   # only its labeller undoes it
        f.undo("ada")
    assert path.read_text() == line(first) + line(second)
    assert f.undo("bob") == (second, 1)
    assert path.read_text() == line(first)
    assert f.undo("ada") == (first, 0) and path.read_text() == ""
    with pytest.raises(ValueError, match="no ranking to undo"):
        f.undo("ada")
    assert not (tmp_path / "labels" / "human.jsonl.tmp").exists()


@pytest.mark.parametrize("tail, where, message", [
    (b'{"prompt": "Say something nice.", "respon', 2, "the last line has no newline"),
    (b'{"prompt": "Say something nice.", "respon\n', 2, "not a JSON object"),
    (b'[1, 2]\n', 2, "not a JSON object"),
])
def test_a_file_that_is_not_whole_is_refused_and_kept(tmp_path, tail, where, message):
    path = tmp_path / "human.jsonl"
    f = LabelFile(str(path))
    f.append(ranking_record(SHOWN, [["hi"], ["no"], ["Hello!", "You are kind."]], "ada"))
    path.write_bytes(path.read_bytes() + tail)                          # a crash of another writer, mid-line
    before = path.read_bytes()
    with pytest.raises(LabelFileError) as e:
        LabelFile(str(path))                                             # serve.py refuses it at start
    assert str(e.value).startswith(f"{path}:{where}: {message}") and "\n" not in str(e.value)
    another = ranking_record(SHOWN, [["hi"], ["no", "Hello!", "You are kind."]], "ada")
    for change in (lambda: f.append(another), lambda: f.undo("ada"), f.records):
        with pytest.raises(LabelFileError):
            change()
        assert path.read_bytes() == before                              # nothing lost, nothing added


def test_the_trainers_read_the_file_alone_and_mixed_with_simulated_labels(tmp_path, capsys):
    human = LabelFile(str(tmp_path / "human.jsonl"))
    made = [ranking_record({**SHOWN, "prompt": f"Say something nice, {n}."},
                           [["You are kind."], ["hi", "Hello!"], ["no"]], "ada") for n in range(4)]
    for r in made:
        human.append(r)
    simulated = tmp_path / "train.jsonl"
    sim = [{"prompt": f"Add {n} and 1.", "responses": [str(n + 1), "0"], "labeler": "simulated-1337",
            "gold": [1.0, 0.0]} for n in range(3)]
    simulated.write_text("".join(line(r) for r in sim))
    held_out = tmp_path / "val.jsonl"
    held_out.write_text(line({"prompt": "Add 9 and 1.", "responses": ["10", "0"], "gold": [1.0, 0.0]}))

    train, val = load_rankings("", data=f"{simulated},{human.path}", val_data=str(held_out))
    assert [r["prompt"] for r in train] == [r["prompt"] for r in sim + made]     # in order, nothing dropped
    assert train[3]["responses"] == ["You are kind.", "hi", "no"] and train[3]["tied"] == [[], ["Hello!"], []]
    assert [r["prompt"] for r in val] == ["Add 9 and 1."]
    assert "7 read" in capsys.readouterr().out                          # cleaned together: one line
    alone, _ = load_rankings("", data=human.path, val_fraction=0.25)
    assert len(alone) == 3


def test_gold_numbers_come_from_the_rankings_that_have_gold():
    # the first ranking has no gold (a typed prompt), the second has: its pair is ordered like gold
    records = [{"responses": ["a", "b"]}, {"responses": ["c", "d"], "gold": [1.0, 0.0]}]
    out = ranking_report(records, [[0.0, 1.0], [0.5, 0.1]])
    assert out["accuracy"] == 0.5 and out["gold_accuracy"] == 1.0 and out["ceiling"] == 1.0
    assert out["golds"] == [1.0, 0.0] and out["rewards"] == [0.5, 0.1]
    assert ranking_report(records[:1], [[0.0, 1.0]]) == {"accuracy": 0.0}
