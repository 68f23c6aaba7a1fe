"""GRACE (Hartvigsen et al. 2023, "Aging with GRACE"): a key/value codebook on one layer, weights untouched.

The codebook hangs on a forward hook of one site, ``model.layers[L].mlp`` (the MLP output) or
``model.layers[L]`` (the decoder layer's output, the residual stream). Every entry is
(key, value, deferral radius, label). A key is the site's unedited output at the last token of an edit
prompt; its value is a vector trained so that writing it in place of the site's output from that
token on makes the model continue with " " + label. At inference, where a query falls within an
entry's radius (Euclidean distance to the nearest key) the value replaces the site's output;
everywhere else the hook returns nothing, so the model's output is bit for bit the unedited one
(deferral). Edits follow the paper's codebook rules: a key farther than ``epsilon`` + the nearest
entry's radius adds an entry with radius ``epsilon``; within reach of an entry with the same label the
entry's radius grows to cover it; with a conflicting label a new entry is added and both radii become
half their distance.

Where the key is read. The paper reads it at the last token of the input, which during generation is
the token before the answer. Teacher-forced scoring feeds prompt + candidate in one pass, and
``CausalLM.score_batch`` packs many prompts of different lengths into one padded batch, so the hook
cannot be told where each prompt ends. Instead, on a fresh forward (an empty KV cache) it computes the
query at every real (attention-mask 1) position of every row and fires at the first position that hits
an entry; from there to the row's end the output is that entry's value (the reference implementation's
"replace all positions after the key"). On the edit's own prompt + candidate the first hit is the last
prompt token, exactly the paper's key position, whatever the candidate is; a prompt whose every
position misses is left untouched. During cached decoding (``generate``: one new token per forward)
nothing new is looked up: the row keeps the value found when its prompt was read, as GRACE does.
Checking every position instead of only the last can also fire at an inner token of a longer prompt
(e.g. the edit's prompt quoted inside a chat template); the paper's rule would not.

Dev measurements: CounterFact, SmolLM2-135M-Instruct, float32, CPU, ``torch.set_num_threads(1)``;
ES / PS / NS / HM and "sequential" (all edits applied, then all measured) as in ft_l.py.

    case_id 2000-2019 (unedited 30 / 5 / 80)   single ES/PS/NS (HM)   sequential-20 ES/PS/NS (HM)
    all six sites, eps 0.5-8 (mlp L2 0.5-4) 100 / 5 / 80 (13.5)  100 /  5 / 80 (13.5)
    mlp L2  eps 8                        100 /  5 / 70 (13.4)   100 /  5 / 75 (13.4)
    mlp L2  eps 12 / 16                  100 / 10 / 65 (23.9)   100 /  5 / 75 (13.4)
                                         100 / 20 / 40 (35.3)   100 /  5 / 65 (13.3)
    mlp L8  eps 12 / 16                  100 /  5 / 65 (13.3)   100 /  5 / 75 (13.4)
                                         100 / 10 / 45 (22.7)   100 /  5 / 70 (13.4)
    layer L2 eps 12 / 16                 100 /  5 / 65 (13.3)   100 /  5 / 70 (13.4)
                                         100 /  5 / 65 (13.3)    95 /  5 / 70 (13.3)
    mlp L16, layer L8, layer L16, eps 16 100 /  5 / 80 (13.5)   100 /  5 / 80 (13.5)

    case_id 2000-2039 (unedited 30 / 20 / 70)   single                 sequential-40
    mlp L2  eps 4                        100 / 20   / 70 (40.4)   100 / 20 / 70   (40.4)
    mlp L2  eps 8                        100 / 20   / 60 (39.1)   100 / 20 / 67.5 (40.1)
    mlp L2  eps 12                       100 / 27.5 / 55 (46.5)   100 / 20 / 60   (39.1)
    mlp L2  eps 16                       100 / 42.5 / 35 (48.3)    95 / 20 / 55   (38.1)
    mlp L16 eps 1, 8, 16                 100 / 20   / 70 (40.4)   100 / 20 / 70   (40.4)
    mlp L16 eps 24                       100 / 22.5 / 55 (41.3)   100 / 20 / 70   (40.4)

Why deferral wins: over 200 dev records, the share of paraphrase / neighbourhood prompts with some
position within eps of the edit's key is, for mlp L2: eps 4 0 / 3 %, 8 4 / 20 %, 16 22 / 48 %,
24 78 / 80 %; for mlp L16: eps 8 0 / 0 %, 16 0 / 7 %, 24 2 / 26 %, 32 42 / 58 %. A neighbour (same
relation, other subject, often the same last words) is always nearer the key than a paraphrase, so a
wider radius costs locality before it buys generalisation. The single-edit HM rises a little at large
radii only because PS starts near zero, and that gain vanishes in sequential editing, where
overlapping entries with different labels split each other's radii. In the chat-templated prompt
that generation uses, the nearest position to the raw prompt's key is 5-14 away at mlp L2 and 16-34
at mlp L16 (10 records; the last token, the paper's key, 17-47 and 43-57), so at the radii that keep
locality GRACE edits do not fire in chat generation: keys are specific to the prompt's wording.

Defaults, by the sequential HM (GRACE's own setting) with the single-edit HM next: the MLP output of
layer 16 (all sites tie on quality in the deferral regime; an MLP output
keeps each answer token's own residual stream, and a late layer halves the backward pass), radius
8.0 (the largest tried with no neighbour within reach over the 200 records), value training 100 Adam
steps at lr 1.0 from the unedited output, early stop below loss 1e-2. Time: 2.4 s per edit at mlp L16,
4.2 s at mlp L2 (means of 5 sequential edits, one thread, two other benchmark processes on the two
cores, load ~3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch

from bench.baselines.ft_l import encode_edit, fit, training
from models.llm import CausalLM
from training.data import EditRequest

Site = Literal["mlp", "layer"]
SiteFn = Callable[[torch.Tensor], torch.Tensor | None]  # site output (B, T, D) -> replacement or None


def distances(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (Q, N) between queries (Q, D) and keys (N, D).

    Computed directly rather than through the |q|^2 + |k|^2 - 2qk expansion, whose cancellation loses
    precision on large-norm states (residual-stream norms reach ~500 in the late layers here).
    """
    return torch.cdist(queries, keys, compute_mode="donot_use_mm_for_euclid_dist")


