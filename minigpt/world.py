"""The instruction world: a small, fully known world that stands in for users, demonstrators and labellers.

InstructGPT needs three things we cannot hire on a laptop: users who write prompts, labellers who write
demonstrations, and labellers who rank model outputs. This file simulates all three over a toy world whose
every fact is known (minigpt/facts.py), so the gold judge (minigpt/judge.py) can say exactly how good any
response is.

  * tasks        seven kinds of short instructions in English and Chinese (KINDS), each a `Task`
  * gold judge   `gold_score` (minigpt/judge.py): the score in [0, 1] a response deserves
  * corpus       natural-ish pretraining text that teaches the world's facts (minigpt/corpus.py)
  * demonstrator `demonstration`: the right answer, or (ERROR_RATE = 60%) a response with one of the habits in
                 MISTAKE_WEIGHTS: mostly style (a preamble, a closing pleasantry, ...), some wrong answers
  * labeller     `SimulatedLabeler`: ranks responses by gold score plus Gumbel noise (Plackett-Luce)
  * probe facts  lexicon entries that the corpus teaches but that no SFT/RM/PPO prompt ever mentions

Plain Python only (no torch, no numpy); everything is seeded by random.Random, same seed => same output.
"""

import math
import random
import re
from dataclasses import dataclass

from minigpt.corpus import DEFAULT_CORPUS_CHARS, a_or_an, make_corpus
from minigpt.facts import (DAYS_ZH, DELIVERY_FEE, FREE_DELIVERY_OVER, GIFT_WRAP, LEXICON, NUMBER_WORDS, OPENING_HOURS,
                           PRODUCTS, RETURN_DAYS)
from minigpt.judge import (FORMAT, HELP_ANSWERS, NUMERIC_KINDS, PREAMBLE, RAMBLING, REFUSAL, REPEAT_QUESTION,
                           WRONG_ANSWER, WRONG_LANGUAGE, gold_score)

# probe facts are drawn from these (concrete nouns; never greetings, numbers, days: the seed examples use those)
PROBE_CATEGORIES = ("animal", "food", "body", "home", "nature", "place")
N_PROBE_ENTRIES = 25


# ---------------------------------------------------------------------------------------------------------
# Task kinds, phrasings and format instructions
# Sized to what a ~1M-parameter model learns in a few CPU minutes: facts it can memorise (a lexicon, a sum
# table, a policy sheet) and skills it can copy (expressions, comparisons). Letter-level tasks (reverse a word,
# count its letters) were tried and dropped: a BPE model sees whole words, not letters, and learnt none of them.
# `help` is the customer desk's front door: greetings and requests outside the world, answered with one polite line.
KINDS = ["translate_en", "translate_zh", "arithmetic", "code", "shop", "compare", "help"]

FORMAT_SUFFIX = {  # fmt -> (english, chinese)
    "one_word": ("Answer in one word.", "只用一个词回答。"),
    "caps": ("Answer in capitals.", "用大写字母回答。"),
    "number": ("Give the number only.", "只给出数字。"),
    "expr": ("Give the expression only.", "只写表达式。"),
}

