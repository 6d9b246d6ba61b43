"""A reward that checks: the answer to a sum, a code expression or a comparison, computed from the prompt's
text alone (RL with verifiable rewards: DeepSeekMath's GRPO, nanochat's GSM8K RL).

The reward model learnt what labellers see at a glance (a preamble, a closing pleasantry) and hardly whether
7 + 8 is 15. A checker needs no gold table for that: it reads the two numbers and the operation in the
prompt ("What is 7 + 8?", "计算7+8", "Write a Python expression that multiplies 7 by 8.", "Which is larger, 7
or 8?"), computes the answer, and compares the response's answer with it: a number compared as a number, an
expression evaluated by a safe `ast` walker (int literals and + - * only, never eval). It never sees a Task,
the world's answer or the gold judge (minigpt/judge.py), only two strings; on a prompt it cannot parse
(translations, the shop, greetings) it says nothing (None) and the reward model's score stands alone.

Plain Python only (no torch, no numpy).
"""

import ast
import re
from dataclasses import dataclass

# The reward with --reward=verifier (minigpt/rollout.score), on a response that ended (one that never did
# gets the fixed NO_EOS_PENALTY either way):
#
#     r(x, y) = r_θ(x, y) + w · (2·v(x, y) − 1)     where check(x) parses,  v = 1 right, 0 wrong,  w = 1
#     r(x, y) = r_θ(x, y)                           elsewhere
#
# Added to the reward model's score, not in its place: the reward model still ranks style (a preamble, a
# rambling tail) among right answers, so PPO keeps removing those habits on the checked kinds too, while
# the ±w term, twice the demonstrations' reward spread (train_rm.py scales it to std 1) between a right
# and a wrong answer, outweighs any style difference the reward model sees.
VERIFIER_WEIGHT = 1.0

_N = r"(\d+)"
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
# (pattern, operation, swap) for each phrasing; a and b in the order of the groups unless swap. English
# patterns ignore case. Only the question is read: the format line after it ("Give the number only.") is
# ignored.
_ARITHMETIC = [
    (rf"what is {_N} ?\+ ?{_N}\?", "+", False), (rf"what is {_N} plus {_N}\?", "+", False),
    (rf"add {_N} and {_N}\.", "+", False), (rf"what is {_N} ?- ?{_N}\?", "-", False),
    (rf"what is {_N} minus {_N}\?", "-", False), (rf"subtract {_N} from {_N}\.", "-", True),
    (rf"计算{_N} ?\+ ?{_N}", "+", False), (rf"{_N}加{_N}等于", "+", False), (rf"{_N} ?\+ ?{_N}等于", "+", False),
    (rf"计算{_N} ?- ?{_N}", "-", False), (rf"{_N}减{_N}等于", "-", False), (rf"{_N} ?- ?{_N}等于", "-", False),
]
_CODE = [(rf"(?:write|give) a python expression {pattern}", op, swap) for pattern, op, swap in [
    (rf"that adds {_N} and {_N}", "+", False), (rf"for the sum of {_N} and {_N}", "+", False),
    (rf"that multiplies {_N} by {_N}", "*", False), (rf"for the product of {_N} and {_N}", "*", False),
    (rf"that subtracts {_N} from {_N}", "-", True), (rf"for {_N} minus {_N}", "-", False)]] + [
    (rf"(?:写一个|用)python表达式{pattern}", op, False) for pattern, op in [
        (rf"，计算{_N}加{_N}", "+"), (rf"表示{_N}和{_N}的和", "+"), (rf"，计算{_N}乘以{_N}", "*"),
        (rf"表示{_N}和{_N}的积", "*"), (rf"，计算{_N}减{_N}", "-"), (rf"表示{_N}减去{_N}", "-")]]
_COMPARE = [rf"which is larger, {_N} or {_N}\?", rf"which number is bigger: {_N} or {_N}\?",
            rf"which is greater, {_N} or {_N}\?", rf"{_N}和{_N}哪个大", rf"{_N}和{_N}中哪个数更大"]


@dataclass(frozen=True)
class Check:
    """A question the checker can answer: its kind (arithmetic, code or compare), the numbers the prompt
    names, and the answer computed from them."""
    kind: str
    operands: tuple
    target: int


def _match(patterns, text):
    for pattern, *rest in patterns:
        m = re.match(pattern, text, re.I)
        if m:
            return m, rest
    return None, None


def parse(prompt):
    """The prompt's text -> a Check, or None where it asks something the checker cannot compute."""
    if not isinstance(prompt, str):
        return None
    text = re.sub(r"\s+", " ", prompt).strip()
    for kind, patterns in (("arithmetic", _ARITHMETIC), ("code", _CODE)):
        m, rest = _match(patterns, text)
        if m:
            op, swap = rest
            a, b = int(m.group(1)), int(m.group(2))
            a, b = (b, a) if swap else (a, b)
            return Check(kind, (a, b), _OPS[op](a, b))
    m, _ = _match([(p,) for p in _COMPARE], text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        return None if a == b else Check("compare", (a, b), max(a, b))
    return None


def _eval(node):
    """Value of an AST of int literals, unary minus and + - * only; anything else raises ValueError."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand)
    ops = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}
    if isinstance(node, ast.BinOp) and type(node.op) in ops:
        return _OPS[ops[type(node.op)]](_eval(node.left), _eval(node.right))
    raise ValueError("not an expression of int literals and + - *")


def _expressions(response):
    """The + - * expressions written in the response (at least one operator) -> their values, in order."""
    values = []
    for m in re.finditer(r"[\d(][\d\s+\-*()]*", response):
        try:
            node = ast.parse(m.group().strip(), mode="eval").body
            if isinstance(node, ast.BinOp):
                values.append(_eval(node))
        except (SyntaxError, ValueError, RecursionError):
            continue
    return values


def verify(check, response):
    """1 if the response's answer is the computed one, else 0.

    arithmetic, compare: every number written is the answer or one of the prompt's numbers, and the answer
        is among them (for compare, no other number at all: "5 or 7" is a hedge, not an answer);
    code: the last + - * expression written evaluates to the answer (a bare "12" is a number, not the
        expression asked for)."""
    if check.kind == "code":
        values = _expressions(response)
        return int(bool(values) and values[-1] == check.target)
    numbers = [int(n) for n in re.findall(r"\d+", response)]
    allowed = {check.target} if check.kind == "compare" else {check.target, *check.operands}
    return int(check.target in numbers and all(n in allowed for n in numbers))


def verifier_reward(prompt, response):
    """w · (2·v − 1) where the prompt can be checked (see the formula above), None elsewhere."""
    check = parse(prompt)
    return None if check is None else VERIFIER_WEIGHT * (2 * verify(check, response) - 1)
