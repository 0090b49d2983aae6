"""`serve --queue redis://…`: a worker that pulls generation and ingest (embedding) jobs from the hosts' BullMQ
queue on Redis.

The worker needs no inbound connection: it takes the next job when it is free (the hosts set the order with
BullMQ priorities), reports each step as the job's progress, and returns the job-end event as the job's result.
While a job runs its lock is renewed every LOCK_MS / 2; a worker that dies stops renewing, and the stalled-job
check of any live worker puts the job back in line once (then fails it), so a dead worker's job is taken up again
within about LOCK_MS + STALLED_CHECK_MS. A host cancels a running job by publishing its id on the cancel channel.
Every worker also keeps a short-lived health key (`<prefix>:autolora:workers:<name>`) that hosts list.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import uuid
from typing import Callable

from pydantic import ValidationError

from .engine import Engine
from .errors import WorkerError
from .protocol import EmbedJobRequest, GenerateRequest

QUEUE = "autolora-generate"
LOCK_MS = 10_000
STALLED_CHECK_MS = 5_000
HEARTBEAT_S = 5
Log = Callable[[str], None]


def cancel_channel(prefix: str) -> str:
    return f"{prefix}:autolora:cancel"


def workers_key(prefix: str, name: str) -> str:
    return f"{prefix}:autolora:workers:{name}"


class QueueAuthError(Exception):
    """Redis refused this worker's credentials, or cannot be reached at all."""


async def check_connection(url: str) -> None:
    """Fail at once, with a clear message, where the queue's own client would retry for minutes."""
    import redis.asyncio as redis
    from redis.exceptions import AuthenticationError, ConnectionError, ResponseError

    client = redis.from_url(url, socket_connect_timeout=5)
    try:
        await client.ping()
    except AuthenticationError as error:
        raise QueueAuthError(f"Redis refused this worker's credentials ({error}): check the password in --queue "
                             "(redis://:PASSWORD@host:6379, or rediss:// for TLS)") from None
    except ResponseError as error:  # NOAUTH: a password is required and none was given
        raise QueueAuthError(f"Redis refused the worker: {error}; put the password in --queue "
                             "(redis://:PASSWORD@host:6379)") from None
    except (ConnectionError, OSError) as error:
        raise QueueAuthError(f"Redis at {redact(url)} cannot be reached: {error}") from None
    finally:
        await client.aclose()


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, _, rest = url.partition("://")
    credentials, at, place = rest.rpartition("@")
    return f"{scheme}://{'***@' if at else ''}{place}"


class QueueWorker:
    def __init__(self, engine: Engine, url: str, prefix: str = "bull", name: str | None = None, log: Log | None = None):
        self.engine = engine
        self.url = url
        self.prefix = prefix
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._cancels: dict[str, threading.Event] = {}
        self._stopping = asyncio.Event()

    async def process(self, job, token: str) -> dict:
        """One job: a generation (the engine's events become the job's progress, its job-end event the job's
        result) or an ingest's embeddings."""
        if job.name == "embed":
            return await self._embed(job)
        try:
            request = GenerateRequest.model_validate(job.data.get("request"))
        except ValidationError as error:
            raise ValueError(f"invalid-request: {error.errors()[0]['msg']}") from None
        cancel = self._cancels.setdefault(request.job_id, threading.Event())
        loop = asyncio.get_running_loop()
        pending: list[asyncio.Future] = []
        ended: dict = {}

        def emit(event: dict) -> None:  # called on the engine's thread
            if event["type"] == "job-progress":
                pending.append(asyncio.run_coroutine_threadsafe(job.updateProgress(event), loop))
            elif event["type"] in ("job-end", "job-error"):
                ended["event"] = event

        self.log(f"[queue] {self.name} runs job {request.job_id}")
        try:
            await asyncio.to_thread(self.engine.generate, request, emit, cancel)
        finally:
            self._cancels.pop(request.job_id, None)
        for future in pending:  # the last previews reach the host before the result does
            await asyncio.wrap_future(future)
        event = ended.get("event") or {"type": "job-error", "code": "internal-error", "message": "the job ended silently"}
        if event["type"] == "job-error":
            raise RuntimeError(f"{event['code']}: {event['message']}")
        return event

    async def _embed(self, job) -> dict:
        """An ingest's LoRA files, fetched by hash and embedded in one call: {"results": [...]}, in order."""
        try:
            request = EmbedJobRequest.model_validate(job.data.get("request"))
        except ValidationError as error:
            raise ValueError(f"invalid-request: {error.errors()[0]['msg']}") from None
        self.log(f"[queue] {self.name} embeds {len(request.loras)} LoRA file(s) for job {job.id}")
        try:
            return await asyncio.to_thread(self.engine.embed_refs, request.loras)
        except WorkerError as error:
            raise RuntimeError(f"{error.code}: {error}") from None

    async def _listen_for_cancels(self) -> None:
        import redis.asyncio as redis

        client = redis.from_url(self.url)
        pubsub = client.pubsub()
        await pubsub.subscribe(cancel_channel(self.prefix))
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                job_id = message["data"].decode() if isinstance(message["data"], bytes) else str(message["data"])
                cancel = self._cancels.get(job_id)
                if cancel is not None:
                    self.log(f"[queue] {self.name} cancels job {job_id}")
                    cancel.set()
        finally:
            await pubsub.aclose()
            await client.aclose()

    async def _report_health(self, client) -> None:
        health = {**self.engine.health(), "name": self.name}
        await client.set(workers_key(self.prefix, self.name), json.dumps(health), ex=3 * HEARTBEAT_S)

    async def _heartbeat(self) -> None:
        import redis.asyncio as redis

        client = redis.from_url(self.url)
        try:
            while not self._stopping.is_set():
                await self._report_health(client)
                try:
                    await asyncio.wait_for(self._stopping.wait(), HEARTBEAT_S)
                except asyncio.TimeoutError:
                    pass
            await client.delete(workers_key(self.prefix, self.name))
        finally:
            await client.aclose()

    async def run(self, until: asyncio.Event) -> None:
        """Take jobs until `until` is set; then finish the running job and stop."""
        from bullmq import Worker

        await check_connection(self.url)
        worker = Worker(QUEUE, self.process, {
            "connection": self.url, "prefix": self.prefix, "concurrency": 1, "name": self.name,
            "lockDuration": LOCK_MS, "stalledInterval": STALLED_CHECK_MS, "maxStalledCount": 1,
        })
        import redis.asyncio as redis

        client = redis.from_url(self.url)
        try:  # listed by the hosts from the moment it says it listens
            await self._report_health(client)
        finally:
            await client.aclose()
        tasks = [asyncio.create_task(self._listen_for_cancels()), asyncio.create_task(self._heartbeat())]
        print(json.dumps({"event": "listening", "queue": redact(self.url), "name": self.name}), flush=True)
        try:
            await until.wait()
        finally:
            self._stopping.set()
            await worker.close()
            tasks[0].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.log(f"[queue] {self.name} stopped")


def serve_queue(engine: Engine, url: str, prefix: str) -> int:
    """Run a queue worker until SIGTERM or SIGINT; the running job ends first."""
    import signal

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await QueueWorker(engine, url, prefix).run(stop)
        except QueueAuthError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            return 2
        return 0

    return asyncio.run(main())
