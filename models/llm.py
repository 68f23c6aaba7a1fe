"""The LLM: a causal LM that generates answers and scores continuations, in padded batches (one request
is a batch of one, so what the benchmarks measure is what the service serves).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer

from models.answer_bias import AnswerBias
from models.gguf import model_dir

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# What one scoring request may make the process hold, however many and long its candidates are: the full
# (rows, T, V) logits of 32 candidates of 2,000 characters were ~6 GB at SmolLM2's 49,152-token vocabulary.
SCORE_TOKENS = 4096  # padded tokens (rows x longest row) in one scoring pass; a longer row runs alone
HEAD_POSITIONS = 512  # positions given the LM head at once: (512, V) float32 logits, ~100 MB at V = 49,152

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContinuationScore:
    candidate: str
    logprob: float  # sum of token log-probabilities of the continuation
    n_tokens: int
    predicted: tuple[int, ...] = ()  # the model's greedy (argmax) token at each continuation position
    n_correct: int = 0  # continuation tokens that are the model's greedy choice too

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(self.n_tokens, 1)

    @property
    def token_accuracy(self) -> float:
        """Share of continuation tokens the model would itself predict next (zsRE's accuracy metric)."""
        return self.n_correct / max(self.n_tokens, 1)


@dataclass(frozen=True)
class Generation:
    text: str  # the answer, special tokens dropped, cut before a stop string, stripped
    new_tokens: int  # tokens generated, the end-of-turn token included when it came
    stopped: bool = True  # ended by the end-of-turn token or a stop string, not by running out of tokens


@dataclass(frozen=True)
class Sampling:
    """How each next token is picked: greedy at temperature 0 (the benchmarks', and the default), else drawn
    at ``temperature`` from the smallest set of tokens holding ``top_p`` of the probability; ``stop`` strings
    end an answer (left out of it); ``seed`` makes a draw repeatable."""

    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def warpers(self) -> LogitsProcessorList:
        out = LogitsProcessorList()
        if not self.greedy:
            out.append(TemperatureLogitsWarper(self.temperature))
            if self.top_p < 1.0:
                out.append(TopPLogitsWarper(self.top_p))
        return out

    def cut(self, text: str) -> tuple[str, bool]:
        """The text before the first stop string, and whether there was one."""
        ends = [i for i in (text.find(s) for s in self.stop if s) if i >= 0]
        return (text[: min(ends)], True) if ends else (text, False)


GREEDY = Sampling()


@dataclass(frozen=True)
class KVPrefix:
    """What a trained latent decoder puts in front of a prompt: key/value slots in every layer and an
    embedding bias, one row per sequence. The LLM's weights stay as they are; without a prefix it is
    exactly the base model.
    """

    keys: tuple[Tensor, ...]  # per layer (B, n_kv_heads, P, head_dim)
    values: tuple[Tensor, ...]  # per layer (B, n_kv_heads, P, head_dim)
    bias: Tensor  # (B, hidden) added to every input token embedding

    @property
    def length(self) -> int:
        """P, the prefix positions in front of the tokens."""
        return int(self.keys[0].shape[2])

    def rows(self, index: Tensor) -> KVPrefix:
        """The prefix of the given rows (a candidate-per-row batch repeats its item's prefix)."""
        return KVPrefix(tuple(k[index] for k in self.keys), tuple(v[index] for v in self.values), self.bias[index])


def score_chunks(lengths: list[int]) -> list[range]:
    """Consecutive rows grouped into passes of at most ``SCORE_TOKENS`` padded tokens (rows x the longest), a
    longer row alone, so the activations of one scoring pass are bounded whatever the number of candidates."""
    chunks: list[range] = []
    start, width = 0, 0
    for i, n in enumerate(lengths):
        if i > start and (i - start + 1) * max(width, n) > SCORE_TOKENS:
            chunks.append(range(start, i))
            start, width = i, 0
        width = max(width, n)
    if lengths:
        chunks.append(range(start, len(lengths)))
    return chunks


MaxNewTokens = int | Sequence[int]  # one limit for every row, or one per row


class RowsStreamer(BaseStreamer):
    """A streamer for a whole batch that can also be handed a part of it: ``rows(indices)`` is a streamer for a
    sub-batch whose row r is this batch's row ``indices[r]`` and whose ``end`` waits for this one's (a decoder
    that generates a batch in parts, as ``LatentDecoder`` does, ends it once, after the last part)."""

    def rows(self, indices: list[int]) -> BaseStreamer:
        raise NotImplementedError


def row_limits(max_new_tokens: MaxNewTokens, rows: int) -> list[int]:
    """Each row's limit of new tokens."""
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * rows
    if len(max_new_tokens) != rows:
        raise ValueError(f"{len(max_new_tokens)} limits for {rows} rows")
    return list(max_new_tokens)


def leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens a tokenizer puts before any text (Gemma's <bos>; none for SmolLM2). Rendered text is
    tokenised without special tokens, so ``CausalLM.token_ids`` adds these unless a chat template spelled them:
    Gemma without its <bos> answers "<h2><h2>..."."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    return full[: full.index(bare[0])] if bare and bare[0] in full else []


class CausalLM:
    def __init__(self, spec: str, cache_root: Path, device: str = "cpu", dtype: str = "float32") -> None:
        src = model_dir(spec, cache_root)
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(src)
        self.model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(src, dtype=DTYPES[dtype]).to(device).eval()
        self.device = torch.device(device)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.has_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.lead = leading_special_ids(self.tokenizer)
        self._drawing = threading.Lock()  # sampled generations, one at a time (generate_batch)

    @property
    def window(self) -> int:
        """Tokens the LLM reads at most, prompt and answer together (its position embeddings)."""
        return int(getattr(self.model.config, "max_position_embeddings", None) or 2048)

    # --- prompts -------------------------------------------------------------

    def render(self, messages: list[dict[str, str]]) -> str:
        """A conversation as the text the model expects next to answer it (chat template where there is one)."""
        if self.has_chat_template:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "\n".join(m["content"] for m in messages) + "\n"  # a base LM: the turns as plain lines

    def token_ids(self, text: str) -> list[int]:
        """Ids of rendered text: special tokens in it are already spelled out; the tokenizer's leading ones
        (``lead``) are added where the text does not begin with them."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids if ids[: len(self.lead)] == self.lead else [*self.lead, *ids]

    def ids(self, text: str) -> torch.Tensor:
        """(1, T) ``token_ids`` of rendered text on the model's device."""
        return torch.tensor([self.token_ids(text)], dtype=torch.long, device=self.device)

    # --- generation ----------------------------------------------------------

    def pad(self, rows: list[list[int]], left: bool = False) -> tuple[Tensor, Tensor]:
        """(B, T) ids and attention mask on the model's device. Left padding makes every row end where
        decoding starts; right padding keeps every row's tokens at the same positions (scoring, training).
        """
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            span = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, span] = torch.tensor(r, dtype=torch.long)
            mask[i, span] = 1
        return ids.to(self.device), mask.to(self.device)

    def _left_padded(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return self.pad([self.token_ids(t) for t in texts], left=True)

    @torch.inference_mode()
    def generate_batch(self, texts: list[str], max_new_tokens: MaxNewTokens, min_new_tokens: int = 0,
                       prefix: KVPrefix | None = None, bias: AnswerBias | None = None, sampling: Sampling = GREEDY,
                       streamer: BaseStreamer | None = None) -> list[Generation]:
        """Answers to rendered prompts in one left-padded batch; greedy by default, so the same prompt always
        gives the same answer, alone or among others. ``max_new_tokens`` is one limit, or one per row (requests
        batched together: each answer is cut at its own, as it would have been alone). With a latent ``prefix``
        the decoding loop is ``generate_prefixed``; ``bias`` boosts tokens per row (``AnswerBias``); a
        ``streamer`` gets the prompt's ids, then each new token as it is chosen (a batch of one, or a streamer
        that only watches, as ``service.cancel`` does).

        Sampled answers draw from torch's one global generator, so they run one at a time (``_drawing``): a
        seeded answer is then the same whatever other requests sample meanwhile. Greedy ones draw nothing.
        """
        if sampling.greedy:
            return self._generate_batch(texts, max_new_tokens, min_new_tokens, prefix, bias, sampling, streamer)
        with self._drawing:
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            return self._generate_batch(texts, max_new_tokens, min_new_tokens, prefix, bias, sampling, streamer)

    def _generate_batch(self, texts: list[str], max_new_tokens: MaxNewTokens, min_new_tokens: int,
                        prefix: KVPrefix | None, bias: AnswerBias | None, sampling: Sampling,
                        streamer: BaseStreamer | None) -> list[Generation]:
        if prefix is not None:
            return self.generate_prefixed(texts, prefix, max_new_tokens, min_new_tokens, bias, sampling, streamer)
        limits = row_limits(max_new_tokens, len(texts))
        ids, mask = self._left_padded(texts)
        extra = {"stop_strings": list(sampling.stop), "tokenizer": self.tokenizer} if sampling.stop else {}
        if not sampling.greedy:
            extra |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": None}
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max(limits),
            min_new_tokens=min_new_tokens,
            do_sample=not sampling.greedy,
            pad_token_id=self.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([bias] if bias is not None else []),
            streamer=streamer,
            **extra,
        )
        return self._generations(out[:, ids.shape[1] :], limits, sampling)  # rows that ended early are padded

    def _generations(self, new: Tensor, limits: list[int], sampling: Sampling) -> list[Generation]:
        """(B, n) generated ids -> answers: each row within its limit, text up to the end token (or a stop
        string), tokens counted to it."""
        eos = torch.tensor(self._eos_ids(), device=new.device)
        out = []
        for row, limit in zip(new, limits, strict=True):
            ended = torch.isin(row[:limit], eos)  # (<= limit,)
            has_end = bool(ended.any())
            n = int(ended.int().argmax()) + 1 if has_end else int(ended.shape[0])
            text, cut = sampling.cut(self.tokenizer.decode(row[:n], skip_special_tokens=True))
            out.append(Generation(text.strip(), n, cut or has_end or n < limit))
        return out

    @torch.inference_mode()
    def generate_prefixed(self, texts: list[str], prefix: KVPrefix, max_new_tokens: MaxNewTokens,
                          min_new_tokens: int = 0,
                          bias: AnswerBias | None = None, sampling: Sampling = GREEDY,
                          streamer: BaseStreamer | None = None) -> list[Generation]:
        """Decoding behind a latent prefix, whose embedding bias every generated token gets as well.

        ``model.generate`` cannot add a bias to the tokens it feeds back, hence this loop.
        """
        ids, mask = self._left_padded(texts)
        B, P = ids.shape[0], prefix.length
        limits = row_limits(max_new_tokens, B)
        last_step = torch.tensor(limits, device=self.device) - 1  # (B,) the step at which each row is done
        eos = torch.tensor(self._eos_ids(), device=self.device)
        warpers = sampling.warpers()
        if streamer is not None:
            streamer.put(ids.cpu())
        out = self.forward(ids, mask, prefix)
        kv, pos = out.past_key_values, P + mask.sum(1, keepdim=True)  # (B, 1) next position of each row
        embed = self.model.get_input_embeddings()
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        new: list[Tensor] = []
        for step in range(max(limits)):
            logits = out.logits[:, -1].float()  # (B, V)
            if bias is not None:
                logits = bias(new[-1][:, None] if new else ids, logits)  # it reads the last token only
            if step < min_new_tokens:
                logits[:, eos] = float("-inf")
            if sampling.greedy:
                choice = logits.argmax(-1)  # (B,)
            else:
                probs = warpers(ids, logits).softmax(-1)  # (B, V)
                choice = torch.multinomial(probs, 1)[:, 0]  # (B,)
            nxt = torch.where(done, self.tokenizer.pad_token_id, choice)  # (B,)
            new.append(nxt)
            if streamer is not None:
                streamer.put(nxt.cpu())
            done |= torch.isin(nxt, eos) | (last_step <= step)
            if sampling.stop:  # a stop string ends its row (the text is cut before it below)
                so_far = self.tokenizer.batch_decode(torch.stack(new, 1), skip_special_tokens=True)
                done |= torch.tensor([sampling.cut(t)[1] for t in so_far], device=self.device)
            if bool(done.all()):
                break
            mask = torch.cat([mask, mask.new_ones(B, 1)], 1)
            attn = torch.cat([mask.new_ones(B, P), mask], 1)
            emb = embed(nxt[:, None]) + prefix.bias[:, None, :].to(embed.weight.dtype)
            out = self.model(inputs_embeds=emb, attention_mask=attn, position_ids=pos, past_key_values=kv,
                             use_cache=True)
            pos = pos + 1
        if streamer is not None:
            streamer.end()
        toks = torch.stack(new, 1) if new else ids.new_zeros(B, 0)  # (B, n)
        return self._generations(toks, limits, sampling)

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return list(eos) if isinstance(eos, list | tuple) else [int(eos)]

    def forward(self, ids: Tensor, mask: Tensor, prefix: KVPrefix | None = None, hidden: bool = False
                ):  # noqa: ANN201 - HF output
        """One pass over a padded batch. With a prefix, its P positions come first (the keys are learned
        as they are, i.e. at rotary position 0) and the tokens follow from position P; the returned cache
        holds prefix and tokens, ready for decoding. ``hidden=True`` stops before the LM head (scoring and
        training apply ``head`` only where they read logits); without a prefix it keeps no cache either.
        """
        if prefix is None:
            if hidden:  # nothing decodes from here: a cache would only hold (B, T) keys and values per layer
                return self.model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)
            return self.model(input_ids=ids, attention_mask=mask)
        embed = self.model.get_input_embeddings()
        emb = embed(ids) + prefix.bias[:, None, :].to(embed.weight.dtype)  # (B, T, H)
        kv = DynamicCache()
        for layer, (k, v) in enumerate(zip(prefix.keys, prefix.values, strict=True)):
            kv.update(k.to(emb.dtype), v.to(emb.dtype), layer)
        P = prefix.length
        attn = torch.cat([mask.new_ones(mask.shape[0], P), mask], 1)  # (B, P + T)
        pos = P + (mask.cumsum(-1) - 1).clamp_min(0)  # (B, T): right padding keeps real tokens at P.., left
        net = self.model.get_decoder() if hidden else self.model
        return net(inputs_embeds=emb, attention_mask=attn, position_ids=pos, past_key_values=kv, use_cache=True)

    def head(self, hidden: Tensor) -> Tensor:
        """(N, H) final hidden states -> (N, V) logits as the model's forward makes them: the LM head, then the
        final soft-capping where the config sets one (Gemma 2/3/4: ``tanh(logits / cap) * cap``, in the same
        steps), so logits can be made at the positions that are read and nowhere else."""
        logits = self.model.get_output_embeddings()(hidden)  # (N, V)
        cap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        if cap is not None:
            logits = logits / cap  # (N, V)
            logits = torch.tanh(logits)  # (N, V)
            logits = logits * cap  # (N, V)
        return logits

    @cached_property
    def head_is_exact(self) -> bool:
        """Whether ``head`` on the final hidden states gives the model's own logits, checked once on a short text.
        Families that transform logits otherwise (Cohere multiplies by ``logit_scale``, Granite divides by
        ``logits_scaling`` and HyperCLOVA X multiplies by it: no config key says which) fail it and are scored
        from the model's full logits instead, still one bounded pass at a time."""
        text = self.tokenizer("The sky is blue.", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([[*self.lead, *text]], dtype=torch.long, device=self.device)  # (1, T)
        with torch.inference_mode():
            own = self.model(input_ids=ids, use_cache=False).logits[0].float()  # (T, V)
            states = self.model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state[0]  # (T, H)
            ours = self.head(states).float()  # (T, V)
        exact = torch.allclose(own, ours, rtol=1e-2, atol=1e-2)
        if not exact:
            log.warning("%s transforms its logits in a way CausalLM.head does not know; scoring reads the model's "
                        "full logits (more memory per pass)", type(self.model).__name__)
        return exact

    # --- scoring -------------------------------------------------------------

    def pair_ids(self, prefix: str, continuation: str) -> tuple[list[int], list[int]]:
        """Prefix and continuation tokenised apart, so every candidate is scored against the same prefix
        tokens; a space goes between them unless one side already has it. Training uses the same split.
        """
        tok = self.tokenizer
        prefix_ids = self.token_ids(prefix)
        sep = "" if (not prefix or prefix.endswith((" ", "\n")) or continuation.startswith((" ", "\n"))) else " "
        return prefix_ids, tok(sep + continuation, add_special_tokens=False)["input_ids"]

    def score(self, prefix: str, candidates: list[str]) -> list[ContinuationScore]:
        """Log-likelihood of each candidate continuing ``prefix``, in one padded batch."""
        return self.score_batch([(prefix, candidates)])[0]

    @torch.inference_mode()
    def score_batch(self, items: list[tuple[str, list[str]]], kv_prefix: KVPrefix | None = None
                    ) -> list[list[ContinuationScore]]:
        """Candidates scored against their prefixes, every (prefix, candidate) pair one row (joined as
        ``pair_ids`` splits them); ``kv_prefix`` holds one latent prefix per item. The rows run in passes of at
        most ``SCORE_TOKENS`` padded tokens (``score_chunks``) and logits are made only where a continuation
        token is predicted, so many long candidates cost time, not gigabytes of (rows, T, V) logits.
        """
        rows: list[tuple[int, list[int]]] = []  # (prefix length, prefix + continuation ids)
        conts: list[list[int]] = []
        item_of_row: list[int] = []
        for n, (prefix, candidates) in enumerate(items):
            for c in candidates:
                prefix_ids, cont = self.pair_ids(prefix, c)
                conts.append(cont)
                rows.append((len(prefix_ids), prefix_ids + cont))
                item_of_row.append(n)
        item_of = torch.tensor(item_of_row, dtype=torch.long, device=self.device)  # (R,)
        flat: list[tuple[float, int, tuple[int, ...], int]] = []
        for chunk in score_chunks([len(s) for _, s in rows]):
            pre = None if kv_prefix is None else kv_prefix.rows(item_of[chunk.start : chunk.stop])
            flat += self._score_rows([rows[i] for i in chunk], [conts[i] for i in chunk], pre)
        out, k = [], 0
        for _, candidates in items:
            out.append([ContinuationScore(candidate=cand, logprob=lp, n_tokens=n, predicted=pred, n_correct=ok)
                        for cand, (lp, n, pred, ok) in zip(candidates, flat[k : k + len(candidates)], strict=True)])
            k += len(candidates)
        return out

    def _score_rows(self, rows: list[tuple[int, list[int]]], conts: list[list[int]], prefix: KVPrefix | None
                    ) -> list[tuple[float, int, tuple[int, ...], int]]:
        """One right-padded pass over (prefix length, ids) rows: per row the continuation's summed log-probability,
        its length, the greedy token at each of its positions and how many of those it matches. Only the final
        hidden states that predict a continuation token get the LM head, ``HEAD_POSITIONS`` at a time."""
        ids, mask = self.pad([s for _, s in rows])  # (b, T)
        # token t of row i's continuation sits at P + t and is predicted at P + t - 1
        bi = torch.cat([torch.full((len(c),), i, dtype=torch.long) for i, c in enumerate(conts)])  # (M,)
        ti = torch.cat([torch.arange(P - 1, P - 1 + len(c)) for (P, _), c in zip(rows, conts, strict=True)])  # (M,)
        tgt = torch.tensor([t for c in conts for t in c], dtype=torch.long, device=self.device)  # (M,)
        exact = self.head_is_exact
        out = self.forward(ids, mask, prefix, hidden=exact)
        read = out.last_hidden_state if exact else out.logits  # (b, T, H), or (b, T, V) for an unknown head
        states = read[bi.to(self.device), ti.to(self.device)]  # (M, H) or (M, V), a copy
        del out, read  # the pass's states (and cache) go before the logits come
        lp = torch.zeros(len(tgt), device=self.device)  # (M,)
        pred = torch.zeros_like(tgt)  # (M,)
        for s in range(0, len(tgt), HEAD_POSITIONS):
            part = states[s : s + HEAD_POSITIONS]  # (m, H) or (m, V)
            logp = torch.log_softmax((self.head(part) if exact else part).float(), dim=-1)  # (m, V)
            lp[s : s + HEAD_POSITIONS] = logp.gather(1, tgt[s : s + HEAD_POSITIONS, None])[:, 0]  # (m,)
            pred[s : s + HEAD_POSITIONS] = logp.argmax(-1)  # (m,)
        lens = [len(c) for c in conts]
        return [(row_lp.sum().item() if n else 0.0, n, tuple(row_pred.tolist()), int((row_pred == row_tgt).sum()))
                for row_lp, row_pred, row_tgt, n in zip(lp.split(lens), pred.split(lens), tgt.split(lens), lens,
                                                        strict=True)]
