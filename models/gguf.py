"""The GGUF conversion cache: a GGUF file (the default SmolLM2 ships as one) takes ~15-20 s to dequantise,
so it is converted once into a safetensors directory under the model cache and that directory is loaded on
every later start. Kept apart from the LLM because it is file-system and cross-process work (locks, atomic
renames), not inference.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.paths import resolve

log = logging.getLogger(__name__)


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
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():
            raise
        log.info("another process converted %s first; using its copy", gguf.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_dir(spec: str, cache_root: Path) -> Path | str:
    """Where to load the LLM from: the converted cache for GGUF, the spec itself otherwise."""
    path = resolve(spec)
    if isinstance(path, Path) and path.suffix == ".gguf":
        target = gguf_cache_dir(path, cache_root)
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Processes starting at once on an empty cache convert one at a time; the later ones find the copy.
            with open(target.parent / f".{target.name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (target / "config.json").exists():
                    convert_gguf(path, target)
        return target
    return path
