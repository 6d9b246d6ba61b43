"""What the world's users ask: seven kinds of short instructions in English and Chinese, each a `Task`.

Every task of each kind is built here (build_pools), in an order that does not depend on the seed;
minigpt/world.py deals them out to the splits. Plain Python only (no torch, no numpy).
"""

import re
from dataclasses import dataclass

from minigpt.corpus import a_or_an
from minigpt.facts import (DAYS_ZH, DELIVERY_FEE, FREE_DELIVERY_OVER, GIFT_WRAP, LEXICON, OPENING_HOURS,
                           PRODUCTS, RETURN_DAYS)
from minigpt.judge import HELP_ANSWERS

# Task kinds, phrasings and format instructions
# Sized to what a ~1M-parameter model learns in a few CPU minutes: facts it can memorise (a lexicon, a
# sum table, a policy sheet) and skills it can copy (expressions, comparisons). Letter-level tasks (reverse
# a word, count its letters) were tried and dropped: a BPE model sees whole words, not letters, and learnt
# none of them.
# `help` is the customer desk's front door: greetings and requests outside the world, answered with one
# polite line.
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
    "translate_zh": [("zh", "翻译成法语：{zh}"), ("zh", "{zh}用法语怎么说？"),
                     ("zh", "把{zh}翻译成法语。"), ("zh", "{zh}的法语是什么？")],
    "add": [("en", "What is {a} + {b}?"), ("en", "What is {a} plus {b}?"), ("en", "Add {a} and {b}."),
            ("zh", "计算{a}+{b}"), ("zh", "{a}加{b}等于几？"), ("zh", "{a}+{b}等于多少？")],
    "sub": [("en", "What is {a} - {b}?"), ("en", "What is {a} minus {b}?"),
            ("en", "Subtract {b} from {a}."), ("zh", "计算{a}-{b}"), ("zh", "{a}减{b}等于几？"),
            ("zh", "{a}-{b}等于多少？")],
    "code+": [("en", "Write a Python expression that adds {a} and {b}."),
              ("en", "Give a Python expression for the sum of {a} and {b}."),
              ("zh", "写一个Python表达式，计算{a}加{b}。"),
              ("zh", "用Python表达式表示{a}和{b}的和。")],
    "code*": [("en", "Write a Python expression that multiplies {a} by {b}."),
              ("en", "Give a Python expression for the product of {a} and {b}."),
              ("zh", "写一个Python表达式，计算{a}乘以{b}。"),
              ("zh", "用Python表达式表示{a}和{b}的积。")],
    "code-": [("en", "Write a Python expression that subtracts {b} from {a}."),
              ("en", "Give a Python expression for {a} minus {b}."),
              ("zh", "写一个Python表达式，计算{a}减{b}。"),
              ("zh", "用Python表达式表示{a}减去{b}。")],
    "compare": [("en", "Which is larger, {a} or {b}?"), ("en", "Which number is bigger: {a} or {b}?"),
                ("en", "Which is greater, {a} or {b}?"), ("zh", "{a}和{b}哪个大？"),
                ("zh", "{a}和{b}中哪个数更大？")],
    "open": [("en", "When does the shop open on {day}?"), ("en", "What time do you open on {day}?"),
             ("en", "What time does the store open on {day}?"), ("zh", "商店{dayzh}几点开门？"),
             ("zh", "{dayzh}你们几点开门？")],
    "close": [("en", "When does the shop close on {day}?"), ("en", "What time do you close on {day}?"),
              ("en", "What time does the store close on {day}?"), ("zh", "商店{dayzh}几点关门？"),
              ("zh", "{dayzh}你们几点关门？")],
    "price": [("en", "How much does {an} {p} cost?"), ("en", "What is the price of {an} {p}?"),
              ("en", "How much is the {p}?"), ("zh", "{pzh}多少钱？"),
              ("zh", "{pzh}的价格是多少？")],
    "returns": [("en", "How many days do I have to return an item?"),
                ("en", "How long is the return window in days?"),
                ("en", "Within how many days can I return something?"), ("zh", "退货期限是几天？"),
                ("zh", "买的东西几天内可以退？")],
    "delivery": [("en", "How much is delivery?"), ("en", "What does delivery cost?"),
                 ("en", "How much do you charge for delivery?"), ("zh", "运费多少钱？"),
                 ("zh", "送货要多少钱？")],
    "free_delivery": [("en", "Above what amount is delivery free?"),
                      ("en", "How much must I spend for free delivery?"),
                      ("en", "What order total gets free delivery?"),
                      ("zh", "买多少钱可以免运费？"), ("zh", "满多少免运费？")],
    "gift_wrap": [("en", "How much does gift wrapping cost?"), ("en", "What is the price of gift wrap?"),
                  ("en", "How much is gift wrapping?"), ("zh", "礼品包装多少钱？"),
                  ("zh", "包装礼品要多少钱？")],
}
SHOP_GREETINGS = {"en": ["", "Hi! ", "Hello, "], "zh": ["", "你好，", "请问"]}

# `help`: a greeting gets a greeting back, a request the assistant cannot serve a short refusal
# (judge.HELP_ANSWERS). Never a made-up fact: that is the demonstrators' `wrong_answer` on these prompts.
GREETINGS = {"en": (["Hello", "Hi", "Hey", "Good morning", "Good afternoon", "Hi there", "Hello there",
                     "Greetings"],
                    ["!", ".", "! How are you?", "! Are you there?", "! Can you help me?", "! Who are you?",
                     "! What can you do?", ", is anyone there?"]),
             "zh": (["你好", "您好", "嗨", "早上好", "下午好", "晚上好"],
                    ["！", "。", "，你好吗？", "，在吗？", "，你能帮我吗？",
                     "，你是谁？", "，你能做什么？"])}
