"""The gold judge: how good is a response to one of the world's tasks, exactly? A score in [0, 1].

It stands in for what the human labellers would really think, so every claim in this project ("PPO beat SFT")
is measured against it. It reads the response the way a strict teacher would: is the right answer there (a
whole word; numbers compared as numbers; code parsed with `ast`, never eval), in the asked format, without
anything around it? The table in `gold_score` lists every rule. The models never see this judge: the
reward model learns from the simulated labellers' noisy rankings of it (minigpt/world.py), PPO only from
the reward model.

Plain Python only (no torch, no numpy).
"""

import ast
import re
import unicodedata

from minigpt.facts import LEXICON, NUMBER_WORDS

# `help`: a greeting gets a greeting back; a request the assistant cannot serve (no facts about it in this
# world) gets a short refusal (the gold answers of minigpt/tasks.py's `help` tasks). A polite line where an
# answer was due is a `refusal`.
HELP_ANSWERS = {("greeting", "en"): "Hello! How can I help?",
                ("greeting", "zh"): "你好！有什么可以帮你？",
                ("request", "en"): "Sorry, I cannot help with that.",
                ("request", "zh"): "抱歉，这个我帮不了。"}
HELP_LINES = tuple(HELP_ANSWERS.values())

# What can be wrong with a response: the demonstrators' mistakes (minigpt/demonstrators.py makes them, with
# the weights and examples it lists), plus `off_topic`, which no demonstrator makes. The judge names them in
# any answer.
PREAMBLE, FORMAT, WRONG_LANGUAGE, REPEAT_QUESTION, RAMBLING, WRONG_ANSWER, REFUSAL, OFF_TOPIC = (
    "preamble", "format", "wrong_language", "repeat_question", "rambling", "wrong_answer", "refusal",
    "off_topic")
# a conversation's own (minigpt/dialogues.py): the earlier question answered again; the format a system
# message set for every turn dropped
EARLIER_ANSWER, FORGOT_SYSTEM = "earlier_answer", "forgot_system"
MISTAKE_KINDS = (PREAMBLE, RAMBLING, REPEAT_QUESTION, FORMAT, WRONG_LANGUAGE, WRONG_ANSWER, REFUSAL,
                 OFF_TOPIC, EARLIER_ANSWER, FORGOT_SYSTEM)
# the mistakes that leave the asked fact unanswered (the rest are of style or format)
FACT_MISTAKES = (WRONG_LANGUAGE, WRONG_ANSWER, REFUSAL, OFF_TOPIC, EARLIER_ANSWER)

NUMERIC_KINDS = ("arithmetic", "compare")     # answers compared as numbers
BARE_FORMATS = ("one_word", "number", "expr")  # these forbid any words around the answer

_LATIN = r"A-Za-z0-9\u00C0-\u024F\u0152\u0153"  # letters/digits that make a word boundary (incl. é, œ)
_FRENCH_RE = re.compile(r"(?<![%s])(?:%s)(?![%s])" % (
    _LATIN, "|".join(re.escape(e.fr) for e in sorted(LEXICON, key=lambda e: -len(e.fr))), _LATIN), re.I)
_END_PUNCT = ("", ".", "!", "。", "！")


def _normalise(s):
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", s)).strip()


def _find_last(text, target, ignore_case):
    """Last whole-word occurrence of target in text -> (start, end) or None."""
    pat = r"(?<![%s])%s(?![%s])" % (_LATIN, re.escape(target), _LATIN)
    hits = list(re.finditer(pat, text, re.I if ignore_case else 0))
    return (hits[-1].start(), hits[-1].end()) if hits else None


def _numbers(text):
    return [(m.start(), m.end(), int(m.group())) for m in re.finditer(r"\d+", text)]


_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}


