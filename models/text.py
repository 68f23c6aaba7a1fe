"""Words of a sentence as the decoders and the scope detector compare them: one tokenisation, one stem."""

from __future__ import annotations

import re

_WORDS = re.compile(r"[\w'-]+")
# words a fact shares with any sentence: they say nothing about what it is about or what it answers
STOPWORDS = frozenset("a an the of in on at to for by with and or is are was were be been its it his her their "
                      "this that as from has have had".split())
# a sentence's first word is capitalised whatever it is; these are not names
STARTERS = STOPWORDS | frozenset("what who whom whose where when which why how do does did can could will would "
                                 "should tell give name please list describe explain i".split())


def words(text: str) -> list[str]:
    return _WORDS.findall(text)


def stem(word: str) -> str:
    """Lower case without a plural or possessive s: "ends" says nothing new after "end", "Acme's" is Acme."""
    return word.lower().removesuffix("'s").removesuffix("s")


def _is_name(i: int, w: str) -> bool:
    return (w[0].isupper() and not (i == 0 and w.lower() in STARTERS)) or any(c.isdigit() for c in w)


def names(sentence: str) -> set[str]:
    """Stems of the capitalised words and numbers in a sentence, bar its first word when that is a question or
    function word: what the sentence is about ("Where was Marie Curie born?" -> marie, curie)."""
    return {stem(w) for i, w in enumerate(words(sentence)) if _is_name(i, w)}


def name_runs(sentence: str) -> list[frozenset[str]]:
    """``names`` grouped into the runs of adjacent words they come in, one per entity named ("Michel Rocard",
    "Ferrari 641", "Law & Order: LA")."""
    runs: list[set[str]] = []
    previous = -2
    for i, w in enumerate(words(sentence)):
        if _is_name(i, w):
            if i == previous + 1:
                runs[-1].add(stem(w))
            else:
                runs.append({stem(w)})
            previous = i
    return [frozenset(r) for r in runs]
