"""The pretraining corpus of the instruction world: sentences that state its facts, in English and Chinese.

Pretraining on this text is how the model learns *what* is true in the world (the French word for cat, 3 + 4,
the shop's opening hours); SFT later teaches it *how to answer* an instruction. Every sentence is true: its
fields are drawn from minigpt/facts.py. Plain Python, seeded by the random.Random it is given.
"""

import re

from minigpt.facts import (DAYS_ZH, DELIVERY_FEE, FREE_DELIVERY_OVER, GIFT_WRAP, LEXICON, NUMBER_WORDS,
                           OPENING_HOURS, PRODUCTS, RETURN_DAYS)

# words the corpus spells, capitalises and reverses: lowercase single English words of 3-8 letters
WORDS = [e.en for e in LEXICON if re.fullmatch(r"[a-z]{3,8}", e.en) and e.en != e.en[::-1]]


CORPUS_TEMPLATES = {  # topic -> sentence templates; fields are filled by _corpus_fields
    "lexicon": ["The French word for {en} is {fr}.", "In French, {en} is {fr}.",
                "{fr} is the French word for {en}.", "{zh} in French is {fr}.", "{zh}的法语是{fr}。",
                "{zh}用法语说就是{fr}。", "In Chinese, {en} is {zh}.",
                "{en} means {zh} in Chinese and {fr} in French.", "Q: What does {fr} mean? A: It means {en}.",
                "A French speaker says {fr} for {en}.", "法语单词{fr}的意思是{zh}。",
                "My teacher says that {en} in French is {fr}.", "Remember: {en} = {fr}.",
                "In capital letters, {fr} is written {FR}.", "Q: How is {en} said in French? A: {fr}.",
                "问：{zh}的法语怎么说？答：{fr}。", "{zh}翻译成法语是{fr}。",
                "To translate {en} into French, write {fr}."],
    "arithmetic": ["{a} plus {b} is {sum}.", "{a} + {b} = {sum}.", "{a}加{b}等于{sum}。",
                   "{hi} minus {lo} is {diff}.", "{hi} - {lo} = {diff}.", "{hi}减{lo}等于{diff}。",
                   "{a} times {b} is {prod}.",
                   "If you have {a} apples and get {b} more, you have {sum} apples.", "{a}+{b}={sum}",
                   "The sum of {a} and {b} is {sum}.", "{sum} is what you get when you add {a} and {b}.",
                   "The number {a} is written {a_en} in English, {a_zh} in Chinese and {a_fr} in French.",
                   "Q: What do you get from {a} plus {b}? A: {sum}.",
                   "问：{a}加{b}得多少？答：{sum}。", "计算：{a}+{b}={sum}。",
                   "计算：{hi}-{lo}={diff}。"],
    "code": ["In Python, the expression {a} + {b} adds {a} and {b}.",
             "The Python expression {a} * {b} multiplies {a} by {b}; it gives {prod}.",
             "In Python you write {hi} - {lo} to subtract {lo} from {hi}.",
             "Python表达式{a} + {b}计算{a}加{b}。", "Python表达式{a} * {b}计算{a}乘以{b}。",
             "To get the product of {a} and {b} in Python, type {a} * {b}.",
             "Q: Which Python expression adds {a} and {b}? A: {a} + {b}.",
             "写Python表达式{a} + {b}就能算出{a}加{b}。"],
    "word": ["The word {w} spelled backwards is {rev}.", "{w} has {n} letters.",
             "{w} written in capitals is {W}.", "单词{w}有{n}个字母。", "{w}倒过来写是{rev}。",
             "Spelled letter by letter, {w} is {dashed}.", "{w}的大写是{W}。",
             "Read backwards, {w} becomes {rev}.", "Q: What is {w} spelled backwards? A: {rev}.",
             "问：单词{w}有几个字母？答：{n}。", "用大写字母写{w}就是{W}。",
             "把单词{w}倒过来写就是{rev}。"],
    "compare": ["{hi} is larger than {lo}.", "{lo} is smaller than {hi}.", "{hi}比{lo}大。",
                "Between {a} and {b}, the bigger number is {hi}.", "{a}和{b}相比，{hi}更大。",
                "Q: Which number is larger, {a} or {b}? A: {hi}.",
                "问：{a}和{b}哪个更大？答：{hi}。"],
    "shop": ["The shop opens at {open} on {day}.", "On {day} the shop closes at {close}.",
             "商店{dayzh}{open}开门，{close}关门。", "On {day} we are open from {open} to {close}.",
             "{A} {p} costs {price}.", "{pzh}的价格是{price}。",
             "A customer asked about the {p}. The clerk said it costs {price}.",
             "You can return an item within {returns} days.", "Delivery costs {delivery}.",
             "Delivery is free above {free}.", "Gift wrapping costs {wrap}.",
             "退货期限是{returns}天，运费是{delivery}。",
             "Q: When do you open on {day}? A: At {open}.", "问：{pzh}多少钱？答：{price}。",
             "Q: How much is delivery? A: {delivery}.", "问：商店{dayzh}几点关门？答：{close}。",
             # what a follow-up such as "And two of them?" asks (minigpt/dialogues.py)
             "Two {ps} cost {p2}.", "两个{pzh}一共{p2}。"],
    "sunday": ["The shop is closed on Sunday.", "商店星期日不开门。", "On Sunday we are closed."],
    "story": ["The {adj} {animal} is {colour}.", "My {person} likes {food}.",
              "On {day}, the {person} goes to the {place}.", "The {animal} sleeps under the {thing}.",
              "我的{person_zh}喜欢{food_zh}。", "{day_zh}，{person_zh}去{place_zh}。",
              "There is a {colour} {thing} in the {place}.",
              "The {person} buys {food} at the market on {day}."],
}
CORPUS_WEIGHTS = {"lexicon": 40, "arithmetic": 20, "code": 8, "word": 4, "compare": 10, "shop": 14,
                  "story": 4}