_PLACES = [("Spain", "西班牙"), ("Italy", "意大利"), ("Japan", "日本"), ("Brazil", "巴西"),
           ("Canada", "加拿大"), ("Egypt", "埃及"), ("India", "印度"), ("Kenya", "肯尼亚"),
           ("Mexico", "墨西哥"), ("Norway", "挪威"), ("Peru", "秘鲁"), ("Chile", "智利"),
           ("Greece", "希腊"), ("Turkey", "土耳其"), ("Poland", "波兰")]
_CITIES = [("London", "伦敦"), ("Tokyo", "东京"), ("Berlin", "柏林"), ("Madrid", "马德里"),
           ("Rome", "罗马"), ("Cairo", "开罗"), ("Lima", "利马"), ("Oslo", "奥斯陆"),
           ("Delhi", "德里"), ("Sydney", "悉尼"), ("Toronto", "多伦多"), ("Seoul", "首尔"),
           ("Lisbon", "里斯本"), ("Vienna", "维也纳"), ("Dublin", "都柏林")]
_TOPICS = [("computers", "电脑"), ("teachers", "老师"), ("doctors", "医生"), ("football", "足球"),
           ("music", "音乐"), ("trains", "火车"), ("pirates", "海盗"), ("robots", "机器人"),
           ("lawyers", "律师"), ("cowboys", "牛仔")]
_POEM_TOPICS = [("love", "爱情"), ("autumn", "秋天"), ("friendship", "友谊"), ("winter", "冬天"),
                ("time", "时间"), ("summer", "夏天")]
# (english, chinese) template -> fillers, each a tuple of (english, chinese) words for {0}, {1}
HELP_REQUESTS = {
    ("What is the capital of {0}?", "{0}的首都是哪里？"): [(p,) for p in _PLACES],
    ("What is the weather like in {0} today?", "{0}今天天气怎么样？"): [(c,) for c in _CITIES],
    ("Tell me a joke about {0}.", "给我讲个关于{0}的笑话。"): [(t,) for t in _TOPICS],
    ("Can you book me a taxi to {0}?", "帮我订一辆去{0}的出租车。"): [(c,) for c in _CITIES],
    ("Who is the president of {0}?", "{0}的总统是谁？"): [(p,) for p in _PLACES],
    ("How far is {0} from {1}?", "{0}离{1}有多远？"):
        [(a, b) for a in _CITIES[:8] for b in _CITIES[:8] if a != b],
    ("Write a poem about {0}.", "写一首关于{0}的诗。"): [(t,) for t in _POEM_TOPICS],
}


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

    @property
    def prompt(self):
        """What the model is asked: the instruction, or a conversation's messages ((role, text), ...) ending
        with the user message to answer (the `dialogue` kind: minigpt/dialogues.py)."""
        return self.get("messages") or self.instruction


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
    meta = ((("lang", lang), ("fmt", fmt), ("question", question), ("plain", plain))
            + tuple(sorted(extra.items())))
    return Task(kind, instruction, answer, meta)


def _single_word(s):
    return re.fullmatch(r"[^\s\-']+", s) is not None


def build_pools(probe):
    """All possible tasks of each kind (probe entries excluded), plus the probe tasks. Seed-independent
    order."""
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
                        q, sign = tmpl.format(a=a, b=b), "+" if op == "add" else "-"
                        pools["arithmetic"].append(_make_task("arithmetic", lang, q, fmt, str(c),
                                                              a=a, b=b, op=sign))
    for a in range(1, 10):
        for b in range(1, 10):
            for op in "+*-":
                if op == "-" and a < b:
                    continue
                for lang, tmpl in PHRASINGS["code" + op]:
                    for fmt in ("", "expr"):
                        pools["code"].append(_make_task("code", lang, tmpl.format(a=a, b=b), fmt,
                                                        f"{a} {op} {b}", a=a, b=b, op=op))
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
                pools["help"].append(_make_task("help", lang, opener + ending, "",
                                                HELP_ANSWERS["greeting", lang], topic="greeting"))
    for (en, zh), fillers in HELP_REQUESTS.items():
        for fill in fillers:
            for lang, tmpl, i in (("en", en, 0), ("zh", zh, 1)):
                q = tmpl.format(*[words[i] for words in fill])
                for greet in SHOP_GREETINGS[lang]:
                    qg = greet + (q[0].lower() + q[1:] if greet.endswith(", ") else q)
                    pools["help"].append(_make_task("help", lang, qg, "", HELP_ANSWERS["request", lang],
                                                    topic="request"))
    for fact, fields, value in shop_facts():
        for lang, tmpl in PHRASINGS[fact.split(":")[0]]:
            q = tmpl.format(**fields)
            for greet in SHOP_GREETINGS[lang]:
                qg = greet + (q[0].lower() + q[1:] if greet.endswith(", ") else q)
                for fmt in ("", "one_word"):
                    pools["shop"].append(_make_task("shop", lang, qg, fmt, value, fact=fact))
    return pools, probe_tasks


def shop_facts():
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