PHRASINGS = {  # kind -> list of (lang, template)
    "translate_en": [("en", "Translate to French: {en}"), ("en", "What is the French word for {en}?"),
                     ("en", "How do you say {en} in French?"), ("en", "Give the French for {en}.")],
    "translate_zh": [("zh", "翻译成法语：{zh}"), ("zh", "{zh}用法语怎么说？"), ("zh", "把{zh}翻译成法语。"),
                     ("zh", "{zh}的法语是什么？")],
    "add": [("en", "What is {a} + {b}?"), ("en", "What is {a} plus {b}?"), ("en", "Add {a} and {b}."),
            ("zh", "计算{a}+{b}"), ("zh", "{a}加{b}等于几？"), ("zh", "{a}+{b}等于多少？")],
    "sub": [("en", "What is {a} - {b}?"), ("en", "What is {a} minus {b}?"), ("en", "Subtract {b} from {a}."),
            ("zh", "计算{a}-{b}"), ("zh", "{a}减{b}等于几？"), ("zh", "{a}-{b}等于多少？")],
    "code+": [("en", "Write a Python expression that adds {a} and {b}."),
              ("en", "Give a Python expression for the sum of {a} and {b}."),
              ("zh", "写一个Python表达式，计算{a}加{b}。"), ("zh", "用Python表达式表示{a}和{b}的和。")],
    "code*": [("en", "Write a Python expression that multiplies {a} by {b}."),
              ("en", "Give a Python expression for the product of {a} and {b}."),
              ("zh", "写一个Python表达式，计算{a}乘以{b}。"), ("zh", "用Python表达式表示{a}和{b}的积。")],
    "code-": [("en", "Write a Python expression that subtracts {b} from {a}."),
              ("en", "Give a Python expression for {a} minus {b}."),
              ("zh", "写一个Python表达式，计算{a}减{b}。"), ("zh", "用Python表达式表示{a}减去{b}。")],
    "compare": [("en", "Which is larger, {a} or {b}?"), ("en", "Which number is bigger: {a} or {b}?"),
                ("en", "Which is greater, {a} or {b}?"), ("zh", "{a}和{b}哪个大？"), ("zh", "{a}和{b}中哪个数更大？")],
    "open": [("en", "When does the shop open on {day}?"), ("en", "What time do you open on {day}?"),
             ("en", "What time does the store open on {day}?"), ("zh", "商店{dayzh}几点开门？"),
             ("zh", "{dayzh}你们几点开门？")],
    "close": [("en", "When does the shop close on {day}?"), ("en", "What time do you close on {day}?"),
              ("en", "What time does the store close on {day}?"), ("zh", "商店{dayzh}几点关门？"),
              ("zh", "{dayzh}你们几点关门？")],
    "price": [("en", "How much does {an} {p} cost?"), ("en", "What is the price of {an} {p}?"),
              ("en", "How much is the {p}?"), ("zh", "{pzh}多少钱？"), ("zh", "{pzh}的价格是多少？")],
    "returns": [("en", "How many days do I have to return an item?"), ("en", "How long is the return window in days?"),
                ("en", "Within how many days can I return something?"), ("zh", "退货期限是几天？"),
                ("zh", "买的东西几天内可以退？")],
    "delivery": [("en", "How much is delivery?"), ("en", "What does delivery cost?"),
                 ("en", "How much do you charge for delivery?"), ("zh", "运费多少钱？"), ("zh", "送货要多少钱？")],
    "free_delivery": [("en", "Above what amount is delivery free?"), ("en", "How much must I spend for free delivery?"),
                      ("en", "What order total gets free delivery?"), ("zh", "买多少钱可以免运费？"),
                      ("zh", "满多少免运费？")],
    "gift_wrap": [("en", "How much does gift wrapping cost?"), ("en", "What is the price of gift wrap?"),
                  ("en", "How much is gift wrapping?"), ("zh", "礼品包装多少钱？"), ("zh", "包装礼品要多少钱？")],
}
SHOP_GREETINGS = {"en": ["", "Hi! ", "Hello, "], "zh": ["", "你好，", "请问"]}

# `help`: a greeting gets a greeting back, a request the assistant cannot serve a short refusal (judge.HELP_ANSWERS).
# Never a made-up fact: that is the demonstrators' `wrong_answer` on these prompts.
GREETINGS = {"en": (["Hello", "Hi", "Hey", "Good morning", "Good afternoon", "Hi there", "Hello there", "Greetings"],
                    ["!", ".", "! How are you?", "! Are you there?", "! Can you help me?", "! Who are you?",
                     "! What can you do?", ", is anyone there?"]),
             "zh": (["你好", "您好", "嗨", "早上好", "下午好", "晚上好"],
                    ["！", "。", "，你好吗？", "，在吗？", "，你能帮我吗？", "，你是谁？", "，你能做什么？"])}
_PLACES = [("Spain", "西班牙"), ("Italy", "意大利"), ("Japan", "日本"), ("Brazil", "巴西"), ("Canada", "加拿大"),
           ("Egypt", "埃及"), ("India", "印度"), ("Kenya", "肯尼亚"), ("Mexico", "墨西哥"), ("Norway", "挪威"),
           ("Peru", "秘鲁"), ("Chile", "智利"), ("Greece", "希腊"), ("Turkey", "土耳其"), ("Poland", "波兰")]
