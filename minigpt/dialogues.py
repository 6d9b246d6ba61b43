"""Conversations in the instruction world: the `dialogue` kind of task, a follow-up after one earlier turn.

ChatGPT is InstructGPT plus dialogue: the question to answer is the LAST user message, and it often means
nothing without the turns before it. Each task here is a conversation (an optional system message, one user
question, the assistant's right answer, then the follow-up) and the gold answer to the follow-up:

  family      the conversation                                                          gold answer
  translate   "Translate to French: red" / "rouge" / "And blue?"                        "bleu"
  arithmetic  "What is 3 + 4?" / "7" / "Now add 3 to that."                             "10"
  compare     "Which is larger, 5 or 7?" / "7" / "What about 9?"                        "9"
  shop_count  "How much is the umbrella?" / "$12" / "And two of them?"                  "$24"
              (always two: a price list states what two cost, minigpt/corpus.py; with two, three and four
              the SFT model got 0.15 of world 0's dev split)
  shop_other  "When does the shop open on Monday?" / "9am" / "And on Saturday?"         "10am"
  greeting    "Hello!" / "Hello! How can I help?" / "What is 3 + 4?"                    "7"

in English and in Chinese (the follow-up in the first question's language). A system message that sets the
format ("Always answer in capitals.", "Answer with the number only.") comes with some translate, arithmetic
and compare conversations, and holds for every turn: the earlier answer follows it, and so must the last.

The gold judge reads the last answer as the single-turn task the follow-up stands for (`last`: "Translate to
French: blue" in the system's format), with two mistakes of its own (minigpt/judge.py): `earlier_answer`,
the earlier question answered again ("rouge"), and `forgot_system`, the system message's format dropped.
Every task of the kind is built here (build_dialogues), in an order that does not depend on the seed;
minigpt/world.py deals them out. Plain Python only (no torch, no numpy).
"""

import random

from minigpt.corpus import a_or_an
from minigpt.facts import DAYS_ZH, LEXICON, OPENING_HOURS, PRODUCTS
from minigpt.judge import HELP_ANSWERS
from minigpt.tasks import GREETINGS, PHRASINGS, SHOP_GREETINGS, Task

FAMILIES = ("translate", "arithmetic", "compare", "shop_count", "shop_other", "greeting")
NEEDS_EARLIER = ("translate", "arithmetic", "compare", "shop_count", "shop_other")   # the follow-ups

# A system message that sets the answer's format for the whole conversation: fmt -> (english, chinese)
SYSTEM_FORMATS = {"caps": ("Always answer in capitals.", "请一直用大写字母回答。"),
                  "number": ("Answer with the number only.", "只用数字回答。")}

FOLLOW_UPS = {  # family -> lang -> templates of the last user message
    "translate": {"en": ["And {en}?", "What about {en}?"], "zh": ["那{zh}呢？", "{zh}呢？"]},
    "add": {"en": ["Now add {c} to that.", "Add {c} to that."], "zh": ["再加{c}呢？", "结果再加{c}等于几？"]},
    "sub": {"en": ["Now subtract {c} from that.", "Take {c} away from that."],
            "zh": ["再减{c}呢？", "结果再减{c}等于几？"]},
    "compare": {"en": ["What about {c}?", "And {c}?"], "zh": ["那{c}呢？", "和{c}比呢？"]},
    "count": {"en": ["And two of them?", "How much for 2?", "What about two?", "And for two?"],
              "zh": ["两个呢？", "买2个多少钱？", "两个多少钱？", "那两个呢？"]},
    "day": {"en": ["And on {day}?", "What about {day}?"], "zh": ["那{dayzh}呢？", "{dayzh}呢？"]},
    "product": {"en": ["And {an} {p}?", "What about the {p}?"], "zh": ["那{pzh}呢？", "{pzh}呢？"]},
}
# how many of the huge greeting x question products to keep (a fixed draw: the same for every world)
N_GREETING = 1200


def render_key(messages):
    """A conversation -> one line per message ("user: ..."): the task's unique name (its `instruction`)."""
    return "\n".join(f"{role}: {text}" for role, text in messages)


def _dialogue(family, lang, messages, last, earlier, system_fmt=""):
    """The dialogue Task: its prompt is `messages`; the judge reads its last answer as the task `last`."""
    meta = (("lang", lang), ("family", family), ("messages", tuple(messages)), ("last", last),
            ("earlier", earlier), ("system_fmt", system_fmt))
    return Task("dialogue", render_key(messages), last.answer, meta)


