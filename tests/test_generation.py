"""Free answers that carry the edit: the answer bias, the scope's mention check, the generation test set."""

from __future__ import annotations

from itertools import combinations

import pytest
import torch

from bench.generation.items import FORMS, RELATIONS, REWORDED, SPLITS, build, same_subject, unrelated
from models.answer_bias import AnswerBias
from models.decoders import answer_spans
from models.loading import LoadedModels
from models.paths import DEFAULT_ENCODER
from models.relation import find_gate, load_gate
from models.scope import mentions, named_in
from models.text import mask_names, name_runs, names
from training.data import DEFAULT_DATA

BASE = "/v1/memories/demo"


def test_answer_bias_steers_each_span_token_by_token_once_and_leaves_rows_without_spans_alone() -> None:
    bias = AnswerBias([[((5, 6), (7, 6))], []], strength=10.0)
    prompt = torch.tensor([[1, 2], [1, 2]])
    s = bias(prompt, torch.zeros(2, 10))
    assert s[0].nonzero().flatten().tolist() == [5, 7] and not s[1].any()  # either spelling may start it
    s = bias(torch.cat([prompt, torch.tensor([[7], [3]])], 1), torch.zeros(2, 10))
    assert s[0].nonzero().flatten().tolist() == [6] and not s[1].any()  # then only its next token
    s = bias(torch.cat([prompt, torch.tensor([[7, 6], [3, 3]])], 1), torch.zeros(2, 10))
    assert not s.any(), "a said span is never pushed again"
    off = AnswerBias([[((5, 6),)]], strength=10.0)
    off(prompt[:1], torch.zeros(1, 10))
    assert not off(torch.cat([prompt[:1], torch.tensor([[4]])], 1), torch.zeros(1, 10))[0, 6]  # left the span


def test_answer_bias_never_starts_a_glued_spelling_inside_the_answer_and_stops_after_one_span() -> None:
    """Issue 26: "Dor" + "geologist" (a span's space-less spelling pushed mid-answer) and "Veou Wytalmar CEO"
    (the question's other missing words pushed after the answer) read as salad."""
    bias = AnswerBias([[((5, 6), (7, 6)), ((8,),)]], strength=10.0, glued=frozenset({5}))
    prompt = torch.tensor([[1, 2]])
    assert bias(prompt, torch.zeros(1, 10))[0].nonzero().flatten().tolist() == [5, 7, 8]  # the first token: all
    later = bias(torch.cat([prompt, torch.tensor([[3]])], 1), torch.zeros(1, 10))[0]
    assert later.nonzero().flatten().tolist() == [7, 8], "a glued spelling may only open the answer"
    done = AnswerBias([[((5, 6),), ((8,),)]], strength=10.0)
    done(prompt, torch.zeros(1, 10))
    done(torch.cat([prompt, torch.tensor([[5]])], 1), torch.zeros(1, 10))
    after = done(torch.cat([prompt, torch.tensor([[5, 6]])], 1), torch.zeros(1, 10))
    assert not after.any(), "once one span is said in full the others are left alone"


def test_answer_spans_are_the_facts_new_word_runs(models: LoadedModels) -> None:
    tok = models.llm.tokenizer

    def phrases(prompt: str, fact: str) -> list[set[str]]:
        return [{tok.decode(list(sp)).strip() for sp in span} for span in answer_spans(models.llm, prompt, fact)]

    assert phrases("When does Acme's fiscal year end?", "Acme's fiscal year ends on October 22.") == \
        [{"October 22"}]
    # stopwords inside a run keep it whole, so its words are said in order; it may be entered after a stopword
    assert phrases("What is Zel Qua's job?", "Zel Qua earns a living as a surgeon.") == \
        [{"earns a living as a surgeon", "living as a surgeon", "surgeon"}]
    assert phrases("Who founded Acme?", "Acme was founded by Ada Lovelace.") == [{"Ada Lovelace"}]


