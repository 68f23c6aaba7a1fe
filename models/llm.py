"""The decoder: a causal LM that generates answers and scores continuations.

A GGUF file (the default SmolLM2 ships as one) takes ~15-20 s to dequantise,
so it is converted once into a safetensors directory under the model cache and
that directory is loaded on every later start.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from models.paths import resolve

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def gguf_cache_dir(gguf: Path, cache_root: Path) -> Path:
    """One cache entry per GGUF file content identity (name, size, mtime)."""
    st = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return cache_root / "llm" / f"{gguf.stem}-{tag}"


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file with transformers and save it as safetensors, atomically."""
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 now; drop the GGUF quantiser so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # readers see a complete directory or none
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_dir(spec: str, cache_root: Path) -> Path | str:
    """Where to load the LLM from: the converted cache for GGUF, the spec itself otherwise."""
    path = resolve(spec)
    if isinstance(path, Path) and path.suffix == ".gguf":
        target = gguf_cache_dir(path, cache_root)
        if not (target / "config.json").exists():
            convert_gguf(path, target)
        return target
    return path


class CausalLM:
    def __init__(self, spec: str, cache_root: Path, device: str = "cpu", dtype: str = "float32") -> None:
        src = model_dir(spec, cache_root)
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(src)
        self.model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(src, dtype=DTYPES[dtype]).to(device).eval()
        self.device = torch.device(device)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.has_chat_template = bool(getattr(self.tokenizer, "chat_template", None))

    # --- prompts -------------------------------------------------------------

    def render(self, messages: list[dict[str, str]]) -> str:
        """A conversation as the text the model expects next to answer it (chat template where there is one)."""
        if self.has_chat_template:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "\n".join(m["content"] for m in messages) + "\n"  # a base LM: the turns as plain lines

    def ids(self, text: str) -> torch.Tensor:
        """(1, T) ids of rendered text; special tokens in it are already spelled out."""
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.device)

    # --- generation ----------------------------------------------------------

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, min_new_tokens: int = 0) -> tuple[str, int]:
        """Greedy decoding: the same prompt always gives the same answer. Returns (text, new tokens)."""
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new = out[0, input_ids.shape[1] :]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip(), int(new.shape[0])

    @torch.inference_mode()
    def generate_batch(self, texts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy answers to many rendered prompts in one left-padded batch (benchmarks evaluate thousands)."""
        rows = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        out = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return [a.strip() for a in self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]

    # --- scoring -------------------------------------------------------------

    def score(self, prefix: str, candidates: list[str]) -> list[ContinuationScore]:
        """Log-likelihood of each candidate continuing ``prefix``, in one padded batch."""
        return self.score_batch([(prefix, candidates)])[0]

    @torch.inference_mode()
    def score_batch(self, items: list[tuple[str, list[str]]]) -> list[list[ContinuationScore]]:
        """Candidates scored against their prefixes, every (prefix, candidate) pair one row of one batch.

        The prefix and candidate are tokenised apart and joined, so every
        candidate is scored against the same prefix tokens; a space is put
        between them unless one side already has it.
        """
        tok = self.tokenizer
        rows: list[tuple[int, list[int]]] = []  # (prefix length, prefix + continuation ids)
        conts: list[list[int]] = []
        for prefix, candidates in items:
            prefix_ids = tok(prefix, add_special_tokens=False)["input_ids"]
            if tok.bos_token_id is not None and getattr(tok, "add_bos_token", False):
                prefix_ids = [tok.bos_token_id, *prefix_ids]
            for c in candidates:
                sep = "" if (prefix.endswith((" ", "\n")) or c.startswith((" ", "\n"))) else " "
                cont = tok(sep + c, add_special_tokens=False)["input_ids"]
                conts.append(cont)
                rows.append((len(prefix_ids), prefix_ids + cont))
        width = max(len(s) for _, s in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (_, s) in enumerate(rows):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits  # (B, T, V)
        logp = torch.log_softmax(logits.float(), dim=-1)
        flat = []
        for i, ((P, _), c) in enumerate(zip(rows, conts, strict=True)):
            # token t of the continuation sits at P + t and is predicted at P + t - 1
            pos = torch.arange(P - 1, P - 1 + len(c), device=logp.device)
            tgt = torch.tensor(c, device=logp.device, dtype=torch.long)
            lp = logp[i, pos, tgt].sum().item() if c else 0.0
            pred = logp[i, pos].argmax(-1)
            flat.append((lp, len(c), tuple(pred.tolist()), int((pred == tgt).sum())))
        out, k = [], 0
        for _, candidates in items:
            out.append([ContinuationScore(candidate=cand, logprob=lp, n_tokens=n, predicted=pred, n_correct=ok)
                        for cand, (lp, n, pred, ok) in zip(candidates, flat[k : k + len(candidates)], strict=True)])
            k += len(candidates)
        return out