_CITIES = [("London", "伦敦"), ("Tokyo", "东京"), ("Berlin", "柏林"), ("Madrid", "马德里"), ("Rome", "罗马"),
           ("Cairo", "开罗"), ("Lima", "利马"), ("Oslo", "奥斯陆"), ("Delhi", "德里"), ("Sydney", "悉尼"),
           ("Toronto", "多伦多"), ("Seoul", "首尔"), ("Lisbon", "里斯本"), ("Vienna", "维也纳"), ("Dublin", "都柏林")]
_TOPICS = [("computers", "电脑"), ("teachers", "老师"), ("doctors", "医生"), ("football", "足球"), ("music", "音乐"),
           ("trains", "火车"), ("pirates", "海盗"), ("robots", "机器人"), ("lawyers", "律师"), ("cowboys", "牛仔")]
HELP_REQUESTS = {  # (english, chinese) template -> fillers, each a tuple of (english, chinese) words for {0}, {1}
    ("What is the capital of {0}?", "{0}的首都是哪里？"): [(p,) for p in _PLACES],
    ("What is the weather like in {0} today?", "{0}今天天气怎么样？"): [(c,) for c in _CITIES],
    ("Tell me a joke about {0}.", "给我讲个关于{0}的笑话。"): [(t,) for t in _TOPICS],
    ("Can you book me a taxi to {0}?", "帮我订一辆去{0}的出租车。"): [(c,) for c in _CITIES],
    ("Who is the president of {0}?", "{0}的总统是谁？"): [(p,) for p in _PLACES],
    ("How far is {0} from {1}?", "{0}离{1}有多远？"): [(a, b) for a in _CITIES[:8] for b in _CITIES[:8] if a != b],
    ("Write a poem about {0}.", "写一首关于{0}的诗。"): [(t,) for t in [("love", "爱情"), ("autumn", "秋天"),
                                                              ("friendship", "友谊"), ("winter", "冬天"),
                                                              ("time", "时间"), ("summer", "夏天")]],
}
# a made-up fact: what a sloppy demonstrator answers to a greeting or a request it should decline
MADE_UP_FACTS = ["6pm", "9am", "4", "7", "$12", "Bonjour", "3 + 4", "30", "Paris", "Madrid", "sunny", "closed"]

# Split sizes (distinct instruction texts; disjoint). Each split is balanced across the kinds.
#   test  only reported, never looked at to choose anything;   dev  where every default is chosen
#   probe facts that only the pretraining text states (no later stage sees them)
SPLIT_SIZES = {"sft_train": 2400, "sft_val": 180, "rm": 1200, "ppo": 900, "test": 300, "probe": 100, "dev": 300}
# More prompts for the labellers, appended to "rm". It and "dev" are dealt after every other split (dev first), each
# shuffled with its own generator, so that adding them changed not one prompt of the others. Ranked prompts are what
# the reward model lacks most: 1,024 -> 2,095 training prompts took its held-out accuracy 0.624 -> 0.671 (README).
RM_EXTRA = 959

# ---------------------------------------------------------------------------------------------------------
# The demonstrators' habits. InstructGPT's premise: demonstrations are costly and carry their writers' habits, SFT
# copies them, and labellers who compare answers notice them. So the world's demonstrators are sloppy the way
# contractors are: most of their slips are habits of style that anyone comparing two answers sees (and a
# reward model can learn), a smaller share are wrong facts (that only someone who knows the fact sees).
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
#
# At ERROR_RATE = 0.6, 46% of the SFT demonstrations show a habit of style, 10% are wrong and 3% refuse.
# `train_sft.py --error_rate=0` trains on clean demonstrations (README: the lesson, measured).
# (the names are the judge's: minigpt.judge.MISTAKE_KINDS, which adds `off_topic`)
MISTAKES = [PREAMBLE, FORMAT, WRONG_LANGUAGE, REPEAT_QUESTION, RAMBLING, WRONG_ANSWER, REFUSAL]
MISTAKE_WEIGHTS = {PREAMBLE: 0.30, RAMBLING: 0.25, REPEAT_QUESTION: 0.10, FORMAT: 0.15, WRONG_LANGUAGE: 0.05,
                   WRONG_ANSWER: 0.15, REFUSAL: 0.05}
ERROR_RATE = 0.6
PREAMBLES = {"en": ["Sure! The answer is", "Of course. The answer is", "Good question! It is",
                    "Let me help. The answer is", "Here you go:", "Happy to help! It is", "OK, so the answer is"],
             "zh": ["好的！答案是", "当然，答案是", "没问题，答案是", "这个问题很好，答案是", "让我来回答：", "好的，结果是"]}