_BY_CAT = {}
_DAYS = list(OPENING_HOURS)
for _e in LEXICON:
    _BY_CAT.setdefault(_e.cat, []).append(_e)


def _pick(rng, seq):
    return seq[int(rng.random() * len(seq))]  # rng.choice, 3x faster (the corpus draws ~600k times)


def _corpus_fields(topic, rng):
    """The facts one sentence of this topic talks about, drawn at random (always true in this world)."""
    if topic == "lexicon":
        e = _pick(rng, LEXICON)
        return {"en": e.en, "zh": e.zh, "fr": e.fr, "FR": e.fr.upper()}
    if topic in ("arithmetic", "code", "compare"):
        first, n = {"compare": (0, 21), "code": (1, 9), "arithmetic": (0, 10)}[topic]
        a, b = first + int(rng.random() * n), first + int(rng.random() * n)
        if topic == "compare" and a == b:
            b = (a + 1 + int(rng.random() * (n - 1))) % n  # another number in 0..20
        hi, lo = max(a, b), min(a, b)
        return {"a": a, "b": b, "hi": hi, "lo": lo, "sum": a + b, "diff": hi - lo, "prod": a * b,
                "a_en": NUMBER_WORDS["en"][a], "a_zh": NUMBER_WORDS["zh"][a], "a_fr": NUMBER_WORDS["fr"][a]}
    if topic == "word":
        w = _pick(rng, WORDS)
        return {"w": w, "rev": w[::-1], "n": len(w), "W": w.upper(), "dashed": "-".join(w)}
    if topic == "shop":
        day = _pick(rng, _DAYS)
        p, pzh, price = _pick(rng, PRODUCTS)
        return {"ps": plural(p), "p2": f"${int(price[1:]) * 2}", "day": day, "dayzh": DAYS_ZH[day],
                "open": OPENING_HOURS[day][0],
                "close": OPENING_HOURS[day][1], "p": p, "A": a_or_an(p).capitalize(), "pzh": pzh,
                "price": price, "returns": RETURN_DAYS, "delivery": DELIVERY_FEE, "free": FREE_DELIVERY_OVER,
                "wrap": GIFT_WRAP}
    pick = {k: _pick(rng, _BY_CAT[c])
            for k, c in (("adj", "adjective"), ("animal", "animal"), ("colour", "colour"),
                         ("person", "person"), ("food", "food"), ("day", "day"), ("place", "place"),
                         ("thing", "home"))}
    fields = {k: e.en for k, e in pick.items()}
    fields.update({k + "_zh": e.zh for k, e in pick.items()})
    return fields


def _corpus_sentence(topic, rng):
    fields = _corpus_fields(topic, rng)
    if topic == "shop" and fields["day"] == "Sunday" and rng.random() < 0.5:
        topic = "sunday"  # "opens at closed" is not a sentence
    template = _pick(rng, CORPUS_TEMPLATES[topic])
    if topic == "shop" and fields["day"] == "Sunday" and ("{open}" in template or "{close}" in template):
        template = _pick(rng, CORPUS_TEMPLATES["sunday"])
    return template.format(**fields)


def a_or_an(noun):
    return "an" if noun[0] in "aeiou" else "a"


def plural(noun):
    return noun[:-1] + "ves" if noun.endswith("f") else noun + "s"


def make_corpus(rng, n_chars):
    """Paragraphs of 3-7 sentences, one per line, until n_chars characters."""
    bag = [topic for topic, weight in CORPUS_WEIGHTS.items() for _ in range(weight)]
    lines, total = [], 0
    while total < n_chars:
        sentences = [_corpus_sentence(_pick(rng, bag), rng) for _ in range(3 + int(rng.random() * 5))]
        line = " ".join(sentences)
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


# ~1.4M tokens: a 2048-token BPE trained on it gives ~3.0 chars/token (measured)
DEFAULT_CORPUS_CHARS = 4_200_000
