"""Words of a sentence as the decoders and the scope detector compare them: one tokenisation, one stem."""

from __future__ import annotations

import re

_WORDS = re.compile(r"[\w'-]+")
# words a fact shares with any sentence: they say nothing about what it is about or what it answers
STOPWORDS = frozenset("a an the of in on at to for by with and or is are was were be been its it his her their "
                      "this that as from has have had".split())
# a sentence's first word is capitalised whatever it is; these are not names
# words that stand for something named before them ("What does Etta James play? They play")
PRONOUNS = frozenset("he she it they him them his her its their this these those".split())
STARTERS = STOPWORDS | PRONOUNS | frozenset("what who whom whose where when which why how do does did can could will "
                                            "would should tell give name please list describe explain i we you "
                                            "there here my our your".split())


def words(text: str) -> list[str]:
    return _WORDS.findall(text)


def opens_with_pronoun(text: str) -> bool:
    """Whether the text's first word is a pronoun ("She", "Its"): it is about something named before it."""
    ws = words(text)
    return bool(ws) and ws[0].lower() in PRONOUNS


def _words_and_starts(text: str) -> list[tuple[str, bool]]:
    """Each word, and whether it opens a sentence: "What does Etta James play? They play" has two openers,
    and "They" is no name."""
    out, end = [], 0
    for m in _WORDS.finditer(text):
        out.append((m.group(), end == 0 or any(c in ".!?" for c in text[end:m.start()])))
        end = m.end()
    return out


def stem(word: str) -> str:
    """Lower case without a plural or possessive s: "ends" says nothing new after "end", "Acme's" is Acme."""
    return word.lower().removesuffix("'s").removesuffix("s")


def _is_name(w: str, opens_sentence: bool) -> bool:
    return (w[0].isupper() and not (opens_sentence and w.lower() in STARTERS)) or any(c.isdigit() for c in w)


def names(sentence: str) -> set[str]:
    """Stems of the capitalised words and numbers in a sentence, bar a sentence's first word when that is a
    question, function word or pronoun: what the sentence is about ("Where was Marie Curie born?" -> marie,
    curie)."""
    return {stem(w) for w, opens in _words_and_starts(sentence) if _is_name(w, opens)}


# lower-case words inside a name ("Alexander von Zemlinsky"); not "of", which more often stands between two
# entities ("the CEO of Apple") than inside one ("Bank of America")
PARTICLES = frozenset("von van de da di du del der la le".split())
# words a name may carry or drop and still be the same entity ("Apple Inc." is Apple)
SUFFIXES = frozenset("inc ltd llc corp co plc gmbh ag jr sr".split())


def name_runs(sentence: str) -> list[frozenset[str]]:
    """``names`` grouped into the runs of adjacent words they come in, one per entity named ("Michel Rocard",
    "Ferrari 641", "Law & Order: LA"); a particle between two names joins them ("Ludwig van Beethoven"), and a
    stopword or a suffix in a name ("The Wild Child", "Apple Inc.") is no part of what tells it apart."""
    runs: list[set[str]] = []
    tagged = _words_and_starts(sentence)
    previous = -2
    for i, (w, opens) in enumerate(tagged):  # a run may cross a full stop: "Dr. Ada Quill", "John L. Allen"
        if _is_name(w, opens):
            joined = i == previous + 2 and tagged[i - 1][0] in PARTICLES
            if runs and (i == previous + 1 or joined):
                runs[-1].add(stem(w))
            else:
                runs.append({stem(w)})
            previous = i
    runs = [{w for w in r if w not in STOPWORDS and w not in SUFFIXES} for r in runs]
    return [frozenset(r) for r in runs if r]


def mask_names(sentence: str, mask: str = "X") -> str:
    """The sentence with each run of name words (``name_runs``'s, a joining particle included) replaced by
    ``mask``: what is left says which relation it states or asks ("What is the currency of X?" against "The
    capital of X is X."), with nothing of whom it is about."""
    matches = list(_WORDS.finditer(sentence))
    named = [_is_name(w, opens) for w, opens in _words_and_starts(sentence)]
    spans: list[list[int]] = []
    for i, m in enumerate(matches):  # adjacent name words, separated by spaces only, make one run
        particle = (m.group() in PARTICLES and 0 < i < len(matches) - 1 and named[i - 1] and named[i + 1])
        if not (named[i] or particle):
            continue
        if spans and spans[-1][1] == matches[i - 1].end() and not sentence[spans[-1][1]:m.start()].strip():
            spans[-1][1] = m.end()
        else:
            spans.append([m.start(), m.end()])
    out, last = [], 0
    for a, b in spans:
        out += [sentence[last:a], mask]
        last = b
    return "".join(out) + sentence[last:]