def _eval_arith(node):
    """Evaluate an AST made ONLY of int literals, unary minus and + - * (never eval on raw text)."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval_arith(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval_arith(node.left), _eval_arith(node.right)
        return {"+": left + right, "-": left - right, "*": left * right}[_OPS[type(node.op)]]
    raise ValueError("not a +-* expression of integer literals")


def _expressions(text):
    """Arithmetic expressions found in text -> list of (start, end, ast node, value)."""
    found = []
    for m in re.finditer(r"[\d(][\d\s+\-*()]*", text):
        s = m.group()
        for cut in (s.strip(), s.strip().strip("()").strip()):
            if not cut:
                continue
            try:
                node = ast.parse(cut, mode="eval").body
                value = _eval_arith(node)
            except (SyntaxError, ValueError, RecursionError):
                continue
            start = m.start() + s.index(cut)
            found.append((start, start + len(cut), node, value))
            break
    return found


def _is_requested_expr(node, task):
    """BinOp with the asked operator over the literals a and b (either order for + and *)."""
    a, b, op = task.get("a"), task.get("b"), task.get("op")
    if not (isinstance(node, ast.BinOp) and _OPS.get(type(node.op)) == op):
        return False
    if not all(isinstance(n, ast.Constant) and type(n.value) is int for n in (node.left, node.right)):
        return False
    pair = (node.left.value, node.right.value)
    return pair == (a, b) or (op != "-" and pair == (b, a))


def _question(task):
    """The instruction without its format line, normalised, lower case, no final punctuation."""
    return _normalise(task.get("question")).lower().rstrip(".?!。？！")


def _without_question(task, r):
    """r with the repeated question cut out (and the punctuation that ended it), or None if r does not repeat
    it. A question that the right answer itself contains ("Hello!" -> "Hello! How can I help?") does not count
    as repeated."""
    q = _question(task)
    at = r.lower().find(q)
    if not q or at < 0 or q in task.answer.lower():
        return None
    return (r[:at].strip() + " " + r[at + len(q):].lstrip(" .?!。？！")).strip()


def _locate(task, r):
    """Where the right answer sits in response r -> (start, end, case_ok), or None if absent or ambiguous."""
    kind = task.kind
    if kind in ("translate_en", "translate_zh"):
        plain = task.get("plain").lower()
        matches = [(m.start(), m.end()) for m in _FRENCH_RE.finditer(r)]
        if not matches or any(r[s:e].lower() != plain for s, e in matches):
            return None  # no French word, or another lexicon word too (hedging "chat chien" is not an answer)
        s, e = matches[-1]
        return s, e, r[s:e] == task.answer
    if kind in NUMERIC_KINDS or kind == "shop":
        allowed = {n for _, _, n in _numbers(task.instruction)} | {n for _, _, n in _numbers(task.answer)}
        if any(n not in allowed for _, _, n in _numbers(r)):
            return None  # an extra number that is neither the answer nor from the question
    if kind == "compare":   # (a repeated question, which names both, is cut off before this is called)
        if any(n != int(task.answer) for _, _, n in _numbers(r)):
            return None  # both numbers given (and not as a repeated question): a hedge, not an answer
    if kind in NUMERIC_KINDS:
        hits = [(s, e) for s, e, n in _numbers(r) if n == int(task.answer)]
        return (*hits[-1], True) if hits else None
    if kind == "code":
        hits = [(s, e) for s, e, node, _ in _expressions(r) if _is_requested_expr(node, task)]
        return (*hits[-1], True) if hits else None
    span = _find_last(r, task.answer, ignore_case=True)
    return (*span, r[span[0]:span[1]] == task.answer) if span else None


def _edit_distance(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _string_credit(core, answer):
    # A near miss, at most 2 edits from the answer (a misspelt word, "8am" for "9am"), earns
    # 0.2 * (1 - normalised edit distance); anything further off is simply wrong. (Until this rule, every
    # wrong string earned a little by its letters in common, so two wrong translations were ordered by
    # spelling: no labeller compares "chien" and "vache" as answers for "cat", and those pairs were a fifth of
    # the pairs that decided the win rates.)
    distance = _edit_distance(core, answer)
    return 0.2 * (1 - distance / max(len(core), len(answer), 1)) if distance <= 2 else 0.0


def _no_answer_score(task, r):
    """Score of a response that does not contain the right answer: wrong language, number words, partial."""
    core = r.strip(" .!。！")
    kind, lang = task.kind, task.get("lang")
    polite = any(_normalise(a).lower() in r.lower() for a in HELP_LINES)
    # help: the other polite line (a refusal to a greeting, a greeting to a request), or made up
    if kind == "help":
        return 0.3 if polite else 0.0
    if polite:           # declining (or greeting) a request the desk can serve: no answer at all
        return 0.0
    if kind in ("translate_en", "translate_zh"):
        if core.lower() in (task.get("en").lower(), task.get("zh")):
            return 0.2  # wrong language: the English or Chinese word instead of the French
        return _string_credit(core.lower(), task.answer.lower())
    if kind in NUMERIC_KINDS:
        n = int(task.answer)
        if n <= 20 and core.lower() == NUMBER_WORDS[lang][n]:
            return 0.5  # right number, written as a word
        if n <= 20 and core.lower() in [NUMBER_WORDS[other][n] for other in NUMBER_WORDS if other != lang]:
            return 0.2  # right number, in another language
        if kind == "compare":
            return 0.0  # the other number of the two: no partial credit
        asked = {x for _, _, x in _numbers(task.instruction)}
        guesses = ([int(core)] if re.fullmatch(r"\d+", core)
                   else [x for _, _, x in _numbers(r) if x not in asked])
        return 0.1 if len(guesses) == 1 and abs(guesses[0] - n) == 1 else 0.0  # off by one
    if kind == "code":
        target = _eval_arith(ast.parse(task.answer, mode="eval").body)
        values = [v for _, _, _, v in _expressions(r)]
        if target in values:
            return 0.3  # right value, but not the asked expression
        return 0.1 if any(isinstance(node, ast.BinOp) for _, _, node, _ in _expressions(r)) else 0.0
    return _string_credit(core.lower(), task.answer.lower())


def _answers_earlier(task, r):
    """A conversation's reply that gives the earlier question's answer and not this one's."""
    earlier = task.get("earlier")
    if _normalise(earlier).lower() == _normalise(task.answer).lower():
        return False                                    # the answer did not change: repeating it is right
    return (_find_last(r, _normalise(earlier), ignore_case=True) is not None
            and _find_last(r, task.answer, ignore_case=True) is None)


