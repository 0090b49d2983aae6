"""The worker's HTTP service on loopback: bearer-token auth, NDJSON streaming of job events, cancellation.

Images travel inside `job-end` as base64 PNG rather than as paths in a shared folder: a remote GPU host shares
no disk with the host, and four 1024² PNGs (~6 MB of base64) are cheap next to the sampling that made them.
"""

from __future__ import annotations

import hmac
import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .engine import Engine
from .errors import (IncompatibleLoraError, InvalidLoraFileError, InvalidRequestError, ModelLoadError, NoEvaluatorError,
                     WorkerError, file_error)
from .protocol import CancelRequest, EmbedRequest, GenerateRequest, InspectRequest, JudgeRequest, parse

MAX_BODY_BYTES = 1 << 20


class JobRegistry:
    """The jobs in flight, by id: their cancellation flag and the last step they reported."""

    def __init__(self):
        self._jobs: dict[str, tuple[threading.Event, list[int]]] = {}
        self._lock = threading.Lock()

    def start(self, job_id: str) -> tuple[threading.Event, list[int]]:
        with self._lock:
            if job_id in self._jobs:
                raise InvalidRequestError(f"field 'job_id': job {job_id!r} is already running")
            self._jobs[job_id] = (threading.Event(), [0])
            return self._jobs[job_id]

    def cancel(self, job_id: str) -> int | None:
        """Flag the job; returns the step it had reported when flagged, or None for an unknown job."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            job[0].set()
            return job[1][0]

    def end(self, job_id: str, cancel: threading.Event) -> None:
        """Forget the job whose cancel flag is `cancel` (not a later job that reused its id)."""
        with self._lock:
            if job_id in self._jobs and self._jobs[job_id][0] is cancel:
                del self._jobs[job_id]


class WorkerServer(ThreadingHTTPServer):
    """`request_timeout_s`: how long a client may take over each read of its request (and a stalled reader over
    each write of an answer) before its connection is dropped. A long /generate stream is many quick writes, each
    under the limit, never one timed whole."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: Engine, token: str, request_timeout_s: float):
        if not token:
            raise ValueError("the worker needs a token (--token or AUTOLORA_WORKER_TOKEN): it never runs open")
        if request_timeout_s <= 0:
            raise ValueError(f"the request timeout must be positive, got {request_timeout_s} s")
        super().__init__(address, WorkerHandler)
        self.engine = engine
        self.token = token
        self.request_timeout_s = request_timeout_s
        self.jobs = JobRegistry()