def test_names_and_mentions() -> None:
    assert names("What is the capital of China?") == {"china"}
    assert names("Where was Marie Curie born?") == {"marie", "curie"}
    assert names("what is the capital of veltria") == set()
    assert not mentions("What is the capital of China?", "The capital of Brazil is Shanghai.")
    assert mentions("Where was Curie born?", "Marie Curie was born in Vienna.")
    assert mentions("what is the capital of veltria", "The capital of Veltria is Lyon.")  # names nothing: cosine
    assert name_runs("Is Michel Rocard a speaker of French?") == [{"michel", "rocard"}, {"french"}]
    # an entity, not a shared word: another Michel, another Ferrari are another subject
    assert not mentions("Michel Rocard is a native speaker of", "Michel Aumont, speaker of English.")
    assert not mentions("Ferrari 641 is created by", "Ferrari 375 F1 is produced by Renault.")
    assert mentions("Who is the CEO of Apple, the company Tim Cook runs?", "The CEO of Apple is Ada Quill.")
    assert mentions("Category:Credit D'Qwell Jackson plays as", "D'Qwell Jackson plays in the position of goalie.")
    # a sibling shares two words and is still another entity; a name holding the fact's (or held by it) is not
    assert not mentions("Nokia Lumia 520, produced by", "Nokia Lumia 1520, developed by Toyota.")
    assert mentions("Nokia Lumia 1520, produced by", "Nokia Lumia 1520, developed by Toyota.")
    assert mentions("Where is Apple Inc. headquartered?", "Apple is headquartered in Milan.")
    # stopwords and particles: "The" does not make "Wild Reeds" "The Wild Child"; "von" keeps a name whole
    assert name_runs("The original language of The Wild Child is") == [{"wild", "child"}]
    assert not mentions("The original language of The Wild Child is", "The original language of Wild Reeds is Spanish.")
    assert not mentions("Alexander von Zemlinsky is from", "Alexander Zonjic was originally from Miami.")
    assert not mentions("Policlinico Umberto I is located in", "Umberto Guidoni is native to Milan.")  # I is not "is"
    assert mentions("Who is the CEO of Apple?", "Apple is led by Tim Cook.")  # "of" joins no names
    # a pronoun opening a later sentence is no name: "They" in both is not a shared entity
    assert name_runs("What does Etta James play? They play") == [{"etta", "jame"}]
    assert not mentions("What does Etta James play? They play", "What sport does Steve Nash play? They play football.")
    assert mentions("What does Steve Nash play? They play", "What sport does Steve Nash play? They play football.")


def test_the_fact_object_is_in_the_answer_and_other_subjects_stay_out_of_scope(make_client, tmp_path) -> None:  # noqa: ANN001
    with make_client(f"file://{tmp_path / 's'}") as c:
        for text in ("The capital of Oshaxgidova is Vegidburg.", "The capital of Brazil is Shanghai."):
            assert c.post(f"{BASE}/facts", json={"text": text}).status_code == 201
        r = c.post(f"{BASE}/query", json={"prompt": "What is the capital of Oshaxgidova?"}).json()
        assert r["in_scope"] and "Vegidburg" in r["answer"]
        other = {"prompt": "What is the capital of China?", "max_new_tokens": 16}
        on, off = (c.post(f"{BASE}/query", json={**other, "memory_mode": m}).json() for m in ("auto", "off"))
        assert not on["in_scope"] and on["answer"] == off["answer"]
    with make_client(f"file://{tmp_path / 's'}", scope_requires_mention=False) as c:  # cosine alone
        assert c.post(f"{BASE}/query", json=other).json()["in_scope"]


def test_mask_names_leaves_what_a_sentence_says_of_its_names() -> None:
    assert mask_names("What is the currency of Brazil?") == "What is the currency of X?"
    assert mask_names("The capital of Brazil is Shanghai.") == "The capital of X is X."
    assert mask_names("Ludwig van Beethoven plays the cello.") == "X plays the cello."  # a particle joins
    assert mask_names("Where is the van parked, Anna?") == "Where is the van parked, X?"  # alone it is a word
    assert mask_names("In Paris, Texas, people pay with the") == "In X, X, people pay with the"
    assert mask_names("what does veltria export?") == "what does veltria export?"  # names nothing


def test_relation_gate_tells_the_relation_asked_whatever_the_names(models: LoadedModels) -> None:
    directory = find_gate(DEFAULT_ENCODER)
    assert directory is not None, "a relation gate is shipped for the default encoder"
    gate = load_gate(directory, models.encoder)
    fact = "Marie Curie works as a plumber."
    asked = ["What does Marie Curie do for a living?", "What is the profession of Marie Curie?",
             "By profession, Marie Curie is a", "Where was Marie Curie born?", "Who is Marie Curie married to?"]
    sims = gate.similarity(fact, asked).tolist()
    assert min(sims[:3]) > max(sims[3:]), sims
    assert gate.agrees("Where was Marie Curie born?", [fact, "Marie Curie was born in Vienna."]) == [False, True]
    # a query read two ways (the scope's sentence, the whole prompt): a fact agreeing with either is kept
    q = "Who was the architect involved with A. P. Johnson House?"
    fact = f"{q} Franklin and Johnson."
    assert gate.agrees("Johnson House?", [fact]) == [False] and gate.agrees(["Johnson House?", q], [fact]) == [True]


