"""Documents: a long text written into a memory as pieces, which are facts with a source.

A document is split (``models.chunking``) into pieces; piece ``i`` of document ``d`` is the fact ``d-i``
with metadata ``{document, title, piece, start, end}``, so queries read pieces and facts alike and an answer
cites the spans it used. The document's own record (status, counts, its metadata) is kept by the store.

Guarantees:
- Accepted is never lost: the record, with the text, is durable before the call returns (201 or 202). A
  document of at most ``document_inline_pieces`` pieces is ingested within the call (201, ready); a larger
  one by the background worker (202, then ``written`` counts up). A restart resumes an unfinished one from
  its record, skipping the pieces already written (their ids are fixed), and the text leaves the record once
  every piece is written (the next purge takes it from the store's files, as for a forget). Replicas that
  both resume one (a shared store) race batch by batch; the one whose batch is refused as already written
  leaves the rest to the other.
- Delete forgets every piece (a cancelled ingest first stops between batches), then drops the record; a crash
  in between is finished on restart (status ``deleting``).
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any

from models.chunking import Piece, split_document
from service.editor import Editor
from service.errors import DuplicateFact, NoMemory, NotFound
from service.pieces import piece_id, piece_metadata
from service.store import StoreError
from service.timing import utc_now

log = logging.getLogger(__name__)
# pieces encoded together: sorted by length across more texts, batches waste less on padding (64k essay tokens
# ingested at ~4k tokens/s in blocks of 256, ~6k in blocks of 2048, on this project's 2-core CPU)
ENCODE_BLOCK = 2048


@dataclass(frozen=True)
class DocumentRecord:
    """What the store keeps of a document (as JSON, ``Store.put_document``); the API shows all of it but the
    text, which the record holds only until every piece is written."""

    id: str
    title: str | None
    status: str  # ingesting, ready, failed or deleting
    chars: int
    pieces: int
    written: int  # pieces in the memory when the record was last written
    chunking: str
    metadata: dict[str, Any]
    created_at: str
    updated_at: str
    error: str | None = None
    text: str | None = None

    @classmethod
    def stored(cls, record: dict[str, Any]) -> DocumentRecord:
        return cls(**{k: v for k, v in record.items() if k in cls.__dataclass_fields__})

    def to_store(self) -> dict[str, Any]:
        out = asdict(self)
        if self.text is None:
            del out["text"]
        return out

    def now(self, **changes: Any) -> DocumentRecord:
        """This record with ``changes``, updated now, without the text (only a new record holds it)."""
        return replace(self, **changes, text=None, updated_at=utc_now())


@dataclass(frozen=True)
class Job:
    memory: str
    doc_id: str


class Documents:
    """Ingest, list and delete the documents of every memory; one worker thread ingests large ones in order."""

    def __init__(self, editor: Editor) -> None:
        self.encoder = editor.encoder
        self.settings = editor.settings
        self.limits = editor.limits
        self.registry = editor.registry
        self._queue: queue.Queue[tuple[Job, list[Piece] | None]] = queue.Queue()  # None: split it from the record
        self._written: dict[Job, int] = {}  # pieces written so far, of documents queued or being ingested
        self._active: set[Job] = set()  # being ingested now (by the worker, or within a call)
        self._cancelled: set[Job] = set()  # deleted while queued or active: stop at the next batch, or skip
        self._idle = threading.Condition()  # notified whenever a job ends
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="larimar-documents", daemon=True)
        self._worker.start()

    # --- the calls ---------------------------------------------------------------------

    def add(self, memory: str, text: str, title: str | None, metadata: dict[str, Any] | None) -> dict[str, Any]:
        """Split and record the document (durably, text included), then ingest it now (small) or queue it."""
        self.limits.text(text, limit=self.settings.max_document_chars)
        title, metadata = self.limits.title(title), self.limits.metadata(metadata)
        self.registry.require_restored()
        pieces = self.pieces(text)
        now = utc_now()
        record = DocumentRecord(uuid.uuid4().hex, title, "ingesting", len(text), len(pieces), 0,
                                self.settings.document_chunking, metadata, now, now, text=text)
        self.registry.put_document(memory, record.to_store())
        job = Job(memory, record.id)
        with self._idle:
            self._written[job] = 0
        if len(pieces) <= self.settings.document_inline_pieces:
            with self._idle:
                self._active.add(job)
            self._ingest(job, record, pieces, inline=True)
        else:
            self._queue.put((job, pieces))
        return self.get(memory, record.id)

    def get(self, memory: str, doc_id: str) -> dict[str, Any]:
        return self._shown(memory, self._record(memory, doc_id))

    def documents(self, memory: str) -> list[dict[str, Any]]:
        return [self._shown(memory, DocumentRecord.stored(r)) for r in self.registry.documents(memory)]

    def delete(self, memory: str, doc_id: str) -> None:
        """Stop its ingest if one runs, forget every piece written, drop the record."""
        record = self._record(memory, doc_id)
        job = Job(memory, doc_id)
        with self._idle:
            if job in self._written:  # being ingested: it stops between batches; queued: the worker skips it
                self._cancelled.add(job)
                while job in self._active:
                    self._idle.wait(0.5)
                self._written.pop(job, None)
        record = record.now(status="deleting")
        self.registry.put_document(memory, record.to_store())
        self._forget_pieces(memory, record)
        self.registry.delete_document(memory, doc_id)
        self.registry.erasure_pending()  # the record's text, and the pieces', go from the files at the next purge

    # --- the work ----------------------------------------------------------------------

    def pieces(self, text: str) -> list[Piece]:
        return split_document(text, self.settings.document_chunking, self.settings.document_piece_tokens,
                              self.encoder.count_tokens, self.settings.max_text_chars)

    def _ingest(self, job: Job, record: DocumentRecord, pieces: list[Piece], inline: bool = False) -> None:
        """Write the pieces not yet in the memory, a batch (one memory update, one store write) at a time. A
        failure is recorded (status ``failed``); ``inline`` (within the call) it is raised too."""
        assert record.text is not None  # an unfinished record holds its text
        try:
            create = self.registry.info(job.memory) is None  # the first batch makes the memory; later ones
            step = self.settings.max_batch_facts  # stop if it was deleted meanwhile
            for block in range(0, len(pieces), ENCODE_BLOCK):
                if job in self._cancelled or self._stop.is_set():  # deleted, or shutting down (resumed on restart)
                    return
                ids = [piece_id(job.doc_id, i) for i in range(block, min(len(pieces), block + ENCODE_BLOCK))]
                todo = [(i, pieces[i]) for i, held in zip(range(block, block + len(ids)),
                                                          self.registry.holds(job.memory, ids), strict=True)
                        if not held]
                latents = self.encoder.encode([p.text for _, p in todo]) if todo else None  # (n, C)
                for start in range(0, len(todo), step):
                    if job in self._cancelled or self._stop.is_set():
                        return
                    batch = todo[start : start + step]
                    items = [(p.text, piece_metadata(job.doc_id, record.title, pieces, i, record.text))
                             for i, p in batch]
                    kept = [(piece_id(job.doc_id, i), record.created_at) for i, _ in batch]
                    self.registry.write(job.memory, items, latents[start : start + step], kept=kept, create=create)
                    create = False
                    self._written[job] = batch[-1][0] + 1
                self._written[job] = min(len(pieces), block + ENCODE_BLOCK)
            self.registry.put_document(job.memory, record.now(status="ready", written=len(pieces)).to_store())
            self.registry.erasure_pending()  # the record held the text until now
        except NoMemory:  # the memory was deleted, and the document with it: nothing left to record
            log.info("memory %r was deleted while document %s was ingested", job.memory, job.doc_id)
        except DuplicateFact:  # replicas: another server resumed it too and wrote this batch first
            log.info("document %s of memory %r: another server is writing its pieces; left to it", job.doc_id,
                     job.memory)
        except Exception as e:  # noqa: BLE001 - the record says what failed; DELETE removes what was written
            log.exception("ingesting document %s into memory %r failed", job.doc_id, job.memory)
            failed = record.now(status="failed", error=str(e), written=self._written.get(job, 0))
            try:
                self.registry.put_document(job.memory, failed.to_store())
                self.registry.erasure_pending()
            except Exception:  # noqa: BLE001 - the store is down: the record stays "ingesting", resumed on restart
                log.exception("could not record the failure of document %s", job.doc_id)
            if inline:
                raise
        finally:
            self._ended(job)

    def _forget_pieces(self, memory: str, record: DocumentRecord) -> None:
        """Every piece of the document the memory still holds, ``max_batch_facts`` per step (a step is one
        downdate and one store transaction; a piece forgotten on its own meanwhile is skipped)."""
        if self.registry.info(memory) is None:
            return
        ids = [piece_id(record.id, i) for i in range(record.pieces)]
        step = self.settings.max_batch_facts
        for start in range(0, len(ids), step):
            self.registry.forget_held(memory, *ids[start : start + step])

    def _run(self) -> None:
        """Resume what a restart interrupted, then ingest queued documents one at a time."""
        while True:  # the store answered restore, but may fail now: retried, as restore is
            if self._stop.wait(0.2):
                return
            if not self.registry.restored:
                continue
            try:
                unfinished = [(m, DocumentRecord.stored(r)) for m, r in self.registry.unfinished_documents()]
                break
            except StoreError as e:
                log.warning("reading unfinished documents failed, retrying: %s", e)
        for memory, record in unfinished:
            job = Job(memory, record.id)
            if record.status == "deleting":
                self._forget_pieces(memory, record)
                self.registry.delete_document(memory, record.id)
                self.registry.erasure_pending()
            elif job not in self._written:
                log.info("resuming document %s of memory %r", record.id, memory)
                with self._idle:
                    self._written[job] = 0
                self._queue.put((job, None))
        while not self._stop.is_set():
            try:
                job, pieces = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            with self._idle:
                skip = job in self._cancelled  # deleted while it waited
                self._active.add(job)
            if skip:
                self._ended(job)
                continue
            try:
                stored = self.registry.document(job.memory, job.doc_id)
            except StoreError as e:  # tried again after the others, the store may be back by then
                log.warning("reading document %s failed, retrying: %s", job.doc_id, e)
                with self._idle:
                    self._active.discard(job)
                    self._idle.notify_all()
                self._queue.put((job, pieces))
                self._stop.wait(1.0)
                continue
            record = None if stored is None else DocumentRecord.stored(stored)
            if record is None or record.text is None:  # its memory was deleted meanwhile
                self._ended(job)
                continue
            self._ingest(job, record, pieces if pieces is not None else self.pieces(record.text))

    def _ended(self, job: Job) -> None:
        """The job is over (done, failed, stopped or skipped): whoever waits on it (a delete) goes on."""
        with self._idle:
            self._active.discard(job)
            self._written.pop(job, None)
            self._cancelled.discard(job)
            self._idle.notify_all()

    def close(self) -> None:
        self._stop.set()
        self._worker.join(timeout=10)

    def _record(self, memory: str, doc_id: str) -> DocumentRecord:
        record = self.registry.document(memory, doc_id)
        if record is None:
            raise NotFound(f"document {doc_id!r} is not in memory {memory!r}")
        return DocumentRecord.stored(record)

    def _shown(self, memory: str, record: DocumentRecord) -> dict[str, Any]:
        """The record as the API shows it: never the text; ``written`` live while it is being ingested."""
        out = {k: v for k, v in record.to_store().items() if k != "text"} | {"memory": memory}
        if record.status == "ingesting":
            out["written"] = self._written.get(Job(memory, record.id), record.written)
        return out
