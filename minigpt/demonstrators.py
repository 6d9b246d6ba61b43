"""The simulated demonstrators: the people who write the SFT answers, with their habits.

`demonstration(task, rng)` is the right answer or (ERROR_RATE = 60%) a response with one mistake drawn
by MISTAKE_WEIGHTS: mostly style (a preamble, a closing pleasantry, ...), some wrong answers. `decorate` wraps
any text in a habit of style, for the labellers to compare (label.py). Plain Python only (no torch, no
numpy); every draw comes from the rng passed in.
"""

from minigpt.facts import LEXICON, NUMBER_WORDS
from minigpt.judge import (EARLIER_ANSWER, FORGOT_SYSTEM, FORMAT, HELP_ANSWERS, NUMERIC_KINDS, PREAMBLE,
                           RAMBLING, REFUSAL, REPEAT_QUESTION, WRONG_ANSWER, WRONG_LANGUAGE)
from minigpt.tasks import shop_facts

# The demonstrators' habits. InstructGPT's premise: demonstrations are costly and carry their writers'
# habits, SFT copies them, and labellers who compare answers notice them. So the world's demonstrators are
# sloppy the way contractors are: most of their slips are habits of style that anyone comparing two answers
# sees (and a reward model can learn), a smaller share are wrong facts (that only someone who knows the fact
# sees).
#
#   a demonstration is sloppy with probability ERROR_RATE; its one mistake is drawn by these weights
#   (among the mistakes that apply to the task: a format slip needs a format line, ...)
#
#   mistake          weight   what it looks like                                    gold (judge.py)
#   preamble          0.30    "Sure! The answer is rouge."                          0.6
#   rambling          0.25    "rouge. I hope this helps!"  (a closing pleasantry)   0.5
#   repeat_question   0.10    "Translate to French: red rouge"                      0.4
#   format            0.15    "rouge" when capitals were asked; "eight" for "8"     0.5
#   wrong_language    0.05    "red" or "红色" for French                            0.2
#   wrong_answer      0.15    "bleu"; on `help` prompts a made-up fact ("6pm")      0-0.2
#   refusal           0.05    "Sorry, I cannot help with that." to a request the    0.0
#                             desk CAN serve (over-caution; never on `help` prompts)
# and in a conversation (minigpt/dialogues.py), on its last answer:
#   earlier_answer    0.15    "rouge" to "And blue?" (the earlier question again)   0.0
#   forgot_system     0.15    "bleu" when the system message asked for capitals     0.5
#
# At ERROR_RATE = 0.6, 46% of the SFT demonstrations show a habit of style, 10% are wrong and 3% refuse.
# `train_sft.py --error_rate=0` trains on clean demonstrations (README: the lesson, measured).
# (the names are the judge's: minigpt.judge.MISTAKE_KINDS, which adds `off_topic`)
MISTAKES = [PREAMBLE, FORMAT, WRONG_LANGUAGE, REPEAT_QUESTION, RAMBLING, WRONG_ANSWER, REFUSAL,
            EARLIER_ANSWER, FORGOT_SYSTEM]
MISTAKE_WEIGHTS = {PREAMBLE: 0.30, RAMBLING: 0.25, REPEAT_QUESTION: 0.10, FORMAT: 0.15, WRONG_LANGUAGE: 0.05,
                   WRONG_ANSWER: 0.15, REFUSAL: 0.05, EARLIER_ANSWER: 0.15, FORGOT_SYSTEM: 0.15}
ERROR_RATE = 0.6
PREAMBLES = {"en": ["Sure! The answer is", "Of course. The answer is", "Good question! It is",
                    "Let me help. The answer is", "Here you go:", "Happy to help! It is",
                    "OK, so the answer is"],
             "zh": ["好的！答案是", "当然，答案是", "没问题，答案是",
                    "这个问题很好，答案是", "让我来回答：", "好的，结果是"]}
