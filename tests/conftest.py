"""Shared fixtures: the real default models (loaded once), a real redis-server of our own, app clients."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from fastapi.testclient import TestClient  # noqa: E402

from bench.processes import RedisServer, free_port  # noqa: E402
from models.loading import LoadedModels, load_models  # noqa: E402
from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402

LOCAL = "http://127.0.0.1"  # the test client's Host: a loopback name, as the service without keys wants


@pytest.fixture(scope="session")
def models() -> LoadedModels:
    """The default encoder and LLM, from their PyPI packages, on the CPU (or the configured device)."""
    return load_models(Settings())


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def new_redis_server(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Make further servers (started by the test, stopped at its end)."""
    made: list[RedisServer] = []

    def make() -> RedisServer:
        made.append(RedisServer(tmp_path / f"redis{len(made)}"))
        return made[-1]

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean database on our own server (never the machine's 6379)."""
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture(params=["file", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    return request.getfixturevalue("redis_url")




@pytest.fixture
def make_client(models: LoadedModels) -> Callable[..., object]:
    """``with make_client(store_url, **settings) as client:`` an app sharing the session's models."""

    @contextmanager
    def factory(store_url: str, **overrides: object) -> Iterator[TestClient]:
        settings = Settings(store_url=store_url, **overrides)
        with TestClient(create_app(settings, models), base_url=LOCAL) as client:
            registry = client.app.state.editor.registry  # restore runs in the background: wait for it
            deadline = time.monotonic() + 120
            while (registry.restoring or (not registry.restored and registry.reachable())) \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
            yield client

    return factory


@pytest.fixture
def make_server(models: LoadedModels) -> Callable[..., object]:
    """``with make_server(store_url, **settings) as base_url:`` the app served by uvicorn on a free loopback port,
    in a thread, sharing the session's models: for what only a real connection shows (a client that goes)."""

    @contextmanager
    def factory(store_url: str, **overrides: object) -> Iterator[str]:
        app = create_app(Settings(store_url=store_url, **overrides), models)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.config.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with suppress(httpx.HTTPError):
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            time.sleep(0.05)
        try:
            yield base
        finally:
            server.should_exit = True
            thread.join(30)

    return factory


@pytest.fixture
def client(make_client: Callable[..., object], store_url: str) -> Iterator[TestClient]:
    with make_client(store_url) as c:
        yield c
