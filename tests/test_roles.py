"""Every /v1 route names the role it needs (service/deps.py): without a key it answers 401, and the least
role whose key it does not refuse (403) is the role it names. Checked over HTTP on every route the OpenAPI
document lists, so a new route that names no role fails here."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

ROLES = ("read", "write", "admin")


def test_every_v1_route_names_its_role(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"key": f"{r}-key-0123", "role": r, "memories": ["*"]} for r in ROLES]))
    app = create_app(Settings(store_url=f"file://{tmp_path / 'store'}", api_keys_file=keys))
    app.state.editor = app.state.documents = None  # no lifespan, no models: the key check comes before any work
    client = TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1")  # a loopback Host
    role: dict[tuple[str, str], str] = {}
    for path, operations in app.openapi()["paths"].items():
        if not path.startswith("/v1"):
            continue
        url = path.replace("{memory}", "demo").replace("{fact_id}", "f1").replace("{doc_id}", "d1")
        for method in operations:
            assert client.request(method, url, json={}).status_code == 401, (method, path)
            allowed = [r for r in ROLES if client.request(method, url, json={}, headers={
                "Authorization": f"Bearer {r}-key-0123"}).status_code != 403]
            assert allowed and allowed == list(ROLES[ROLES.index(allowed[0]):]), (method, path, allowed)
            role[method.upper(), path] = allowed[0]
    assert len(role) >= 20
    assert role["POST", "/v1/memories/{memory}/query"] == "read", "a read-only POST needs only the read role"
    assert role["POST", "/v1/memories/{memory}/score"] == "read"
    assert role["POST", "/v1/chat/completions"] == "read"
    assert role["GET", "/v1/memories/{memory}/export"] == "read"
    assert role["GET", "/v1/memories/{memory}/documents/{doc_id}"] == "read"
    assert role["POST", "/v1/memories/{memory}/facts/batch"] == "write"
    assert role["DELETE", "/v1/memories/{memory}/facts/{fact_id}"] == "write"
    assert role["POST", "/v1/memories/{memory}/documents"] == "write"
    assert role["POST", "/v1/memories/{memory}/import"] == "write"
    assert role["DELETE", "/v1/memories/{memory}"] == "admin"