class Grace:
    """A GRACE codebook hooked onto one site of ``llm.model``; ``close()`` removes the hooks."""

    name = "GRACE"

    def __init__(
        self,
        llm: CausalLM,
        layer: int = 16,
        site: Site = "mlp",
        epsilon: float = 8.0,
        steps: int = 100,
        lr: float = 1.0,
        stop_loss: float = 1e-2,
    ) -> None:
        self.llm, self.epsilon, self.steps, self.lr, self.stop_loss = llm, epsilon, steps, lr, stop_loss
        decoder = llm.model.model
        module = decoder.layers[layer].mlp if site == "mlp" else decoder.layers[layer]
        self.dim = llm.model.config.hidden_size
        self.reset()
        self._override: SiteFn | None = None  # set while an edit reads keys or trains a value
        self._fresh = True  # the current forward starts a sequence (empty KV cache)
        self._mask: torch.Tensor | None = None  # (B, T) attention mask of the current forward
        self._handles = [
            decoder.register_forward_pre_hook(self._on_model_call, with_kwargs=True),
            module.register_forward_hook(self._on_site_output),
        ]

    # --- the WeightEditor interface ----------------------------------------------------------

    def apply(self, request: EditRequest) -> None:
        """Add (or widen, or split) codebook entries so the prompt continues with ``target_new``."""
        with torch.inference_mode(False):  # the codebook is updated in place: no inference tensors in it
            ids, n_prompt = encode_edit(self.llm, request.prompt, request.target_new)  # (1, P + C), P
            key = self._site_outputs(ids[:, :n_prompt])[0, -1].float()  # (D,) at the last prompt token
            label = request.target_new
            nearest = distances(key[None], self.keys)[0].min(0) if self.labels else None  # (distance, index)
            if nearest is None or nearest[0] > self.epsilon + self.radii[nearest[1]]:
                self._add(key, self._train_value(ids, n_prompt, key), self.epsilon, label)
                return
            dist, j = nearest
            if self.labels[j] == label:
                self.radii[j] = torch.maximum(self.radii[j], dist)  # expand: same answer, wider reach
            else:  # conflict: split the difference, each entry keeps half the distance
                self.radii[j] = dist / 2
                self._add(key, self._train_value(ids, n_prompt, key), float(dist / 2), label)

    def reset(self) -> None:
        """Empty the codebook; the hooks stay, and with nothing to match they change nothing."""
        device = self.llm.device
        self.keys = torch.empty(0, self.dim, device=device)  # (N, D)
        self.values = torch.empty(0, self.dim, device=device)  # (N, D)
        self.radii = torch.empty(0, device=device)  # (N,)
        self.labels: list[str] = []
        self._active: tuple[torch.Tensor, torch.Tensor] | None = None  # (B,) hit, (B, D) value while decoding

    def close(self) -> None:
        """Remove the hooks (the model is shared: a benchmark or test suite goes on without GRACE)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    # --- editing -------------------------------------------------------------------------------

    @contextmanager
    def _overriding(self, fn: SiteFn) -> Iterator[None]:
        self._override = fn
        try:
            yield
        finally:
            self._override = None

    def _site_outputs(self, ids: torch.Tensor) -> torch.Tensor:
        """The site's unedited output (1, T, D) for ids (1, T): what keys and queries are made of."""
        seen: list[torch.Tensor] = []

        def capture(out: torch.Tensor) -> None:
            seen.append(out.detach().clone())

        with torch.no_grad(), self._overriding(capture):
            self.llm.model(input_ids=ids)
        return seen[0]

    def _train_value(self, ids: torch.Tensor, n_prompt: int, init: torch.Tensor) -> torch.Tensor:
        """A value (D,) that, written from the last prompt token on, makes the model say the target.

        It starts at the unedited output there (``init``, the key), so the first loss is the unedited
        model's and Adam only moves as far as the target needs.
        """
        value = torch.nn.Parameter(init.clone())  # (D,) float32, whatever the model's dtype
        pos = n_prompt - 1

        def force(out: torch.Tensor) -> torch.Tensor:  # out (1, T, D)
            return torch.cat([out[:, :pos], value.to(out.dtype).expand(1, out.shape[1] - pos, -1)], dim=1)

        with training(self.llm.model, [value]), self._overriding(force):
            fit(self.llm.model, value, ids, n_prompt, self.steps, self.lr, self.stop_loss)
        return value.detach().clone()

    def _add(self, key: torch.Tensor, value: torch.Tensor, radius: float, label: str) -> None:
        self.keys = torch.cat([self.keys, key[None]])
        self.values = torch.cat([self.values, value[None]])
        self.radii = torch.cat([self.radii, torch.tensor([radius], device=self.radii.device)])
        self.labels.append(label)

    # --- the hooks -----------------------------------------------------------------------------

    def _on_model_call(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Note, before any layer runs, whether this forward starts a sequence and which positions are real."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._fresh = cache is None or cache.get_seq_length() == 0
        mask = kwargs.get("attention_mask")
        self._mask = mask if mask is not None and mask.dim() == 2 else None

    def _on_site_output(self, module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        """Replace the output (B, T, D) from each hitting row's first hit on; None (untouched) otherwise."""
        if self._override is not None:
            return self._override(out)
        if not self.labels:
            return None
        if self._fresh:
            found = self._lookup(out)
            if found is None:
                self._active = None
                return None
            hit, first, value = found
            self._active = (hit, value)
        elif self._active is None:
            return None
        else:  # a decoding step: the value found when the prompt was read, on the new token(s)
            hit, value = self._active
            if hit.shape[0] != out.shape[0]:
                raise RuntimeError("a cached forward with another batch than the one that started the sequence")
            first = torch.zeros_like(hit, dtype=torch.long)
        steps = torch.arange(out.shape[1], device=out.device)  # (T,)
        replace = hit[:, None] & (steps[None, :] >= first[:, None])  # (B, T)
        return torch.where(replace[..., None], value[:, None, :].to(out.dtype), out)

    def _lookup(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Rows that hit the codebook (B,), their first hitting position (B,) and its value (B, D); None if none."""
        B, T, D = out.shape
        dist, idx = distances(out.reshape(B * T, D).float(), self.keys).min(1)  # (B*T,) each
        hits = (dist <= self.radii[idx]).view(B, T)
        if self._mask is not None and self._mask.shape == hits.shape:
            hits &= self._mask.bool()  # left padding in generate_batch: pad positions never fire
        hit = hits.any(1)  # (B,)
        if not hit.any():
            return None
        first = hits.int().argmax(1)  # (B,): argmax returns the first maximal position
        entry = idx.view(B, T).gather(1, first[:, None])[:, 0]  # (B,)
        return hit, first, self.values[entry]
