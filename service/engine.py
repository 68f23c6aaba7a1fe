"""A batch of answers from a remote LLM engine (``LARIMAR_LLM_URL``, models/remote.py) instead of the
in-process LLM: each answer is a request of its own, all sent at once (the engine batches them itself), with
the context decoder's prompt: the recalled facts as text in the last user turn, whatever decoder the
in-process LLM would have used (a latent prefix cannot cross HTTP)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from transformers.generation.streamers import BaseStreamer

from models.decoders import ContextDecoder
from models.llm import Generation
from models.remote import RemoteEngine
from service.batching import Job
from service.cancel import ClientGone

PROMPTS = ContextDecoder()


def remote_batch(engine: RemoteEngine, jobs: list[Job], streamer: BaseStreamer) -> list[Generation]:
    """The jobs' answers, a streamed job's text passed to its streamer as it comes; ``streamer`` (the batch's)
    is ended after the last. ClientGone when every client went before its answer was done."""

    def one(job: Job) -> Generation | None:
        on_text = getattr(job.streamer, "on_finalized_text", None)  # transformers' TextIteratorStreamer
        return engine.generate(PROMPTS.generation_messages(job.chat, job.readout), job.max_new_tokens, job.sampling,
                               on_text, lambda: job.left)

    try:
        with ThreadPoolExecutor(len(jobs), thread_name_prefix="llm-engine") as pool:
            answers = list(pool.map(one, jobs))
    finally:
        streamer.end()
    if all(a is None for a in answers):
        raise ClientGone.everyone()
    return [a or Generation("", 0) for a in answers]
