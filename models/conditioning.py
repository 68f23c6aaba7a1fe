"""How a memory readout conditions the LLM.

A ``Conditioner`` turns (prompt, readout) into what the LLM decodes or scores.
With no readout (out of scope, or memory off) every conditioner must give the
plain LLM exactly, as if no memory existed.

``ContextConditioner`` (kind "context") gives the facts a readout reconstructs
to the LLM in its prompt. The paper's trained latent conditioning (z_r
projected into a one-token key/value prefix per layer) is the next kind: it
would use ``Readout.latent`` and ignore ``Readout.facts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from models.llm import CausalLM, ContinuationScore


@dataclass(frozen=True)
class Readout:
    latent: Tensor  # (C,) z_r, the memory's reconstruction for the query
    facts: tuple[str, ...]  # texts of the written facts nearest to z_r, best first


class Conditioner(Protocol):
    kind: str

    def generate(self, llm: CausalLM, prompt: str, readout: Readout | None, max_new_tokens: int,
                 min_new_tokens: int = 0) -> tuple[str, int]: ...

    def score(self, llm: CausalLM, prompt: str, candidates: list[str], readout: Readout | None
              ) -> list[ContinuationScore]: ...


def facts_block(facts: tuple[str, ...]) -> str:
    head = "New fact" if len(facts) == 1 else "New facts"
    return head + ":\n" + "\n".join(f"- {f}" for f in facts)


class ContextConditioner:
    """Facts in the prompt, phrased as measured best for SmolLM2-135M on CounterFact dev records.

    Generation: one user turn "New facts: ... Using the new facts, answer: <prompt>".
    Scoring: the user turn asks to complete a sentence and the assistant turn
    starts with the prompt, so candidates are scored as the assistant's words
    (ES 1.0 / PS 0.9 on 60 dev records, against 0.77 / 0.68 for plain
    "fact\nprompt" text). Without a readout: the bare prompt, no template
    for scoring and a lone user turn for generation, i.e. the plain LLM.
    """

    kind = "context"

    def generation_text(self, llm: CausalLM, prompt: str, readout: Readout | None) -> str:
        if readout is None or not readout.facts:
            return llm.render([{"role": "user", "content": prompt}])
        n = "fact" if len(readout.facts) == 1 else "facts"
        content = f"{facts_block(readout.facts)}\nUsing the new {n}, answer: {prompt}"
        return llm.render([{"role": "user", "content": content}])

    def scoring_prefix(self, llm: CausalLM, prompt: str, readout: Readout | None) -> str:
        if readout is None or not readout.facts:
            return prompt
        n = "fact" if len(readout.facts) == 1 else "facts"
        content = f"{facts_block(readout.facts)}\nUsing the new {n}, complete the sentence."
        return llm.render([{"role": "user", "content": content}]) + prompt

    def generate(self, llm: CausalLM, prompt: str, readout: Readout | None, max_new_tokens: int,
                 min_new_tokens: int = 0) -> tuple[str, int]:
        return llm.generate(llm.ids(self.generation_text(llm, prompt, readout)), max_new_tokens, min_new_tokens)

    def score(self, llm: CausalLM, prompt: str, candidates: list[str], readout: Readout | None
              ) -> list[ContinuationScore]:
        return llm.score(self.scoring_prefix(llm, prompt, readout), candidates)


CONDITIONERS: dict[str, type[ContextConditioner]] = {"context": ContextConditioner}