def gold_score(task, response):
    """The gold judge (stands in for the human labellers' opinion). Returns a score in [0, 1].

    The right answer is looked for inside the response (a whole word; numbers compared as numbers; code
    parsed with `ast`, only int literals and + - * evaluated). If it is there, the score is the LOWEST
    cap that applies; if not, the partial-credit rules below apply.

      situation                                                     score   demonstrator mistake
      ------------------------------------------------------------  -----   --------------------
      empty response                                                0.0
      exactly the right answer in the asked format                  1.0     (none)
      right answer + one trailing "." or "!"                        0.9
      right answer, letter case differs, no capitals were asked     0.8
      right answer after a preamble ("Sure! The answer is 7.")      0.6     preamble
      right answer followed by more text (rambling tail)            0.5     rambling
      right answer, format broken: capitals asked but not given,    0.5     format
        or extra words when one word/number/expression asked
      right answer written as a number word ("eight" for "8")       0.5     format
      question repeated, then the right answer                      0.4     repeat_question
        (the rest of the response is judged without the question: a
        wrong answer after it scores as wrong, the echo alone 0.0)
      more than 20 words or 120 characters                    at most 0.3
      code: right value but not the asked expression ("7")          0.3
      wrong language (English/Chinese word when French asked,       0.2     wrong_language
        number word in another language)
      wrong string within 2 edits of the answer (a misspelling):  0-0.2     wrong_answer
        0.2 * (1 - normalised edit distance); further off: 0.0
      wrong number: 0.1 if off by one (sums, counts), else 0.0     0-0.1     wrong_answer
      wrong code: 0.1 if some + - * expression, else 0.0          0-0.1     wrong_answer
      help (a greeting or a request outside the world): the other   0.3
        polite line (a refusal to a greeting, or vice versa)
      help: anything else (a made-up fact)                          0.0     wrong_answer
      a polite 'cannot help' (or a greeting) to a request that the  0.0     refusal
        desk can serve
      the answer plus another candidate (other French word, other
        number not from the question): treated as a wrong answer
      a conversation (the `dialogue` kind): its last answer judged as     earlier_answer,
        the single-turn task the follow-up stands for (task "last",     forgot_system
        in the system message's format); the earlier question's
        answer instead of this one: 0.0
    """
    r = _normalise(response)
    if not r:
        return 0.0
    if task.kind == "dialogue":
        return 0.0 if _answers_earlier(task, r) else gold_score(task.get("last"), r)
    if r == task.answer:
        return 1.0
    rest = _without_question(task, r)
    if rest is not None:                      # the question repeated: judge the rest, at most 0.4
        return min(0.4, gold_score(task, rest))
    found = _locate(task, r)
    if found is None:
        return round(_no_answer_score(task, r), 4)
    start, end, case_ok = found
    prefix, suffix = r[:start].strip(), r[end:].strip()
    fmt = task.get("fmt")
    caps = [1.0]
    if suffix in _END_PUNCT[1:] and not prefix:
        caps.append(0.9)
    if prefix:
        caps.append(0.4 if _question(task) in prefix.lower() else 0.6)
    if suffix not in _END_PUNCT:
        caps.append(0.5)
    if fmt in BARE_FORMATS and (prefix or suffix not in _END_PUNCT):
        caps.append(0.5)
    if not case_ok:
        caps.append(0.5 if fmt == "caps" else 0.8)
    if len(r.split()) > 20 or len(r) > 120:
        caps.append(0.3)
    return min(caps)


