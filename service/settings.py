"""The one settings object: every knob, read from LARIMAR_* environment variables."""

from __future__ import annotations

import logging
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from models.chunking import Chunking
from models.decoders import DEFAULT_ANSWER_BIAS
from models.device import resolve_device
from models.paths import DEFAULT_ENCODER, DEFAULT_LLM

log = logging.getLogger("larimar")

# Old setting names that still work, each for the field that replaced it.
RENAMED = {"LARIMAR_CONTEXT_FACTS": "recalled_facts"}


class _RenamedEnv(PydanticBaseSettingsSource):
    """Values under an old LARIMAR_* name, with a deprecation warning; the new name wins where both are set."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out = {}
        for old, field in RENAMED.items():
            if old in os.environ:
                new = f"LARIMAR_{field.upper()}"
                msg = f"{old} is deprecated: set {new} instead"
                warnings.warn(msg, FutureWarning, stacklevel=2)
                log.warning(msg)
                out[field] = os.environ[old]
        return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LARIMAR_", env_file=None, extra="ignore")

    # --- HTTP
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated bearer tokens, each admin over every memory; with "
        "this and api_keys_file empty there is no auth."
    )
    api_keys_file: Path | None = Field(
        None, description="JSON list of scoped keys: {key | key_sha256, role: read|write|admin, memories: "
        "[names or prefixes ending in *]} (service/auth.py)."
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated host names requests may name (\"*\": any); empty: "
        "loopback names and LARIMAR_HOST without API keys, any with them (service/origin.py)."
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated browser origins (https://app.example.com) that may "
        "send POST, PUT, PATCH and DELETE besides the service's own (\"*\": any)."
    )
    log_level: str = "info"
    metrics_memory_names: bool = Field(False, description="/metrics (open to scrapers) labels gauges with memory "
                                       "names; off, it reports totals only.")

    # --- persistence
    store_url: str = Field(
        "file://./larimar-data", description="file://DIR (default) or redis://host:port/db for deployments."
    )
    snapshot_every: int = Field(100, ge=1, description="Writes after which a memory's state is checkpointed.")
    purge_delay_s: float = Field(
        10.0, ge=0, description="Seconds after a forget (or delete) at which the store's files are purged of it "
        "(SQLite WAL truncated, Redis AOF/RDB rewritten); forgets in the meantime share one purge."
    )

    # --- models
    llm: str = DEFAULT_LLM
    encoder: str = DEFAULT_ENCODER
    device: str = Field("auto", description="auto (cuda when present), cpu, cuda, cuda:1 ...")
    llm_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    torch_threads: int = Field(
        0, ge=0, description="CPU threads for torch; 0 keeps torch's default (one per core). 1 holds up best on a "
        "machine shared with other CPU-heavy work."
    )
    model_cache_dir: Path = Field(
        Path.home() / ".cache" / "larimar", description="Where GGUF models are converted to safetensors once."
    )

    # --- memory
    memory_slots: int = Field(512, ge=8, le=16384, description="K, slots per memory.")
    memory_addressing: Literal["linear", "gaussian"] = "linear"
    memory_ridge: float = Field(1e-3, gt=0)
    memory_seed: int = 0

    index_above: int = Field(
        50_000, ge=1, description="Live facts in a memory above which fact lookup (scope, readout -> fact) uses an "
        "approximate index built in the background (exact scans below it)."
    )

    # --- scope and decoding
    scope_threshold: float | None = Field(
        None, ge=0, le=2, description="Max cosine distance for a query to be in scope; unset: the value chosen on "
        "development data for the active decoder (models/adapters/choices.json), else the paper's 0.3."
    )
    recalled_facts: int = Field(3, ge=1, le=32, description="At most this many facts recovered from a readout "
                                "(reported with the answer; the context and hybrid decoders show them to the LLM).")
    decoder: Literal["auto", "context", "latent", "hybrid"] = Field(
        "auto", description="How memory reaches the LLM: context (facts as text), latent (trained prefix), "
        "hybrid (both); auto takes the decoder the development runs chose for this model (models/adapters/"
        "choices.json), or context for a model without an adapter. latent is experimental: the shipped adapter "
        "barely moves the LLM (README)."
    )
    adapter: Path | None = Field(
        None, description="Latent-decoder adapter directory; default: the one shipped for this LLM and encoder."
    )
    default_max_new_tokens: int = Field(48, ge=1)
    scope_requires_mention: bool = Field(
        True, description="In scope (memory auto) only facts that name something the query names: a capitalised "
        "word or a number of the query's best sentence. Queries that name nothing are judged by cosine alone."
    )
    relation_gate: bool = Field(
        True, description="In scope (memory auto) only facts that state the relation the query asks (models/"
        "relation: name-masked sentences compared through a map trained on CounterFact training cases): \"What is "
        "the currency of Brazil?\" no longer recalls \"The capital of Brazil is Shanghai.\". Off, or for an encoder "
        "no gate was trained for, facts are judged by cosine and the mention check alone."
    )
    relation_threshold: float | None = Field(
        None, ge=-1, le=1, description="Least relation cosine of a recalled fact; unset: the one chosen on "
        "development data (the gate's config.json, bench.relation_gate)."
    )
    answer_bias: float = Field(
        DEFAULT_ANSWER_BIAS, ge=0, le=20, description="Logit boost, while answering in scope, of the words the best "
        "recalled fact adds to the prompt (each until it is said); 0 turns it off. Out of scope it never applies."
    )

    # --- documents (long inputs)
    document_chunking: Chunking = Field(
        "sentences", description="How a document is cut into pieces: sentences (one each) or chunks (sentences "
        "packed up to document_piece_tokens); chosen by bench.documents.")
    document_piece_tokens: int = Field(128, ge=8, le=512, description="Most encoder tokens in a piece (a longer "
                                       "sentence is cut at word boundaries; the encoder reads 256).")
    document_inline_pieces: int = Field(256, ge=0, description="Documents of at most this many pieces are "
                                        "ingested within the call (201); larger ones in the background (202).")
    memory_read: Literal["flat", "hierarchical"] = Field(
        "flat", description="flat: one readout of the memory; hierarchical (paper section 6): facts in write order "
        "into memories of read_segment, their readouts into the next level, up to one; chosen by bench.documents.")
    read_segment: int = Field(64, ge=1, le=384, description="Facts per memory of a hierarchical read (at most C).")

    fact_cache: int = Field(100_000, ge=0, description="Facts whose texts stay in memory (most recently used), "
                            "so queries answer while the store is out of reach; 0: none.")

    # --- input limits (4xx beyond them)
    max_text_chars: int = Field(2000, ge=1)
    max_batch_facts: int = Field(256, ge=1)
    max_candidates: int = Field(32, ge=1)
    max_score_tokens: int = Field(8192, ge=1, description="Most tokens one /score may read (the prompt once per "
                                  "candidate plus the candidates; each pair must also fit the LLM's window), else "
                                  "422: about what one chat at the full window costs.")
    max_new_tokens: int = Field(256, ge=1)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Larger request bodies get 413 before parsing.")
    max_import_bytes: int = Field(256 << 20, ge=1024, description="Larger import files get 413 (POST .../import).")
    max_import_facts: int = Field(100_000, ge=1, description="Most facts in one import file (else 422): a file is "
                                  "applied all or nothing, so its latents are held at once (1.5 KB a fact).")
    max_document_chars: int = Field(4_000_000, ge=1, description="Longest document text (about a million tokens).")
    max_document_bytes: int = Field(32 << 20, ge=1024, description="Larger document bodies get 413 (POST "
                                    ".../documents).")
    max_stop_chars: int = Field(64, ge=1, description="Longest stop string of a chat request (each costs the "
                                "tokenizer's vocabulary times its length to match).")
    max_chat_messages: int = Field(64, ge=1, description="Most messages in one chat request; the whole "
                                   "conversation must also fit the LLM's window with max_tokens (else 422).")

    # --- generation on an engine of the user's (models/remote.py); unset: the in-process LLM generates
    llm_url: str | None = Field(None, description="OpenAI-compatible base URL of an LLM engine that generates "
                                "answers (llama.cpp's server, vLLM, TGI, Ollama), e.g. http://127.0.0.1:8080/v1. "
                                "Memory, scope and fact lookup stay here; the prompt with the recalled facts goes "
                                "there. Scoring and token counts stay with the in-process LLM.")
    llm_model: str = Field("", description="The model name sent to the engine (LARIMAR_LLM_URL).")
    llm_api_key: str | None = Field(None, description="Bearer key for the engine, if it wants one.")
    llm_timeout_s: float = Field(120.0, gt=0, description="Longest wait for the engine's answer.")

    # --- admission: how many requests use the LLM at once (503 with Retry-After past them)
    llm_concurrency: int = Field(0, ge=0, description="Requests generating or scoring at once; 0: from the "
                                 "machine (4 on a GPU, a quarter of the CPU cores, at least 1).")
    llm_queue: int = Field(16, ge=0, description="Requests that may wait for the LLM beyond those running; more "
                           "get 503 at once.")
    llm_wait_s: float = Field(30.0, gt=0, description="Longest wait for the LLM before a 503.")
    llm_batch: int = Field(8, ge=1, description="Most answers generated in one batch: answers waiting for the LLM "
                           "together are generated together (service/batching.py); 1 turns batching off.")
    llm_batch_tokens: int = Field(4096, ge=1, description="Most padded tokens in one batch (answers x the longest "
                                  "prompt plus its new tokens): bounds a batch's memory; a longer answer runs alone.")
    # per-key rate limits (429 with Retry-After past them; service/ratelimit.py)
    rate_per_s: float = Field(100.0, ge=0, description="Requests per second each API key (a call naming no valid "
                              "key: its client address) may make, sustained, on /v1 and /mcp; past its bucket 429 "
                              "with Retry-After. 0 turns rate limits off.")
    rate_burst: int = Field(300, ge=0, description="Requests a key (or client address) may make at once before "
                            "rate_per_s applies: the bucket's size. 0 turns rate limits off.")

    @field_validator("api_keys", "allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _RenamedEnv(settings_cls), dotenv_settings, file_secret_settings

    def resolved_device(self) -> str:
        return resolve_device(self.device)


@lru_cache
def get_settings() -> Settings:
    return Settings()
