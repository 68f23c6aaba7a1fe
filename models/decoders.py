"""Decoders: how a memory readout reaches the LLM.

A ``Decoder`` turns (prompt, readout) into what the LLM generates or scores, many prompts per batch; a
single request is a batch of one, so the service serves exactly what the benchmarks measure. With no
readout (out of scope, or memory off) every decoder must give the plain LLM exactly, as if no memory
existed.

- ``context``: the facts a readout reconstructs go into the prompt as text (``ContextDecoder``).
- ``latent``: the paper's trained decoder; the readout becomes a key/value prefix and an embedding bias
  (``models.latent``), the prompt stays bare (``LatentDecoder``).
- ``hybrid``: the same trained prefix, with the facts shown as text too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor
from transformers.generation.streamers import BaseStreamer

from models.answer_bias import AnswerBias, Span
from models.latent import LatentAdapter
from models.llm import GREEDY, CausalLM, ContinuationScore, Generation, MaxNewTokens, RowsStreamer, Sampling, row_limits
from models.text import STOPWORDS, stem, words

ScoreRequest = tuple[str, list[str], "Readout | None"]  # prompt, candidates, readout
GenerateRequest = tuple["str | Chat", "Readout | None"]  # prompt (or a conversation ending in it), readout


@dataclass(frozen=True)
class Chat:
    """A conversation: the turns before (``{"role", "content"}`` dicts, the chat template's) and the last user
    turn, the prompt memory answers. A plain prompt is a conversation with nothing before it."""

    history: tuple[dict[str, str], ...]
    prompt: str


def prompt_of(p: str | Chat) -> str:
    return p.prompt if isinstance(p, Chat) else p


def history_of(p: str | Chat) -> list[dict[str, str]]:
    return list(p.history) if isinstance(p, Chat) else []


@dataclass(frozen=True)
class Readout:
    latent: Tensor  # (C,) z_r, the memory's reconstruction for the query
    facts: tuple[str, ...]  # texts of the written facts nearest to z_r, best first
    fact_latents: Tensor | None = None  # (k, C) their written latents, same order
    context: tuple[str, ...] = ()  # per fact, the text it continues ("" for none): shown before it, never steered to

    @property
    def shown(self) -> tuple[str, ...]:
        """The facts as the LLM reads them: each after the text it continues ("Orla Fennimore grew up in Oslo. She
        learned the bassoon in Reykjavik.")."""
        context = self.context or ("",) * len(self.facts)
        return tuple(f"{c} {f}" if c else f for f, c in zip(self.facts, context, strict=True))


class Decoder(Protocol):
    name: str  # one of DECODERS

    def generation_text(self, llm: CausalLM, prompt: str | Chat, readout: Readout | None) -> str: ...

    def score_batch(self, llm: CausalLM, items: Sequence[ScoreRequest]) -> list[list[ContinuationScore]]: ...

    def generate_batch(self, llm: CausalLM, items: Sequence[GenerateRequest], max_new_tokens: MaxNewTokens,
                       min_new_tokens: int = 0, sampling: Sampling = GREEDY,
                       streamer: BaseStreamer | None = None) -> list[Generation]: ...


DEFAULT_ANSWER_BIAS = 12.0  # LARIMAR_ANSWER_BIAS: chosen on bench.generation dev (4, 8, 12: 12 best, fluency kept)


def answer_spans(llm: CausalLM, prompt: str, fact: str) -> list[Span]:
    """The runs of words a fact has and the prompt has not, in the fact's order: where the answer lies
    ("October 22", "earns a living as a surgeon"). Only a word the prompt names breaks a run; stopwords inside
    one are kept (split there, "earns" and "surgeon" were both pushed at once: "earns surgeon living") and
    trimmed at its ends. A run may be entered after any of its stopwords too, so an answer can pick it up where
    the prompt leaves off ("... has a job as a" -> "surgeon"), but not inside a name ("Lovelace" alone); each
    such suffix is a spelling, alone and after a space.
    """
    asked = {stem(w) for w in words(prompt) if w.lower() not in STOPWORDS}
    runs: list[list[str]] = [[]]
    for w in words(fact):
        if w.lower() not in STOPWORDS and stem(w) in asked:
            runs.append([])
        else:
            runs[-1].append(w)
    spans = []
    for run in runs:
        content = [i for i, w in enumerate(run) if w.lower() not in STOPWORDS]
        if not content:
            continue
        starts = [i for i in content if i == content[0] or run[i - 1].lower() in STOPWORDS]
        phrases = {" ".join(run[i : content[-1] + 1]) for i in starts}
        spellings = {tuple(llm.tokenizer(p, add_special_tokens=False)["input_ids"])
                     for phrase in phrases for p in (phrase, " " + phrase)}
        spans.append(tuple(sorted(sp for sp in spellings if sp)))
    return spans


def answer_bias(llm: CausalLM, items: Sequence[GenerateRequest], strength: float) -> AnswerBias | None:
    """The bias for a batch: each row with a recalled fact is steered to what its best fact adds to its prompt."""
    if strength <= 0:
        return None
    spans = [answer_spans(llm, prompt_of(p), r.facts[0]) if r is not None and r.facts else [] for p, r in items]
    firsts = {sp[0] for row in spans for span in row for sp in span}
    glued = frozenset(t for t in firsts if not llm.tokenizer.decode([t]).startswith((" ", "\n")))
    return AnswerBias(spans, strength, glued) if any(spans) else None


def facts_block(facts: tuple[str, ...]) -> str:
    head = "New fact" if len(facts) == 1 else "New facts"
    return head + ":\n" + "\n".join(f"- {f}" for f in facts)


class ContextDecoder:
    """Facts in the prompt, phrased as measured best for SmolLM2-135M on CounterFact dev records.

    Generation: one user turn "New facts: ... Using the new facts, answer: <prompt>".
    Scoring: the user turn asks to complete a sentence and the assistant turn
    starts with the prompt, so candidates are scored as the assistant's words
    (ES 1.0 / PS 0.9 on 60 dev records, against 0.77 / 0.68 for plain
    "fact\\nprompt" text). Without a readout: the bare prompt, no template
    for scoring and a lone user turn for generation, i.e. the plain LLM.
    """

    name = "context"

    def __init__(self, answer_bias: float = 0.0) -> None:
        self.answer_bias = answer_bias  # logit boost of the recalled fact's answer words (0: none)

    def generation_text(self, llm: CausalLM, prompt: str | Chat, readout: Readout | None) -> str:
        return llm.render(self.generation_messages(prompt, readout))

    def generation_messages(self, prompt: str | Chat, readout: Readout | None) -> list[dict[str, str]]:
        """The facts go into the last user turn; earlier turns stay as they were (also what a remote engine
        gets, ``models.remote``)."""
        before, text = history_of(prompt), prompt_of(prompt)
        if readout is None or not readout.facts:
            return [*before, {"role": "user", "content": text}]
        n = "fact" if len(readout.facts) == 1 else "facts"
        content = f"{facts_block(readout.shown)}\nUsing the new {n}, answer: {text}"
        return [*before, {"role": "user", "content": content}]

    def scoring_prefix(self, llm: CausalLM, prompt: str, readout: Readout | None) -> str:
        if readout is None or not readout.facts:
            return prompt
        n = "fact" if len(readout.facts) == 1 else "facts"
        content = f"{facts_block(readout.shown)}\nUsing the new {n}, complete the sentence."
        return llm.render([{"role": "user", "content": content}]) + prompt

    def score_batch(self, llm: CausalLM, items: Sequence[ScoreRequest]) -> list[list[ContinuationScore]]:
        return llm.score_batch([(self.scoring_prefix(llm, p, r), c) for p, c, r in items])

    def generate_batch(self, llm: CausalLM, items: Sequence[GenerateRequest], max_new_tokens: MaxNewTokens,
                       min_new_tokens: int = 0, sampling: Sampling = GREEDY,
                       streamer: BaseStreamer | None = None) -> list[Generation]:
        return llm.generate_batch([self.generation_text(llm, p, r) for p, r in items], max_new_tokens,
                                  min_new_tokens, bias=answer_bias(llm, items, self.answer_bias), sampling=sampling,
                                  streamer=streamer)


class LatentDecoder:
    """The memory reaches the LLM as a trained prefix computed from a latent (decoders latent and hybrid).

    The latent is the written latent of the best fact the readout reconstructs (``input="fact"``) or the
    raw readout z_r (``input="readout"``). With a linear-addressed memory holding more facts than its
    latent width, z_r is close to the query's own latent and says little about the answer, while the
    nearest written latent is the fact itself; the adapter's config records which one it was trained on.
    Rows without a readout take the plain LLM path, so out of scope the base model is unchanged to the bit.
    """

    def __init__(self, adapter: LatentAdapter, device: str | torch.device = "cpu", answer_bias: float = 0.0) -> None:
        self.adapter = adapter.to(device).eval()
        self.name = adapter.cfg.decoder
        self.shows_facts = self.name == "hybrid"  # the recalled facts are in the prompt as text too
        self.text = ContextDecoder()
        self.answer_bias = answer_bias  # as ContextDecoder's; only for rows that get the prefix
        self.device = torch.device(device)

    def latent(self, readout: Readout | None) -> Tensor | None:
        """(C,) what the adapter reads, or None for "no memory" (no readout, or an all-zero one)."""
        if readout is None:
            return None
        use_fact = self.adapter.cfg.input == "fact" and readout.fact_latents is not None and len(readout.fact_latents)
        z = readout.fact_latents[0] if use_fact else readout.latent
        return None if z.numel() == 0 or not bool(z.any()) else z

    def _text_readout(self, readout: Readout | None) -> Readout | None:
        """What the prompt shows: the facts for hybrid, and nothing at all when there is no memory."""
        return readout if self.shows_facts and self.latent(readout) is not None else None

    def generation_text(self, llm: CausalLM, prompt: str | Chat, readout: Readout | None) -> str:
        """The text the LLM reads for generation (the prefix comes on top of it)."""
        return self.text.generation_text(llm, prompt, self._text_readout(readout))

    def scoring_prefix(self, llm: CausalLM, prompt: str, readout: Readout | None) -> str:
        return self.text.scoring_prefix(llm, prompt, self._text_readout(readout))

    def _split(self, readouts: Sequence[Readout | None]) -> tuple[list[int], list[int], Tensor | None]:
        zs = [self.latent(r) for r in readouts]
        on = [i for i, z in enumerate(zs) if z is not None]
        off = [i for i, z in enumerate(zs) if z is None]
        Z = torch.stack([zs[i].to(self.device).float() for i in on]) if on else None  # (B_on, C)
        return on, off, Z

    @torch.inference_mode()
    def score_batch(self, llm: CausalLM, items: Sequence[ScoreRequest]) -> list[list[ContinuationScore]]:
        on, off, Z = self._split([r for _, _, r in items])
        out: list[list[ContinuationScore]] = [[] for _ in items]
        pairs = [(self.scoring_prefix(llm, p, r), c) for p, c, r in items]
        if off:
            for i, s in zip(off, llm.score_batch([pairs[i] for i in off]), strict=True):
                out[i] = s
        if on:
            for i, s in zip(on, llm.score_batch([pairs[i] for i in on], self.adapter(Z)), strict=True):
                out[i] = s
        return out

    @torch.inference_mode()
    def generate_batch(self, llm: CausalLM, items: Sequence[GenerateRequest], max_new_tokens: MaxNewTokens,
                       min_new_tokens: int = 0, sampling: Sampling = GREEDY,
                       streamer: BaseStreamer | None = None) -> list[Generation]:
        on, off, Z = self._split([r for _, r in items])
        limits = row_limits(max_new_tokens, len(items))
        out: list[Generation] = [Generation("", 0)] * len(items)
        texts = [self.generation_text(llm, p, r) for p, r in items]
        parts = isinstance(streamer, RowsStreamer)  # else a batch of one: one part, which ends the streamer itself
        if off:  # the plain LLM, exactly as the context decoder runs it without a readout
            res = llm.generate_batch([texts[i] for i in off], [limits[i] for i in off], min_new_tokens,
                                     sampling=sampling, streamer=streamer.rows(off) if parts else streamer)
            for i, g in zip(off, res, strict=True):
                out[i] = g
        if on:
            bias = answer_bias(llm, [items[i] for i in on], self.answer_bias)
            res = llm.generate_batch([texts[i] for i in on], [limits[i] for i in on], min_new_tokens,
                                     prefix=self.adapter(Z), bias=bias, sampling=sampling,
                                     streamer=streamer.rows(on) if parts else streamer)
            for i, g in zip(on, res, strict=True):
                out[i] = g
        if parts:
            streamer.end()
        return out


# (name, adapter_dir, device, answer_bias) -> the decoder
DecoderFactory = Callable[[str, Path | None, str | torch.device, float], Decoder]


def _context_decoder(name: str, adapter_dir: Path | None, device: str | torch.device, answer_bias: float) -> Decoder:
    """Text only: no adapter to load, whatever ``adapter_dir`` says."""
    return ContextDecoder(answer_bias)


def _trained_decoder(name: str, adapter_dir: Path | None, device: str | torch.device, answer_bias: float) -> Decoder:
    """``latent`` and ``hybrid`` share one loader: only the adapter, which must be the one trained for ``name``,
    tells them apart."""
    if adapter_dir is None:
        raise ValueError(f"the {name} decoder needs a trained adapter (LARIMAR_ADAPTER or one shipped for the model)")
    adapter = LatentAdapter.from_pretrained(adapter_dir, device)
    if adapter.cfg.decoder != name:
        raise ValueError(f"the adapter in {adapter_dir} was trained for the {adapter.cfg.decoder} decoder, not {name}")
    return LatentDecoder(adapter, device=device, answer_bias=answer_bias)


# One entry per decoder, so a new one is named in a single place.
FACTORIES: dict[str, DecoderFactory] = {
    "context": _context_decoder,
    "latent": _trained_decoder,
    "hybrid": _trained_decoder,
}
DECODERS = tuple(FACTORIES)


def load_decoder(name: str, adapter_dir: Path | None, device: str | torch.device = "cpu",
                 answer_bias: float = 0.0) -> Decoder:
    """``context``; or ``latent`` / ``hybrid`` with the adapter trained for it in ``adapter_dir``."""
    factory = FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown decoder {name!r}: one of {', '.join(DECODERS)}")
    return factory(name, adapter_dir, device, answer_bias)
