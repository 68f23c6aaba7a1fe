"""Dependencies the routes receive: the editor, the documents, and the API-key check of the role each route
names (``READ``, ``WRITE``, ``ADMIN``; every /v1 route names one, and a test holds them to it), which also
spends a token of the caller's rate limit (service/ratelimit.py) before any work."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Path, Request, status

from service import auth, ratelimit, replicas
from service.auth import ApiKey, Role
from service.documents import Documents
from service.editor import Editor
from service.schemas import MEMORY_NAME

F = TypeVar("F", bound=Callable[..., Any])


def get_editor(request: Request) -> Editor:
    return request.app.state.editor


def get_documents(request: Request) -> Documents:
    return request.app.state.documents


def allowed(need: Role) -> Callable[[Request], ApiKey | None]:
    """The check of a route that needs ``need``: first the caller's rate limit (429 with Retry-After past it;
    by key, or by client address for a call naming no valid key), then, with keys configured, the call names a
    key (``Authorization: Bearer <key>``) whose role and memories cover it (service/auth.py), else 401 or 403.
    A call that names ``Larimar-Seq`` then waits for this server's copy of the memory to reach it
    (service/replicas.py). It returns that key (None: no keys configured)."""

    def check(request: Request) -> ApiKey | None:
        memory = request.path_params.get("memory")
        try:
            key = ratelimit.admit(request.app.state, request.headers.get("authorization"),
                                  request.client.host if request.client else None, memory, need)
        except ratelimit.RateLimited as e:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(e),
                                headers={"Retry-After": str(e.retry_after)}) from e
        except auth.Unauthenticated as e:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(e), headers={"WWW-Authenticate": "Bearer"}) from e
        except auth.Forbidden as e:
            raise HTTPException(status.HTTP_403_FORBIDDEN, str(e)) from e
        if memory is not None:  # a client that names the operation it must read from (service/replicas.py)
            replicas.reach(request.app.state.editor.registry, memory, request.headers.get(replicas.SEQ_HEADER))
        return key

    check.role = need  # type: ignore[attr-defined] - read by the test that every route names a role
    return check


def require(key: ApiKey | None, memory: str | None, need: Role) -> None:
    """403 with the reason when ``key`` may not do ``need`` to a memory the body names (None: no keys)."""
    if key is not None and (why := key.refusal(memory, need)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, why)


def body_limit(setting: str) -> Callable[[F], F]:
    """Declare a route's body limit: the setting (a byte count) that ``BodyLimit`` (service/app.py) holds its
    bodies to instead of max_body_bytes."""

    def mark(endpoint: F) -> F:
        endpoint.body_limit = setting  # type: ignore[attr-defined]
        return endpoint

    return mark


async def import_body(request: Request) -> bytes:
    """The request body, read whole (``BodyLimit`` in service/app.py stops it past LARIMAR_MAX_IMPORT_BYTES)."""
    return await request.body()


READ: Any = Depends(allowed("read"))  # list and read facts and documents, export, query, score, chat
WRITE: Any = Depends(allowed("write"))  # write, import, forget, update, snapshot, purge, documents
ADMIN: Any = Depends(allowed("admin"))  # delete a memory
EditorDep = Annotated[Editor, Depends(get_editor)]
DocumentsDep = Annotated[Documents, Depends(get_documents)]
ReaderKey = Annotated[ApiKey | None, READ]  # a read route that needs the key itself (listings)
ImportBody = Annotated[bytes, Depends(import_body)]
MemoryName = Annotated[str, Path(pattern=MEMORY_NAME, description="[a-z0-9][a-z0-9_-]{0,63}")]