# ---------------------------------------------------------------------------------------------------------
# What is wrong with a response, named like the demonstrators' mistakes (minigpt/demonstrators.py), plus
# `off_topic`. The evaluation counts these per model ("what RLHF changed"). Read from the same rules as
# gold_score.
# code and notes around a bare answer: a format slip, not a preamble
_WRAPPERS = ("(", ")", "`", "=", "print")


def _off_topic(task, r):
    """Nothing in r has the shape of an answer to this kind of task (a number for a sum, a French word for a
    translation, ...)."""
    if task.kind in ("translate_en", "translate_zh"):
        return not re.search(r"[A-Za-z\u00C0-\u024F]", r) and r.strip(" .!。！") != task.get("zh")
    if task.kind in NUMERIC_KINDS:
        words = {w for table in NUMBER_WORDS.values() for w in table}
        return not _numbers(r) and not any(w in r.lower().split() for w in words)
    if task.kind == "code":
        return not _expressions(r)
    if task.kind == "shop":
        return not _numbers(r) and "closed" not in r.lower()
    return False


def mistakes(task, response):
    """The mistakes a response shows -> list of names (empty when right, a final full stop aside):
    repeat_question, preamble, rambling, format, wrong_language, wrong_answer, refusal, off_topic, and in a
    conversation earlier_answer and forgot_system."""
    r = _normalise(response)
    if not r:
        return [WRONG_ANSWER]
    if task.kind == "dialogue":
        if _answers_earlier(task, r):
            return [EARLIER_ANSWER]
        found = mistakes(task.get("last"), r)
        return [FORGOT_SYSTEM if m == FORMAT else m for m in found] if task.get("system_fmt") else found
    if r == task.answer:
        return []
    rest = _without_question(task, r)
    if rest is not None:
        return [REPEAT_QUESTION] + (mistakes(task, rest) if rest else [WRONG_ANSWER])
    found = _locate(task, r)
    if found is None:
        score = _no_answer_score(task, r)
        if task.kind == "help":               # a made-up fact, or the wrong one of the two polite lines
            return [WRONG_ANSWER]
        if any(_normalise(a).lower() in r.lower() for a in HELP_LINES):
            return [REFUSAL]                # a polite line instead of an answer the desk could give
        if _off_topic(task, r):
            return [OFF_TOPIC]
        if score == 0.2 and (task.kind.startswith("translate") or task.kind in NUMERIC_KINDS):
            return [WRONG_LANGUAGE]
        if score in (0.5, 0.3):               # a number word for a number; the value, not the expression
            return [FORMAT]
        return [WRONG_ANSWER]
    start, end, case_ok = found
    prefix, suffix = r[:start].strip(), r[end:].strip()
    fmt, out = task.get("fmt"), []
    if prefix:
        wrapped = fmt in BARE_FORMATS and prefix.endswith(_WRAPPERS)
        out.append(FORMAT if wrapped else REPEAT_QUESTION if _question(task) in prefix.lower() else PREAMBLE)
    if suffix not in _END_PUNCT:
        wrapped = fmt in BARE_FORMATS and suffix.startswith(_WRAPPERS)
        out.append(FORMAT if wrapped else RAMBLING)
    if not case_ok:
        out.append(FORMAT)
    if (len(r.split()) > 20 or len(r) > 120) and RAMBLING not in out:
        out.append(RAMBLING)
    return sorted(set(out), key=out.index)