TAILS = {"en": ["I hope this helps!", "Let me know if you have other questions.",
                "Is there anything else I can do?", "Have a great day!", "Thanks for asking!",
                "That is all there is to it."],
         "zh": ["希望对你有帮助！", "还有其他问题吗？", "祝你今天愉快！",
                "谢谢你的提问！"]}
NOTES = {"en": ["final answer", "I think", "that is it"], "zh": ["最终答案", "我觉得", "就这样"]}
# a made-up fact: what a sloppy demonstrator answers to a greeting or a request it should decline
MADE_UP_FACTS = ["6pm", "9am", "4", "7", "$12", "Bonjour", "3 + 4", "30", "Paris", "Madrid", "sunny",
                 "closed"]


# ---------------------------------------------------------------------------------------------------------
# Simulated demonstrators
def applicable_mistakes(task):
    """Mistake kinds that make sense for this task (format needs a format line; wrong_language a translation
    or a small number; in a conversation, those of the task its follow-up stands for, plus its own)."""
    if task.kind == "dialogue":
        last, system_fmt = task.get("last"), task.get("system_fmt")
        kinds = [m for m in applicable_mistakes(last) if not (system_fmt and m == FORMAT)]
        if task.get("earlier").lower() != task.answer.lower():
            kinds.append(EARLIER_ANSWER)
        if system_fmt:
            kinds.append(FORGOT_SYSTEM)
        return kinds
    if task.kind == "help":   # a preamble before a greeting reads as a greeting; no format line, no French
        return [REPEAT_QUESTION, RAMBLING, WRONG_ANSWER]
    kinds = [PREAMBLE, RAMBLING, REPEAT_QUESTION, WRONG_ANSWER, REFUSAL]
    if task.get("fmt"):
        kinds.append(FORMAT)
    if task.kind.startswith("translate") or (task.kind in NUMERIC_KINDS and int(task.answer) <= 20):
        kinds.append(WRONG_LANGUAGE)
    return [m for m in MISTAKES if m in kinds]


SURFACE_MISTAKES = (PREAMBLE, RAMBLING, REPEAT_QUESTION)


def decorate(task, text, rng, mistake):
    """Wrap ANY answer text (say, a policy sample) in a surface mistake: a preamble, a rambling tail or the
    question repeated. Labellers comparing y with decorate(y) see a pure style difference with the content
    held fixed, which is how a reward model learns the style preference without confusing it with
    correctness."""
    task = task.get("last") if task.kind == "dialogue" else task    # the question is the follow-up
    lang, en = task.get("lang"), task.get("lang") == "en"
    if mistake == PREAMBLE:
        pre = rng.choice(PREAMBLES[lang])
        return f"{pre} {text}." if en else f"{pre}{text}。"
    if mistake == RAMBLING:
        tail = rng.choice(TAILS[lang])
        stop = "" if text.endswith((".", "!", "?", "。", "！", "？")) else "." if en else "。"
        return f"{text}{stop} {tail}" if en else f"{text}{stop}{tail}"
    if mistake == REPEAT_QUESTION:
        return task.get("question") + rng.choice([" ", "\n"]) + text
    raise ValueError(f"decorate() takes one of {SURFACE_MISTAKES}, got {mistake!r}")


def demonstrator_response(task, rng, mistake=None):
    """A response to task: the right answer (mistake=None) or one showing the given kind of mistake."""
    if mistake is None:
        return task.answer
    if mistake not in applicable_mistakes(task):
        raise ValueError(f"mistake {mistake!r} does not apply to a {task.kind} task {task.instruction!r}")
    if task.kind == "dialogue":
        if mistake == EARLIER_ANSWER:
            return task.get("earlier")
        return demonstrator_response(task.get("last"), rng, FORMAT if mistake == FORGOT_SYSTEM else mistake)
    lang, ans = task.get("lang"), task.answer
    if mistake in SURFACE_MISTAKES:
        return decorate(task, ans, rng, mistake)
    if mistake == FORMAT:
        return _format_mistake(task, rng)
    if mistake == REFUSAL:
        return HELP_ANSWERS["request", lang]
    if mistake == WRONG_LANGUAGE:
        if task.kind.startswith("translate"):
            word = rng.choice([task.get("en"), task.get("zh")])
            return word.upper() if task.get("fmt") == "caps" else word
        n = int(ans)  # a number word in another language (not "six" for an English prompt: same in French)
        return rng.choice([NUMBER_WORDS[x][n] for x in NUMBER_WORDS
                           if NUMBER_WORDS[x][n] != NUMBER_WORDS[lang][n]])
    return _wrong_answer(task, rng)