def _last(kind, messages, lang, fmt, plain, **extra):
    """The single-turn task the follow-up stands for: the conversation's text as its instruction (so numbers
    said earlier count as the question's), the follow-up as its question, the system's format as its own."""
    answer = plain.upper() if fmt == "caps" else plain
    meta = ((("lang", lang), ("fmt", fmt), ("question", messages[-1][1]), ("plain", plain))
            + tuple(sorted(extra.items())))
    return Task(kind, "\n".join(text for _, text in messages), answer, meta)


def _in_format(text, fmt):
    return text.upper() if fmt == "caps" else text


def _opening(lang, question, answer, system_fmt):
    """[system,] user question, assistant answer (in the system's format)."""
    system = [("system", SYSTEM_FORMATS[system_fmt][lang == "zh"])] if system_fmt else []
    return system + [("user", question), ("assistant", _in_format(answer, system_fmt))]


def _translations(probe):
    entries = [e for e in LEXICON if e not in probe]
    out = []
    for i, first in enumerate(entries):
        for second in (entries[(i + 7) % len(entries)], entries[(i + 31) % len(entries)]):
            for kind, lang in (("translate_en", "en"), ("translate_zh", "zh")):
                for t, (_, tmpl) in enumerate(p for p in PHRASINGS[kind] if p[0] == lang):
                    if t % 2 != (i % 2):   # half the phrasings of each pair: enough, and the pool stays small
                        continue
                    for system_fmt in ("", "caps"):
                        q = tmpl.format(en=first.en, zh=first.zh)
                        follow = FOLLOW_UPS["translate"][lang][(i + t) % 2].format(en=second.en, zh=second.zh)
                        msgs = _opening(lang, q, first.fr, system_fmt) + [("user", follow)]
                        last = _last(kind, msgs, lang, system_fmt, second.fr, en=second.en, zh=second.zh)
                        out.append(_dialogue("translate", lang, msgs, last, _in_format(first.fr, system_fmt),
                                             system_fmt))
    return out


def _arithmetic():
    """The first answer is at most 9, so the follow-up is a sum or difference of two digits: a fact the
    pretraining text states (minigpt/corpus.py), as every single-turn sum is."""
    out = []
    for a in range(10):
        for b in range(10):
            for op in ("add", "sub") if a >= b else ("add",):
                prev = a + b if op == "add" else a - b
                if prev > 9:
                    continue
                for c in range(1, 10):
                    for then in ("add", "sub") if prev >= c else ("add",):
                        for t, (lang, tmpl) in enumerate(PHRASINGS[op]):
                            if (a + b + c + t) % 2:   # half the phrasings: the pool stays small
                                continue
                            value = prev + c if then == "add" else prev - c
                            follow = FOLLOW_UPS[then][lang][(a + c) % 2].format(c=c)
                            system_fmt = "number" if (a * 7 + b + c) % 4 == 0 else ""
                            msgs = _opening(lang, tmpl.format(a=a, b=b), str(prev), system_fmt)
                            msgs.append(("user", follow))
                            last = _last("arithmetic", msgs, lang, system_fmt, str(value), a=prev, b=c,
                                         op="+" if then == "add" else "-")
                            out.append(_dialogue("arithmetic", lang, msgs, last, str(prev), system_fmt))
    return out


def _compare():
    out = []
    for a in range(21):
        for b in range(21):
            if a == b:
                continue
            prev = max(a, b)
            for c in range(21):
                # "What about c?" asks for the larger of c and the answer so far; c is chosen so that
                # reading it as "a or c?" gives the same answer, so the question is never ambiguous
                if c in (a, b) or max(a, c) != max(prev, c) or (a + 2 * b + c) % 6:
                    continue
                for t, (lang, tmpl) in enumerate(PHRASINGS["compare"]):
                    if (a + b + c + t) % 2:
                        continue
                    system_fmt = "number" if (a + b * c) % 3 == 0 else ""
                    msgs = _opening(lang, tmpl.format(a=a, b=b), str(prev), system_fmt)
                    msgs.append(("user", FOLLOW_UPS["compare"][lang][(b + c) % 2].format(c=c)))
                    last = _last("compare", msgs, lang, system_fmt, str(max(prev, c)), a=prev, b=c)
                    out.append(_dialogue("compare", lang, msgs, last, str(prev), system_fmt))
    return out