class WorkerHandler(BaseHTTPRequestHandler):
    server: WorkerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # the default logs every request to stderr, token-free but noisy
        pass

    def setup(self):
        # A socket timeout on the connection: the standard library then drops a client whose request stalls
        # (a half-sent header or body) instead of holding a thread for it forever.
        self.timeout = self.server.request_timeout_s
        super().setup()

    # ---- plumbing -----------------------------------------------------------------------------------------
    def _send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> None:
        self._send_json(status, {"error": {"code": code, "message": message}})

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, supplied = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(supplied.encode(), self.server.token.encode()):
            return True
        self._error(HTTPStatus.UNAUTHORIZED, "unauthorized", "missing or wrong bearer token")
        return False

    def _body(self) -> object:
        declared = self.headers.get("Content-Length") or "0"
        if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
            # The body stays unread, so the connection cannot carry another request: it closes after the answer.
            self.close_connection = True
            if not declared.isdigit():  # a negative length would read until the client closes
                raise InvalidRequestError(f"header 'Content-Length' must be a whole number of bytes, got {declared!r}")
            raise InvalidRequestError(f"request body is {declared} bytes; the limit is {MAX_BODY_BYTES}")
        length = int(declared)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"null")
        except json.JSONDecodeError as error:
            raise InvalidRequestError(f"request body is not valid JSON: {error.msg} at position {error.pos}") from None

    # ---- routes -------------------------------------------------------------------------------------------
    def do_GET(self):
        if not self._authorised():
            return
        if self.path == "/health":
            self._send_json(HTTPStatus.OK, self.server.engine.health())
        else:
            self._error(HTTPStatus.NOT_FOUND, "not-found", f"no route GET {self.path}")

    def do_POST(self):
        if not self._authorised():
            return
        routes = {"/generate": self._generate, "/inspect": self._inspect, "/embed": self._embed, "/cancel": self._cancel,
                  "/judge": self._judge, "/reload-gates": self._reload_gates, "/reload-encoder": self._reload_encoder}
        route = routes.get(self.path)
        if route is None:
            self._error(HTTPStatus.NOT_FOUND, "not-found", f"no route POST {self.path}")
            return
        try:
            route()
        except InvalidRequestError as error:
            self._error(HTTPStatus.BAD_REQUEST, error.code, str(error))

    def _embed(self):
        """One file as /inspect answers (plus its embedding), or many: {"results": [answer or {"error": {...}}]}."""
        request = parse(EmbedRequest, self._body())
        if request.path is not None:
            self._about_file(self.server.engine.embed, request.path)
            return
        try:
            answers = self.server.engine.embed_many(request.paths)
        except ModelLoadError as error:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, error.code, str(error))
            return
        self._send_json(HTTPStatus.OK, {"results": [
            answer if isinstance(answer, dict) else {"error": file_error(path, answer)}
            for path, answer in zip(request.paths, answers)]})

    def _inspect(self):
        self._about_file(self.server.engine.inspect, parse(InspectRequest, self._body()).path)

    def _about_file(self, answer, path: str):
        """/inspect and /embed of one LoRA file by path: its description or why it cannot be used."""
        try:
            self._send_json(HTTPStatus.OK, answer(path))
        except (InvalidLoraFileError, IncompatibleLoraError, OSError) as error:
            self._error(HTTPStatus.UNPROCESSABLE_ENTITY, **file_error(path, error))
        except ModelLoadError as error:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, error.code, str(error))

    def _judge(self):
        """The evaluator's labels for images (the proving ground's benchmarks score the product's output)."""
        request = parse(JudgeRequest, self._body())
        try:
            self._send_json(HTTPStatus.OK, self.server.engine.judge(request.images))
        except NoEvaluatorError as error:
            self._error(HTTPStatus.CONFLICT, error.code, str(error))
        except ModelLoadError as error:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, error.code, str(error))

    def _reload_gates(self):
        """Swap in promoted gates without a restart."""
        request = parse(InspectRequest, self._body())
        try:
            self._send_json(HTTPStatus.OK, self.server.engine.reload_gates(request.path))
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            self._error(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid-gates", f"cannot use {request.path} as gates: {error}")

    def _reload_encoder(self):
        """Swap in a promoted LoRA encoder without a restart."""
        request = parse(InspectRequest, self._body())
        try:
            self._send_json(HTTPStatus.OK, self.server.engine.reload_encoder(request.path))
        except (OSError, ValueError, KeyError, RuntimeError, ModelLoadError) as error:
            self._error(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid-encoder", f"cannot use {request.path} as the LoRA encoder: {error}")

    def _cancel(self):
        request = parse(CancelRequest, self._body())
        at_step = self.server.jobs.cancel(request.job_id)
        if at_step is not None:
            # The job stops before its next step: `at_step` lets the caller check it went no further.
            self._send_json(HTTPStatus.OK, {"job_id": request.job_id, "cancelling": True, "at_step": at_step})
        else:
            self._error(HTTPStatus.NOT_FOUND, "no-such-job", f"no job {request.job_id!r} is running")

    def _generate(self):
        request = parse(GenerateRequest, self._body())
        cancel, reported_step = self.server.jobs.start(request.job_id)
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()

            def emit(event: dict) -> None:
                if event["type"] == "job-progress":
                    reported_step[0] = event["step"]
                elif event["type"] in ("job-end", "job-error"):
                    # Over before the client can read that it is: a /cancel sent after the last event finds no job.
                    self.server.jobs.end(request.job_id, cancel)
                line = json.dumps(event).encode() + b"\n"
                try:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                except OSError:
                    cancel.set()  # the client went away: stop sampling at the next step boundary

            self.server.engine.generate(request, emit, cancel)
            try:
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
        finally:
            self.server.jobs.end(request.job_id, cancel)


def serve(engine: Engine, host: str, port: int, token: str, request_timeout_s: float) -> None:
    server = WorkerServer((host, port), engine, token, request_timeout_s)
    bound_host, bound_port = server.server_address[:2]
    # One machine-readable line so a supervisor that asked for port 0 learns the real port.
    print(json.dumps({"event": "listening", "host": bound_host, "port": bound_port}), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print(json.dumps({"event": "stopped"}), file=sys.stderr, flush=True)