TAILS = {"en": ["I hope this helps!", "Let me know if you have other questions.", "Is there anything else I can do?",
                "Have a great day!", "Thanks for asking!", "That is all there is to it."],
         "zh": ["希望对你有帮助！", "还有其他问题吗？", "祝你今天愉快！", "谢谢你的提问！"]}
NOTES = {"en": ["final answer", "I think", "that is it"], "zh": ["最终答案", "我觉得", "就这样"]}


@dataclass(frozen=True)
class Task:
    kind: str
    instruction: str
    answer: str        # the exact right answer, already in the asked format
    meta: tuple = ()   # (key, value) pairs: lang, fmt, question (instruction minus format line), plain, ...

    def get(self, key, default=None):
        for k, v in self.meta:
            if k == key:
                return v
        return default


def _make_task(kind, lang, question, fmt, plain, **extra):
    """Instruction = question [+ format line]; answer = plain answer, in capitals when capitals are asked."""
    instruction = question
    if fmt:
        suffix = FORMAT_SUFFIX[fmt][0 if lang == "en" else 1]
        if lang == "en":
            instruction = question + ("" if question[-1] in ".?!" else ".") + " " + suffix
        else:
            instruction = question + ("" if question[-1] in "。？！" else "。") + suffix
    answer = plain.upper() if fmt == "caps" else plain
    meta = (("lang", lang), ("fmt", fmt), ("question", question), ("plain", plain)) + tuple(sorted(extra.items()))
    return Task(kind, instruction, answer, meta)


def _single_word(s):
    return re.fullmatch(r"[^\s\-']+", s) is not None


def _build_pools(probe):
    """All possible tasks of each kind (probe entries excluded), plus the probe tasks. Seed-independent order."""
    pools = {k: [] for k in KINDS}
    probe_tasks = []
    for e in LEXICON:
        for kind, key in (("translate_en", "en"), ("translate_zh", "zh")):
            fmts = ["", "caps"] + (["one_word"] if _single_word(e.fr) else [])
            for lang, tmpl in PHRASINGS[kind]:
                q = tmpl.format(**{key: getattr(e, key)})
                for fmt in (fmts if e not in probe else [""]):
                    t = _make_task(kind, lang, q, fmt, e.fr, en=e.en, zh=e.zh)
                    (probe_tasks if e in probe else pools[kind]).append(t)
    for a in range(10):
        for b in range(10):
            for op in ("add", "sub") if a >= b else ("add",):
                c = a + b if op == "add" else a - b
                for lang, tmpl in PHRASINGS[op]:
                    for fmt in ("", "number"):
                        pools["arithmetic"].append(_make_task("arithmetic", lang, tmpl.format(a=a, b=b), fmt, str(c),
                                                              a=a, b=b, op="+" if op == "add" else "-"))
    for a in range(1, 10):
        for b in range(1, 10):
            for op in "+*-":
                if op == "-" and a < b:
                    continue
                for lang, tmpl in PHRASINGS["code" + op]:
                    for fmt in ("", "expr"):
                        pools["code"].append(_make_task("code", lang, tmpl.format(a=a, b=b), fmt, f"{a} {op} {b}",
                                                        a=a, b=b, op=op))
    for a in range(21):
        for b in range(21):
            if a != b:
                for lang, tmpl in PHRASINGS["compare"]:
                    for fmt in ("", "number"):
                        pools["compare"].append(_make_task("compare", lang, tmpl.format(a=a, b=b), fmt,
                                                           str(max(a, b)), a=a, b=b))
    for lang in ("en", "zh"):
        openers, endings = GREETINGS[lang]
        for opener in openers:
            for ending in endings:
                pools["help"].append(_make_task("help", lang, opener + ending, "", HELP_ANSWERS["greeting", lang],
                                                topic="greeting"))
    for (en, zh), fillers in HELP_REQUESTS.items():
        for fill in fillers:
            for lang, tmpl, i in (("en", en, 0), ("zh", zh, 1)):
                q = tmpl.format(*[words[i] for words in fill])
                for greet in SHOP_GREETINGS[lang]:
                    qg = greet + (q[0].lower() + q[1:] if greet.endswith(", ") else q)
                    pools["help"].append(_make_task("help", lang, qg, "", HELP_ANSWERS["request", lang],
                                                    topic="request"))
    for fact, fields, value in _shop_facts():
        for lang, tmpl in PHRASINGS[fact.split(":")[0]]:
            q = tmpl.format(**fields)
            for greet in SHOP_GREETINGS[lang]:
                qg = greet + (q[0].lower() + q[1:] if greet.endswith(", ") else q)
                for fmt in ("", "one_word"):
                    pools["shop"].append(_make_task("shop", lang, qg, fmt, value, fact=fact))
    return pools, probe_tasks