def _shop():
    """shop_count: a price, then n of the thing; shop_other: an opening time or a price, then another day's or
    thing's."""
    count, other = [], []         # (what n of a thing cost the pretraining text states: minigpt/corpus.py)
    days = [d for d in OPENING_HOURS if OPENING_HOURS[d][0] != "closed"]
    for i, (p, pzh, price) in enumerate(PRODUCTS):
        fields = {"p": p, "an": a_or_an(p), "pzh": pzh}
        for t, (lang, tmpl) in enumerate(PHRASINGS["price"]):
            q = tmpl.format(**fields)
            for greet in SHOP_GREETINGS[lang]:
                for follow in FOLLOW_UPS["count"][lang]:
                    first = greet + (q[0].lower() + q[1:] if greet.endswith(", ") else q)
                    msgs = [("user", first), ("assistant", price), ("user", follow)]
                    total = f"${int(price[1:]) * 2}"
                    last = _last("shop", msgs, lang, "", total, fact=f"price:{p}")
                    count.append(_dialogue("shop_count", lang, msgs, last, price))
            for j, (p2, pzh2, price2) in enumerate(PRODUCTS):
                if j != i and price2 != price:
                    follow = FOLLOW_UPS["product"][lang][(i + j) % 2].format(p=p2, an=a_or_an(p2), pzh=pzh2)
                    msgs = [("user", q), ("assistant", price), ("user", follow)]
                    last = _last("shop", msgs, lang, "", price2, fact=f"price:{p2}")
                    other.append(_dialogue("shop_other", lang, msgs, last, price))
    for which, key in ((0, "open"), (1, "close")):
        for day in days:
            for day2 in days:
                if OPENING_HOURS[day2][which] == OPENING_HOURS[day][which]:
                    continue
                for t, (lang, tmpl) in enumerate(PHRASINGS[key]):
                    q = tmpl.format(day=day, dayzh=DAYS_ZH[day])
                    for f, follow in enumerate(FOLLOW_UPS["day"][lang]):
                        msgs = [("user", q), ("assistant", OPENING_HOURS[day][which]),
                                ("user", follow.format(day=day2, dayzh=DAYS_ZH[day2]))]
                        last = _last("shop", msgs, lang, "", OPENING_HOURS[day2][which], fact=f"{key}:{day2}")
                        other.append(_dialogue("shop_other", lang, msgs, last, OPENING_HOURS[day][which]))
    return count, other


def _greetings(singles):
    """A greeting, the desk's greeting back, then a question of another kind (its own single-turn task)."""
    rng = random.Random("greeting-dialogues")                # a fixed draw, the same for every world
    out = []
    for lang in ("en", "zh"):
        openers, endings = GREETINGS[lang]
        hello = [o + e for o in openers for e in endings[:2]]
        asked = [t for t in singles if t.get("lang") == lang and not t.get("fmt")]
        for task in rng.sample(asked, min(N_GREETING // 2, len(asked))):
            msgs = [("user", rng.choice(hello)), ("assistant", HELP_ANSWERS["greeting", lang]),
                    ("user", task.instruction)]
            last = Task(task.kind, "\n".join(text for _, text in msgs), task.answer, task.meta)
            out.append(_dialogue("greeting", lang, msgs, last, HELP_ANSWERS["greeting", lang]))
    return out


def build_dialogues(pools, probe):
    """family -> every dialogue task of that family, in a seed-independent order. `pools` are the single-turn
    tasks (minigpt/tasks.py build_pools): the greeting family asks their questions; probe lexicon entries are
    never asked."""
    count, other = _shop()
    singles = [t for kind in ("translate_en", "translate_zh", "arithmetic", "compare", "shop")
               for t in pools[kind]]
    families = {"translate": _translations(probe), "arithmetic": _arithmetic(), "compare": _compare(),
                "shop_count": count, "shop_other": other, "greeting": _greetings(singles)}
    for name, tasks in families.items():                     # one task per conversation
        seen, unique = set(), []
        for t in tasks:
            if t.instruction not in seen:
                seen.add(t.instruction)
                unique.append(t)
        families[name] = unique
    return families
