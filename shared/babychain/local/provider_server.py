"""The built-in local provider's server: an async job API on loopback that makes real images and videos offline.

It plays a remote provider: submit returns a job id, the result is ready after a configurable delay, outputs are
served over HTTP, failures can be injected. Only the one-machine shape runs it (it needs Pillow and PyAV); the adapter
in `babychain.providers.local` talks to it over HTTP like any provider adapter.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babychain.chains.families import GenerationRequest
from babychain.errors import ProviderError
from babychain.local import media
from babychain.local.loopback import LoopbackServer, QuietHandler
from babychain.media_types import MediaRefused, check_media, parse_data_uri
from babychain.security.safe_http import FetchError, fetch_bytes
from babychain.security.urls import Resolver, system_resolver

_JOB_ID = re.compile(r"^[a-f0-9]{24}$")
_FILE_NAME = re.compile(r"^[a-f0-9]{24}\.(png|jpg|webp|mp4)$")
INPUT_DOWNLOAD_SECONDS = 60.0
MAX_INPUT_BYTES = 30 * 1024 * 1024


@dataclass(frozen=True)
class FailRule:
    """`<step_key>[:<what>][x<count>]`, e.g. `image_to_video`, `text_to_image:moderated`, `image_to_video:submit_503x2`.

    `failed` (the default) and `moderated` end the job failed; `submit_<status>` answers submits with that HTTP
    status, `count` times (all of them when no count is given).
    """

    step_key: str
    what: str
    count: int | None

    @classmethod
    def parse(cls, text: str) -> FailRule:
        m = re.fullmatch(r"([a-z_]+)(?::([a-z0-9_]+?))?(?:x(\d+))?", text.strip())
        if not m:
            raise ValueError(f"bad local provider fail rule {text!r}")
        return cls(m.group(1), m.group(2) or "failed", int(m.group(3)) if m.group(3) else None)


class LocalProviderServer(LoopbackServer):
    def __init__(
        self,
        folder: str | Path,
        *,
        delay_seconds: float = 1.0,
        fail_rules: list[str] | tuple[str, ...] = (),
        resolver: Resolver = system_resolver,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.folder = Path(folder).resolve()
        (self.folder / "jobs").mkdir(parents=True, exist_ok=True)
        (self.folder / "files").mkdir(parents=True, exist_ok=True)
        self.delay_seconds = delay_seconds
        self.rules = [FailRule.parse(r) for r in fail_rules]
        self._rule_uses: dict[int, int] = {}
        self.resolver = resolver
        self.submissions: list[dict[str, Any]] = []  # every accepted submit, for tests and the demo
        # Every submit received, refused, replayed or new: a key seen twice is a second submission of one attempt.
        self.submit_log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        super().__init__(self._handler_class(), host=host, port=port, name="local-provider")

    # Jobs live on disk so a restarted runner can still answer for them.
    def _job_path(self, job_id: str) -> Path:
        return self.folder / "jobs" / f"{job_id}.json"

    def _load(self, job_id: str) -> dict[str, Any] | None:
        path = self._job_path(job_id)
        return json.loads(path.read_text()) if path.exists() else None

    def _save(self, job: dict[str, Any]) -> None:
        tmp = self._job_path(job["id"]).with_suffix(".tmp")
        tmp.write_text(json.dumps(job))
        tmp.replace(self._job_path(job["id"]))

    def _take_rule(self, step_key: str, prefix: str) -> FailRule | None:
        for i, rule in enumerate(self.rules):
            if rule.step_key == step_key and rule.what.startswith(prefix):
                used = self._rule_uses.get(i, 0)
                if rule.count is not None and used >= rule.count:
                    continue
                self._rule_uses[i] = used + 1
                return rule
        return None

    def submit(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        step_key = str(body.get("step_key", ""))
        with self._lock:
            self.submit_log.append({"idempotency_key": body.get("idempotency_key"), "step_key": step_key})
            rule = self._take_rule(step_key, "submit_")
            if rule is not None:
                return int(rule.what.removeprefix("submit_")), {
                    "error": {"code": "injected", "message": f"injected {rule.what}"}
                }
            job_id = hashlib.sha256(str(body["idempotency_key"]).encode()).hexdigest()[:24]
            existing = self._load(job_id)
            if existing is not None:
                return 200, self._public(existing)
            outcome = self._take_rule(step_key, "")
            job = {
                "id": job_id,
                "status": "pending",
                "step_key": step_key,
                "request": body["request"],
                "ready_at": time.time() + self.delay_seconds,
                "created_at": time.time(),
                "fail": outcome.what if outcome else None,
            }
            self._save(job)
            self.submissions.append(body)
        return 200, self._public(job)

    def status(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._load(job_id)
            if job is None or job["status"] != "pending" or time.time() < job["ready_at"]:
                return self._public(job) if job else None
            self._finish(job)
            self._save(job)
            return self._public(job)

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._load(job_id)
            if job is not None and job["status"] == "pending":
                job["status"] = "canceled"
                self._save(job)
            return self._public(job) if job else None

    def _finish(self, job: dict[str, Any]) -> None:
        if job["fail"] == "moderated":
            job.update(status="failed", error_code="content_moderated", error_message="Content Moderated")
            return
        if job["fail"]:
            job.update(status="failed", error_code="generation_failed", error_message="The generation failed.")
            return
        request = GenerationRequest(**job["request"])
        try:
            content, fmt = self._render(job["step_key"], request)
        except MediaRefused as exc:
            job.update(status="failed", error_code="input_media_refused", error_message=exc.message)
            return
        except (ValueError, ProviderError, FetchError) as exc:
            job.update(status="failed", error_code="invalid_input", error_message=str(exc))
            return
        name = f"{job['id']}{media.extension_for(fmt)}"
        (self.folder / "files" / name).write_bytes(content)
        job.update(status="succeeded", output=f"/files/{name}", content_type=media.content_type_for(fmt))

    def _render(self, step_key: str, request: GenerationRequest) -> tuple[bytes, str]:
        if step_key == "text_to_image":
            return media.text_to_image(
                request.prompt,
                seed=request.seed,
                width=request.width or 1024,
                height=request.height or 1024,
                output_format=request.output_format,
            ), request.output_format
        if not request.input_urls:
            raise ValueError(f"{step_key} needs an input image")
        source = self._input_image(request.input_urls[0])
        if step_key == "image_to_image":
            return media.image_to_image(
                source,
                request.prompt,
                seed=request.seed,
                output_format=request.output_format,
                width=request.width,
                height=request.height,
            ), request.output_format
        return media.image_to_video(
            source,
            request.prompt,
            seed=request.seed,
            duration_seconds=request.duration_seconds or 3.0,
            ratio=request.ratio,
        ), "mp4"

    def _input_image(self, url: str) -> bytes:
        """The input image's bytes, from an inline data: URI or downloaded; MediaRefused unless it is an image."""
        if url.startswith("data:"):
            media_type, content = parse_data_uri(url)
            check_media(content, media_type, "image")
            return content
        return fetch_bytes(
            url,
            resolver=self.resolver,
            max_bytes=MAX_INPUT_BYTES,
            total_timeout=INPUT_DOWNLOAD_SECONDS,
            allow_loopback_http=True,
            media_kind="image",
        ).content

    def _public(self, job: dict[str, Any]) -> dict[str, Any]:
        out = {"id": job["id"], "status": job["status"]}
        if job["status"] == "pending":
            total = max(self.delay_seconds, 1e-6)
            out["progress"] = round(min(0.99, max(0.0, 1 - (job["ready_at"] - time.time()) / total)), 2)
        if job.get("output"):
            out["output_url"] = self.base_url + job["output"]
        for key in ("error_code", "error_message"):
            if job.get(key):
                out[key] = job[key]
        return out

    def _handler_class(self) -> type[QuietHandler]:
        server = self

        class Handler(QuietHandler):
            def _json(self, status: int, body: dict[str, Any] | None) -> None:
                if body is None:
                    return self.send_json(404, {"error": {"code": "not_found"}})
                return self.send_json(status, body)

            def _job_id(self) -> str | None:
                job_id = self.path.rsplit("/", 1)[-1]
                return job_id if self.path.startswith("/v1/jobs/") and _JOB_ID.match(job_id) else None

            def do_POST(self) -> None:
                if self.path != "/v1/jobs":
                    return self._json(404, None)
                raw = self.read_body()
                try:
                    body = json.loads(raw)
                    status, answer = server.submit(body)
                except (ValueError, KeyError, TypeError) as exc:
                    return self._json(400, {"error": {"code": "invalid_request", "message": str(exc)}})
                self._json(status, answer)

            def do_GET(self) -> None:
                if self.path.startswith("/files/"):
                    name = self.path.removeprefix("/files/")
                    path = server.folder / "files" / name
                    if not _FILE_NAME.match(name) or not path.exists():
                        return self._json(404, None)
                    return self.send_bytes(200, path.read_bytes(), media.content_type_for(name.rsplit(".", 1)[1]))
                job_id = self._job_id()
                self._json(200, server.status(job_id) if job_id else None)
                return None

            def do_DELETE(self) -> None:
                job_id = self._job_id()
                self._json(200, server.cancel(job_id) if job_id else None)

        return Handler
