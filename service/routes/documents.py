"""Write long texts as documents (pieces in memory), follow their ingest, list and delete them."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from service.deps import READ, WRITE, DocumentsDep, MemoryName, body_limit
from service.schemas import DocumentDeleted, DocumentIn, DocumentList, DocumentOut

router = APIRouter(prefix="/memories/{memory}/documents", tags=["documents"])


@router.post("", response_model=DocumentOut, status_code=status.HTTP_201_CREATED,
             responses={202: {"model": DocumentOut, "description": "accepted: ingesting in the background"}},
             dependencies=[WRITE])
@body_limit("max_document_bytes")
def add_document(memory: MemoryName, body: DocumentIn, documents: DocumentsDep, response: Response) -> DocumentOut:
    """201 once every piece is written (small documents); 202 while a large one is ingested (poll its GET)."""
    doc = DocumentOut(**documents.add(memory, body.text, body.title, body.metadata))
    response.headers["Location"] = f"/v1/memories/{memory}/documents/{doc.id}"
    response.status_code = status.HTTP_201_CREATED if doc.status == "ready" else status.HTTP_202_ACCEPTED
    return doc


@router.get("", response_model=DocumentList, dependencies=[READ])
def list_documents(memory: MemoryName, documents: DocumentsDep) -> DocumentList:
    return DocumentList(documents=[DocumentOut(**d) for d in documents.documents(memory)])


@router.get("/{doc_id}", response_model=DocumentOut, dependencies=[READ])
def get_document(memory: MemoryName, doc_id: str, documents: DocumentsDep) -> DocumentOut:
    return DocumentOut(**documents.get(memory, doc_id))


@router.delete("/{doc_id}", response_model=DocumentDeleted, dependencies=[WRITE])
def delete_document(memory: MemoryName, doc_id: str, documents: DocumentsDep) -> DocumentDeleted:
    """Forget every piece (with the erasure guarantees of facts), then drop the document."""
    documents.delete(memory, doc_id)
    return DocumentDeleted(id=doc_id, deleted=True)
