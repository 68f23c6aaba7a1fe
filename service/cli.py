"""``larimar serve`` starts the service; ``larimar prepare`` fills the model cache (for images and CI);
``larimar train`` fits the latent decoder's adapter (resumable: rerun the same command after a kill)."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.settings import Settings

# Weights come from installed packages or local directories: never reach for a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_training(settings: Settings, args: argparse.Namespace) -> None:
    from bench.editing.data import DEFAULT_DATA
    from service.app import load_models
    from training.train import TrainConfig, Trainer, export_checkpoint

    out = args.out or settings.model_cache_dir / "adapter-training"
    if args.checkpoint_only:
        export_checkpoint(out, args.export or out / "adapter")
        return
    models = load_models(settings)
    cfg = TrainConfig(**{k: v for k in ("steps", "lr", "seed", "form") if (v := getattr(args, k)) is not None})
    trainer = Trainer(cfg, models.llm, models.encoder, args.data or DEFAULT_DATA, out,
                      settings.llm, settings.encoder)
    trainer.resume()
    trainer.run()
    dest = args.export or out / "adapter"
    trainer.export(dest)
    logging.getLogger("larimar").info("adapter written to %s", dest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="larimar", description="Larimar knowledge-editing service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the HTTP service")
    serve.add_argument("--host", help="bind address (default LARIMAR_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default LARIMAR_PORT or 8000)")
    sub.add_parser("prepare", help="load the models once so later starts are warm")
    train = sub.add_parser("train", help="train the latent decoder's adapter (resumes from OUT/checkpoint.pt)")
    train.add_argument("--out", type=Path, help="checkpoint directory (default: the adapter dir in the model cache)")
    train.add_argument("--export", type=Path,
                       help="where the finished adapter goes (default OUT/adapter; e.g. models/adapters/NAME)")
    train.add_argument("--data", type=Path, help="benchmark data folder (default ../shared/data or LARIMAR_BENCH_DATA)")
    train.add_argument("--steps", type=int, help="optimiser steps (default 450: about an hour on 2 CPU cores)")
    train.add_argument("--lr", type=float, help="peak learning rate (default 5e-4)")
    train.add_argument("--seed", type=int)
    train.add_argument("--form", choices=("latent", "hybrid"), help="decoder form the adapter serves (default hybrid)")
    train.add_argument("--checkpoint-only", action="store_true",
                       help="do not train: export the latest checkpoint's adapter (to evaluate a run in progress)")
    args = parser.parse_args(argv)

    from service.settings import Settings

    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "train":
        run_training(settings, args)
        return
    if args.command == "prepare":
        from service.app import load_models

        t = time.perf_counter()
        load_models(settings)
        logging.getLogger("larimar").info("models ready in %.1f s", time.perf_counter() - t)
        return

    import uvicorn

    from service.app import create_app

    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    main()