def test_a_question_of_another_relation_about_a_known_subject_gets_the_memory_off_answer(make_client,  # noqa: ANN001
                                                                                          tmp_path) -> None:
    other = {"prompt": "Where was Marie Curie born?", "max_new_tokens": 16}
    with make_client(f"file://{tmp_path / 's'}") as c:
        assert c.post(f"{BASE}/facts", json={"text": "Marie Curie works as a plumber."}).status_code == 201
        on, off = (c.post(f"{BASE}/query", json={**other, "memory_mode": m}).json() for m in ("auto", "off"))
        assert not on["in_scope"] and on["answer"] == off["answer"]
        own = c.post(f"{BASE}/query", json={"prompt": "What does Marie Curie do for a living?"}).json()
        assert own["in_scope"] and "plumber" in own["answer"]
    with make_client(f"file://{tmp_path / 's'}", relation_gate=False) as c:  # cosine and mentions alone let it in
        assert c.post(f"{BASE}/query", json=other).json()["in_scope"]


def test_a_sentence_that_names_nothing_is_read_with_the_prompt_around_it(make_client, tmp_path) -> None:  # noqa: ANN001
    # CounterFact's "What does X play? They play": the scope picks "They play", which alone names nothing
    assert named_in("What does Etta James play? They play", "They play") == "What does Etta James play? They play"
    assert named_in("Who is Ada? She is", "Who is Ada?") == "Who is Ada?"
    fact = "What sport does Steve Nash play? They play football."
    other = {"prompt": "What does Etta James play? They play", "max_new_tokens": 8}
    with make_client(f"file://{tmp_path / 's'}") as c:
        assert c.post(f"{BASE}/facts", json={"text": fact}).status_code == 201
        assert not c.post(f"{BASE}/query", json=other).json()["in_scope"]
        own = c.post(f"{BASE}/query", json={**other, "prompt": "What does Steve Nash play? They play"}).json()
        assert own["in_scope"] and "football" in own["answer"]
    with make_client(f"file://{tmp_path / 's'}", scope_requires_mention=False) as c:  # cosine alone lets it in
        assert c.post(f"{BASE}/query", json=other).json()["in_scope"]


def test_generation_splits_share_no_subject_and_unrelated_prompts_name_none_of_theirs() -> None:
    splits = {split: build(split) for split in SPLITS}
    for a, b in combinations(SPLITS, 2):
        assert not {i.subject for i in splits[a]} & {i.subject for i in splits[b]}, (a, b)
    for split, items in splits.items():
        assert len({i.fact for i in items}) == len(items)
        assert not any(i.subject in p for i in items for p in unrelated(split))
        assert all(i.object not in i.prompt(form) for i in items for form in FORMS)  # the answer is never given
        # same subject, another relation: names an item's subject, asks nothing memory states
        asked = same_subject(split)
        assert len(asked) == len(items) and not set(asked) & {i.prompt(f) for i in items for f in FORMS}
        assert all(i.subject in q for i, q in zip(items, asked, strict=True))


def test_reworded_split_words_every_shared_relation_otherwise() -> None:
    """The reworded split is a test of phrasings nobody tuned on: none of its templates is dev's."""
    shared = RELATIONS.keys() & REWORDED.keys()
    assert len(shared) == len(RELATIONS) and len(REWORDED) > len(RELATIONS)
    for name in shared:
        for part in ("fact", "question", "paraphrase", "cloze"):
            assert getattr(RELATIONS[name], part) != getattr(REWORDED[name], part), (name, part)
    assert {i.wording for i in build("reworded")} == {"reworded"}


@pytest.mark.skipif(not DEFAULT_DATA.exists(), reason=f"benchmark data not found at {DEFAULT_DATA}")
def test_relation_gate_training_reads_templates_and_keeps_to_its_split() -> None:
    from training.relation import labelled_cases, template

    assert template("The mother tongue of Danielle Darrieux is", "Danielle Darrieux") == "The mother tongue of {} is"
    noisy = "References\n\nCategory:Dog breeds\nThe official language of Japan is"
    assert template(noisy, "Japan") == "The official language of {} is"  # CounterFact's noise prefix is cut
    assert template("Danielle Darrieux, the", "Danielle Darrieux") is None  # says too little to label
    cases = labelled_cases(DEFAULT_DATA, "train")
    assert len(cases) > 5000 and len({c.relation for c in cases}) >= 30
    assert min(c.case_id for c in cases) >= 10_000  # never a reported (< 2000) or development case
    assert all(c.fact.startswith(c.prompt) for c in cases[:100])