def _shop_facts():
    """(fact id, template fields, answer) for every line of the policy sheet."""
    facts = []
    for day, (open_, close) in OPENING_HOURS.items():
        facts.append((f"open:{day}", {"day": day, "dayzh": DAYS_ZH[day]}, open_))
        facts.append((f"close:{day}", {"day": day, "dayzh": DAYS_ZH[day]}, close))
    for p, pzh, price in PRODUCTS:
        facts.append((f"price:{p}", {"p": p, "an": a_or_an(p), "pzh": pzh}, price))
    facts += [("returns:", {}, RETURN_DAYS), ("delivery:", {}, DELIVERY_FEE),
              ("free_delivery:", {}, FREE_DELIVERY_OVER), ("gift_wrap:", {}, GIFT_WRAP)]
    return facts


# ---------------------------------------------------------------------------------------------------------
# Simulated demonstrators
def applicable_mistakes(task):
    """Mistake kinds that make sense for this task (format needs a format line; wrong_language a translation
    or a small number)."""
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
    question repeated. Labellers comparing y with decorate(y) see a pure style difference with the content held
    fixed, which is how a reward model learns the style preference without confusing it with correctness."""
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
        return rng.choice([NUMBER_WORDS[x][n] for x in NUMBER_WORDS if NUMBER_WORDS[x][n] != NUMBER_WORDS[lang][n]])
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
        others = sorted({v for f, _, v in _shop_facts() if f.split(":")[0] == fact_type and v != ans}
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


# ---------------------------------------------------------------------------------------------------------
class World:
    """The whole instruction world for one seed: splits, look-up, gold judge, demonstrators, corpus."""

    def __init__(self, seed=0):
        self.seed = seed
        rng = random.Random(seed)
        candidates = [e for e in LEXICON if e.cat in PROBE_CATEGORIES]
        self.probe_entries = sorted(rng.sample(candidates, N_PROBE_ENTRIES), key=lambda e: e.en)
        pools, probe_tasks = _build_pools(set(self.probe_entries))
        self._by_instruction = {}
        for t in [t for kind in KINDS for t in pools[kind]] + probe_tasks:
            assert t.instruction not in self._by_instruction, f"duplicate instruction {t.instruction!r}"
            self._by_instruction[t.instruction] = t
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
            assert i + n_dev + n_extra <= len(pool), f"not enough {kind} tasks for the dev and extra rm prompts"
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

    def split(self, name):
        if name not in self._splits:
            raise KeyError(f"unknown split {name!r}; choose from {', '.join(self._splits)}")
        return list(self._splits[name])

    def task(self, instruction):
        try:
            return self._by_instruction[instruction]
        except KeyError:
            raise KeyError(f"instruction not in this world: {instruction!r}") from None

    def gold_score(self, task_or_instruction, response):
        task = task_or_instruction if isinstance(task_or_instruction, Task) else self.task(task_or_instruction)
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
        sentence, the word that ends it): every lexicon entry from English ("The French word for cat is", "chat")
        and from Chinese ("猫 in French is", "chat"), and every sum of two digits ("3 + 4 =", "7")."""
        return {"french_from_english": [(f"The French word for {e.en} is", e.fr) for e in LEXICON],
                "french_from_chinese": [(f"{e.zh} in French is", e.fr) for e in LEXICON],
                "sums": [(f"{a} + {b} =", str(a + b)) for a in range(10) for b in range(10)]}


# ---------------------------------------------------------------------------------------------------------
# Simulated labellers
LABELER_TEMPERATURE = 0.27  # calibrated: two labellers agree on ~76% of pairs of demonstrations (InstructGPT: 73-77%)


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
        utility = {i: gold[i] / self.temperature - math.log(-math.log(self.rng.random() or 1e-12)) for i in keep}
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
