"""The chat template (minigpt/data.py: encode_conversation, fit_conversation): conversations of system, user
and assistant turns as token ids and a mask, built by hand here; a single turn is byte for byte what SFT
saw."""

import pytest

from minigpt.data import (encode_conversation, encode_for_reward, encode_prompt_response, fit_conversation,
                          render_prompt)
from minigpt.tokenizer import EOS, Tokenizer

EOT = 0


class CharTokenizer:
    """One token per character (its code point); end-of-text is 0, which no character here uses."""
    eos_id, pad_id = EOT, 1

    def encode(self, text):
        return [ord(c) for c in text]


def ids_of(text):
    return [ord(c) for c in text]


def prompt(text):
    return ids_of(f"### Instruction:\n{text}\n\n### Response:\n")


def answer(text):
    return ids_of(text) + [EOT]


@pytest.fixture(scope="module")
def bpe():
    return Tokenizer.train("Add 3 and 4: the answer is 7. The cat sat on the mat. " * 30, 300)


def test_a_single_turn_is_exactly_what_sft_saw(bpe):
    for text in ("Add 3 and 4.", "计算2+2", f"say {EOS} please", ""):
        ids, mask = encode_conversation(bpe, [("user", text)])
        assert ids == bpe.encode(render_prompt(text)) and mask == [0] * len(ids)
        for reply in ("7", f"it is {EOS} 7", ""):
            big = 10 ** 9
            assert encode_conversation(bpe, [("user", text), ("assistant", reply)]) == \
                encode_prompt_response(bpe, render_prompt(text), reply, big)
    # the end-of-text string typed in a message is ordinary text, not the end-of-text token
    ids, _ = encode_conversation(bpe, [("user", EOS)])
    assert bpe.eos_id not in ids


def test_system_block_turns_and_mask_by_hand():
    tok = CharTokenizer()
    messages = [("system", "Be brief."), ("user", "u1"), ("assistant", "a1"), ("user", "u2")]
    ids, mask = encode_conversation(tok, messages)
    system = ids_of("### System:\nBe brief.\n\n")
    assert ids == system + prompt("u1") + answer("a1") + prompt("u2")
    assert mask == [0] * len(system + prompt("u1")) + [1] * 3 + [0] * len(prompt("u2"))
    # ending with an answer: every assistant turn and its end-of-text is in the mask
    ids, mask = encode_conversation(tok, messages + [("assistant", "a2")])
    assert ids[-3:] == answer("a2") and mask[-3:] == [1, 1, 1] and sum(mask) == 6


def test_runs_of_one_role_are_joined_and_system_messages_go_on_top():
    tok = CharTokenizer()
    messages = [("user", "a"), ("system", "s1"), ("user", "b"), ("assistant", "x"), ("assistant", "y"),
                ("system", "s2"), ("user", "c")]
    ids, mask = encode_conversation(tok, messages)
    assert ids == ids_of("### System:\ns1\ns2\n\n") + prompt("a\nb") + answer("x\ny") + prompt("c")
    assert sum(mask) == len(answer("x\ny"))
    with pytest.raises(ValueError, match="tool"):
        encode_conversation(tok, [("tool", "x"), ("user", "y")])


def test_fit_drops_the_oldest_turns_never_the_system_or_last_message():
    tok = CharTokenizer()
    system = ids_of("### System:\nS\n\n")
    messages = [("system", "S"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2"),
                ("user", "u3")]
    whole = system + prompt("u1") + answer("a1") + prompt("u2") + answer("a2") + prompt("u3")
    assert fit_conversation(tok, messages, len(whole)) == (whole, 0)
    one_less = system + prompt("u2") + answer("a2") + prompt("u3")
    assert fit_conversation(tok, messages, len(whole) - 1) == (one_less, 1)
    assert fit_conversation(tok, messages, len(one_less)) == (one_less, 1)
    least = system + prompt("u3")
    assert fit_conversation(tok, messages, len(one_less) - 1) == (least, 2)
    assert fit_conversation(tok, messages, len(least)) == (least, 2)
    with pytest.raises(ValueError, match=f"the prompt is {len(least)} tokens"):
        fit_conversation(tok, messages, len(least) - 1)
    # a lone user message that fits is exactly the single-turn prompt; one that does not is an error
    assert fit_conversation(tok, [("user", "hi")], 100) == (prompt("hi"), 0)
    with pytest.raises(ValueError, match=f"the prompt is {len(prompt('hi'))} tokens; 5 fit"):
        fit_conversation(tok, [("user", "hi")], 5)


def test_the_reward_model_reads_the_whole_conversation():
    tok = CharTokenizer()
    # an instruction string: unchanged, the single-turn encoding
    assert encode_for_reward(tok, "q", "r", 100) == encode_prompt_response(tok, render_prompt("q"), "r", 100)
    assert encode_for_reward(tok, [("user", "q")], "r", 100) == encode_for_reward(tok, "q", "r", 100)
    conversation = [("system", "S"), ("user", "u1"), ("assistant", "a1"), ("user", "u2")]
    ids, mask = encode_for_reward(tok, conversation, "r", 1000)
    assert ids == encode_conversation(tok, conversation + [("assistant", "r")])[0]
    assert mask == [0] * (len(ids) - 2) + [1, 1]          # the last answer only, not a1
    ids, mask = encode_for_reward(tok, conversation, "r", 10)   # too long: the start is cut, never the end
    assert ids == prompt("u2")[-8:] + answer("r") and mask[-2:] == [1, 1]