def _format_mistake(task, rng):
    fmt, ans, lang = task.get("fmt"), task.answer, task.get("lang")
    if fmt == "caps":
        return task.get("plain")
    if fmt == "expr":
        return rng.choice([f"print({ans})", f"x = {ans}", f"`{ans}`"])
    if fmt == "number" and rng.random() < 0.5:
        return NUMBER_WORDS[lang][int(ans)]
    note = task.get("en") if task.kind == "translate_en" else rng.choice(NOTES[lang])
    return f"{ans} ({note})"


def _wrong_answer(task, rng):
    kind, ans = task.kind, task.answer
    if kind == "help":
        return rng.choice(MADE_UP_FACTS)   # answers anyway, with a fact from nowhere
    if kind == "arithmetic":
        n = int(ans)
        return str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1)
    if kind == "compare":
        return str(min(task.get("a"), task.get("b")))
    if kind == "code":
        a, b, op = task.get("a"), task.get("b"), task.get("op")
        target = {"+": a + b, "-": a - b, "*": a * b}[op]
        for other in rng.sample("+-*", 3):
            if other != op and {"+": a + b, "-": a - b, "*": a * b}[other] != target:
                return f"{a} {other} {b}"
        return f"{a} {op} {b + 1}"
    if kind == "shop":
        fact_type = task.get("fact").split(":")[0]
        distractors = {"open": {"8am", "11am"}, "close": {"7pm", "9pm"}, "returns": {"14", "60"}}
        others = sorted({v for f, _, v in shop_facts() if f.split(":")[0] == fact_type and v != ans}
                        | distractors.get(fact_type, {"$7", "$19"}))
        return rng.choice(others)
    if kind.startswith("translate"):
        plain = task.get("plain")
        if rng.random() < 0.5:
            cat = next(e.cat for e in LEXICON if e.fr == plain)
            plain = rng.choice([e.fr for e in LEXICON if e.cat == cat and e.fr != plain])
        else:
            plain = _misspell(plain, rng)
        return plain.upper() if task.get("fmt") == "caps" else plain
    raise ValueError(f"unknown task kind {kind!r}")


def _misspell(word, rng):
    """Drop, double or swap one letter; always returns something the judge reads as different from word
    (a doubled space, say, would not be: the judge ignores it)."""
    letters = [i for i, c in enumerate(word) if c.isalpha()] or list(range(len(word)))
    for _ in range(20):
        i = rng.choice(letters)
        choice = rng.randrange(3)
        if choice == 0 and len(word) > 2:
            out = word[:i] + word[i + 1:]
        elif choice == 1:
            out = word[:i] + word[i] + word[i:]
        else:
            j = min(i + 1, len(word) - 1)
            out = word[:i] + word[j] + word[i] + word[j + 1:] if j > i else word
        if " ".join(out.lower().split()) != " ".join(word.lower().split()):
            return out
    return word + word[-1]


def demonstration(task, rng, error_rate=ERROR_RATE):
    """A simulated labeller's demonstration -> (response, mistake kind or None)."""
    if rng.random() >= error_rate:
        return task.answer, None
    kinds = applicable_mistakes(task)
    mistake = rng.choices(kinds, weights=[MISTAKE_WEIGHTS[m] for m in kinds])[0]
    return demonstrator_response(task, rng, mistake), mistake
