"""``larimar serve`` starts the service; ``larimar prepare`` fills the model cache (for images and CI).

Training the latent decoder is not the service's job: ``larimar-train`` (``python -m training``)."""

from __future__ import annotations

import argparse
import logging
import os
import time

# Weights come from installed packages or local directories: never reach for a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="larimar", description="Larimar knowledge-editing service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the HTTP service")
    serve.add_argument("--host", help="bind address (default LARIMAR_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default LARIMAR_PORT or 8000)")
    sub.add_parser("prepare", help="load the models once so later starts are warm")
    args = parser.parse_args(argv)

    from service.settings import Settings

    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "prepare":
        from models.loading import load_models

        t = time.perf_counter()
        load_models(settings)
        logging.getLogger("larimar").info("models ready in %.1f s", time.perf_counter() - t)
        return

    from models.paths import missing

    if problems := missing([settings.llm, settings.encoder]):  # stop now, not after uvicorn has started
        raise SystemExit("larimar serve: " + "\n".join(problems))

    import uvicorn

    from service.app import create_app

    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    main()
