"""``larimar-train`` (or ``python -m training``): fit the latent decoder's adapter; rerun the same command after
a kill and it resumes from OUT/checkpoint.pt. The models are the service's (LARIMAR_LLM, LARIMAR_ENCODER, ...)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

# Weights come from installed packages or local directories: never reach for a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="larimar-train", description=__doc__)
    ap.add_argument("--out", type=Path, help="checkpoint directory (default: adapter-training in the model cache)")
    ap.add_argument("--export", type=Path,
                    help="where the finished adapter goes (default OUT/adapter; e.g. models/adapters/NAME)")
    ap.add_argument("--data", type=Path, help="benchmark data folder (default ../shared/data or LARIMAR_BENCH_DATA)")
    ap.add_argument("--steps", type=int, help="optimiser steps (default 450: about an hour on 2 CPU cores)")
    ap.add_argument("--lr", type=float, help="peak learning rate (default 5e-4)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--decoder", choices=("latent", "hybrid"), help="the decoder the adapter serves (default hybrid)")
    ap.add_argument("--checkpoint-only", action="store_true",
                    help="do not train: export the latest checkpoint's adapter (to evaluate a run in progress)")
    args = ap.parse_args(argv)

    from models.loading import load_models
    from service.settings import Settings
    from training.data import DEFAULT_DATA
    from training.train import TrainConfig, Trainer, export_checkpoint

    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out or settings.model_cache_dir / "adapter-training"
    dest = args.export or out / "adapter"
    if args.checkpoint_only:
        export_checkpoint(out, dest)
        return
    models = load_models(settings)
    cfg = TrainConfig(**{k: v for k in ("steps", "lr", "seed", "decoder") if (v := getattr(args, k)) is not None})
    trainer = Trainer(cfg, models.llm, models.encoder, args.data or DEFAULT_DATA, out, settings.llm, settings.encoder)
    trainer.resume()
    trainer.run()
    trainer.export(dest)
    logging.getLogger("larimar").info("adapter written to %s", dest)


if __name__ == "__main__":
    main()
