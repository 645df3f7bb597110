"""BytePlus ModelArk (BYOK): Seedream images (synchronous) and Seedance videos (asynchronous tasks).

Wire protocol (see reference/providers.md §2):

* `POST {base}/images/generations` answers with the images themselves (`data[].url`, valid 24 h). The adapter returns
  them on the `Submission` and also stores them in its metadata, so a later `poll` of the synthetic job id replays
  them.
* `POST {base}/contents/generations/tasks` answers `{id}`; `GET {base}/contents/generations/tasks/{id}` reports
  `queued`, `running`, `succeeded`, `failed`, `cancelled` or `expired`. `DELETE` on the same path cancels a queued
  task, deletes a finished one and is refused for a running one.
* Auth is `Authorization: Bearer <ARK_API_KEY>`; errors are `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from babychain.errors import ProviderError
from babychain.providers.base import JobStatus, Provider, StepJob, Submission, WebhookNotice, WebhookRejected
from babychain.providers.http import ErrorBody, HostRule, ProviderHttp, answered, check_api_key, check_base_url
from babychain.security.lean_http import Response

DEFAULT_BASE_URL = "https://ark.ap-southeast.bytepluses.com/api/v3"
HOSTS = HostRule("ARK_API_BASE_URL", hosts=frozenset({"ark.ap-southeast.bytepluses.com"}))
LABEL = "BytePlus ModelArk"
OUTPUT_TTL_SECONDS = 24 * 3600  # Seedream image URLs and Seedance video / last-frame URLs live 24 h

SYNC_PREFIX = "seedream-"
KIND_SYNC_IMAGE = "sync_image"
KIND_VIDEO_TASK = "video_task"
# Task ids go into URL paths; anything outside this shape is refused rather than escaped.
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_VIDEO_FACTS = ("seed", "resolution", "ratio", "duration", "frames", "framespersecond")


def is_moderation_code(code: str | None) -> bool:
    """ModelArk's content-safety codes: `SensitiveContentDetected[.X]`, `Input|Output{Text,Image,Video}Sensitive...`."""
    return bool(code) and "SensitiveContentDetected" in str(code)


class BytePlusProvider(Provider):
    name = "byteplus"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        allow_loopback: bool = False,
        image_timeout: float = 180.0,
        timeout: float = 30.0,
    ) -> None:
        check_api_key(api_key, "ARK_API_KEY")
        self.base_url = check_base_url(base_url, HOSTS, allow_loopback).url
        # Seedream answers only when the image exists, so its read timeout is the generation time.
        self._image_timeout = image_timeout
        self._http = ProviderHttp(
            LABEL,
            secrets=(api_key,),
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=timeout,
            read_error=_read_error,
        )

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------------------------------------ submit

    def submit(self, job: StepJob) -> Submission:
        # The model decides as well as the step kind: a Seedance model only exists as a video task.
        if job.step_kind == "video" or job.model.output_kind == "video":
            return self._submit_video(job)
        return self._submit_image(job)

    def _submit_image(self, job: StepJob) -> Submission:
        body: dict[str, Any] = {
            **job.params,
            "model": job.model.provider_model,
            "response_format": "url",  # b64 would put megabytes of image into the step's metadata
        }
        body.setdefault("sequential_image_generation", "disabled")  # one step, one image
        answer = self._call("POST", "/images/generations", body, job.idempotency_key, timeout=self._image_timeout)
        top_error = answer.get("error")
        if isinstance(top_error, dict) and top_error:
            raise self._body_error(top_error, "Seedream refused the image")
        urls, sizes = self._image_urls(answer.get("data"))
        metadata: dict[str, Any] = {"kind": KIND_SYNC_IMAGE, "output_urls": urls}
        if sizes:
            metadata["sizes"] = sizes
        if isinstance(answer.get("usage"), dict):
            metadata["usage"] = answer["usage"]
        if isinstance(answer.get("created"), int):
            metadata["output_expires_at"] = answer["created"] + OUTPUT_TTL_SECONDS
        job_id = SYNC_PREFIX + hashlib.sha256(job.idempotency_key.encode()).hexdigest()[:32]
        return Submission(job_id=job_id, metadata=metadata, output_urls=urls)

    def _image_urls(self, data: Any) -> tuple[list[str], list[str]]:
        """The image URLs of `data[]` and their sizes; a per-image error fails the request."""
        if not isinstance(data, list):
            raise ProviderError(
                "provider_unexpected_response", "BytePlus image response has no data list.", transient=False
            )
        urls: list[str] = []
        sizes: list[str] = []
        for item in data:
            if isinstance(item, dict) and isinstance(item.get("error"), dict):
                # One image of the request failed (moderation, or an internal error): the step has no result.
                raise self._body_error(item["error"], "Seedream could not generate the image")
            url = item.get("url") if isinstance(item, dict) else None
            if isinstance(url, str) and url.strip():
                urls.append(url.strip())
                if isinstance(item.get("size"), str):
                    sizes.append(item["size"])
        if not urls:
            raise ProviderError(
                "provider_unexpected_response", "BytePlus image response contained no URLs.", transient=False
            )
        return urls, sizes

    def _submit_video(self, job: StepJob) -> Submission:
        body: dict[str, Any] = {**job.params, "model": job.model.provider_model}
        if job.webhook_url:
            body["callback_url"] = job.webhook_url
        answer = self._call("POST", "/contents/generations/tasks", body, job.idempotency_key)
        task_id = answer.get("id")
        if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
            raise ProviderError(
                "provider_unexpected_response", "BytePlus task response has no usable id.", transient=False
            )
        return Submission(job_id=task_id, metadata={"kind": KIND_VIDEO_TASK, "task_id": task_id})

    # ------------------------------------------------------------------------------------------------ poll

    def poll(self, job_id: str, metadata: dict[str, Any]) -> JobStatus:
        if _is_sync(job_id, metadata):
            urls = metadata.get("output_urls")
            if isinstance(urls, list) and urls and all(isinstance(u, str) for u in urls):
                return JobStatus("succeeded", output_urls=list(urls))
            return JobStatus(
                "failed",
                error_code="provider_unexpected_response",
                error_message="The Seedream result was not recorded with the step.",
            )
        return self.task_status(self._call("GET", self._task_path(job_id), not_found_code="provider_task_not_found"))

    def task_status(self, task: dict[str, Any]) -> JobStatus:
        """Maps a task object (GET answer, or the same shape in a callback) to the engine's view."""
        status = task.get("status")
        if not isinstance(status, str):
            raise ProviderError("provider_unexpected_response", "BytePlus task has no status.", transient=False)
        metadata: dict[str, Any] = {"provider_status": status}
        if isinstance(task.get("updated_at"), int):
            metadata["updated_at"] = task["updated_at"]
        match status:
            case "succeeded":
                return _succeeded(task, metadata)
            case "failed":
                return self._failed(task, metadata)
            case "expired":
                error = _obj(task.get("error"))
                fallback = "The Seedance task expired before it finished (execution_expires_after)."
                message = self._message(error.get("code"), error.get("message"), fallback)
                return JobStatus("failed", error_code="provider_expired", error_message=message, metadata=metadata)
            case "cancelled":
                return JobStatus("canceled", metadata=metadata)
            case _:
                # queued, running, or a status this adapter does not know yet: keep polling; deadlines bound it.
                return JobStatus("pending", metadata=metadata)

    def _failed(self, task: dict[str, Any], metadata: dict[str, Any]) -> JobStatus:
        error = _obj(task.get("error"))
        code = error.get("code") if isinstance(error.get("code"), str) else None
        if code:
            metadata["provider_error_code"] = code
        return JobStatus(
            "failed",
            error_code="provider_content_moderated" if is_moderation_code(code) else "provider_failed",
            error_message=self._message(code, error.get("message"), "The Seedance task failed."),
            metadata=metadata,
        )

    # ------------------------------------------------------------------------------------------------ cancel

    def cancel(self, job_id: str, metadata: dict[str, Any]) -> bool:
        """Cancels a queued Seedance task. False (never an exception) when it cannot be cancelled.

        DELETE on a finished task deletes its record instead of cancelling anything, and a running task cannot be
        stopped, so the task is read first and only a queued one (or one in a status this adapter does not know) is
        sent the DELETE. If it started running in between, ModelArk refuses the DELETE and this returns False.
        """
        if _is_sync(job_id, metadata) or not _TASK_ID.fullmatch(job_id):
            return False  # Seedream finished inside its request; there is nothing left to cancel
        try:
            task = self._call("GET", self._task_path(job_id))
            status = task.get("status")
            if status == "cancelled":
                return True
            if status in ("running", "succeeded", "failed", "expired"):
                return False
            self._http.send("DELETE", self.base_url + self._task_path(job_id))
        except ProviderError:
            return False  # refused (running), gone (404), or unreachable: the engine cancels locally either way
        return True

    # ------------------------------------------------------------------------------------------------ webhook

    def parse_webhook(self, headers: dict[str, str], body: bytes) -> WebhookNotice | None:
        """Reads a ModelArk `callback_url` delivery. The body is only a hint.

        ModelArk signs nothing: no signature, no auth header, no event id. The engine authenticates a delivery by
        the unguessable per-step token in the callback URL it gave us, and must then `poll` the task before
        trusting any status; nothing in this body is used as the result. The receipt id (`id:status:updated_at`)
        lets the engine drop ModelArk's retries of the same transition.
        """
        try:
            task = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise WebhookRejected("BytePlus callback body is not JSON.") from exc
        if not isinstance(task, dict):
            raise WebhookRejected("BytePlus callback body is not a task object.")
        task_id, status, updated_at = task.get("id"), task.get("status"), task.get("updated_at")
        if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
            raise WebhookRejected("BytePlus callback has no valid task id.")
        if not isinstance(status, str) or not re.fullmatch(r"[a-z_]{1,32}", status):
            raise WebhookRejected("BytePlus callback has no valid status.")
        if updated_at is not None and (not isinstance(updated_at, int) or isinstance(updated_at, bool)):
            raise WebhookRejected("BytePlus callback has an invalid updated_at.")
        return WebhookNotice(job_id=task_id, receipt_id=f"{task_id}:{status}:{updated_at if updated_at else ''}")

    # ------------------------------------------------------------------------------------------------ HTTP

    def _task_path(self, job_id: str) -> str:
        if not _TASK_ID.fullmatch(job_id):
            raise ProviderError("provider_task_not_found", "Not a BytePlus task id.", transient=False)
        return f"/contents/generations/tasks/{job_id}"

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        *,
        timeout: float | None = None,
        not_found_code: str = "provider_not_found",
    ) -> dict[str, Any]:
        headers = {"x-idempotency-key": idempotency_key} if idempotency_key else {}
        response = self._http.send(
            method, self.base_url + path, body=body, headers=headers, timeout=timeout, not_found_code=not_found_code
        )
        return self._http.json_object(response)

    def _body_error(self, error: dict[str, Any], fallback: str) -> ProviderError:
        code = error.get("code") if isinstance(error.get("code"), str) else None
        text = self._message(code, error.get("message"), fallback)
        if is_moderation_code(code):
            return ProviderError("provider_content_moderated", text, transient=False)
        return ProviderError("provider_failed", text, transient=False)

    def _message(self, code: Any, message: Any, fallback: str) -> str:
        return self._http.scrub(_joined(code, message) or fallback)


def _succeeded(task: dict[str, Any], metadata: dict[str, Any]) -> JobStatus:
    content = _obj(task.get("content"))
    video_url = content.get("video_url")
    if not isinstance(video_url, str) or not video_url.strip():
        return JobStatus(
            "failed",
            error_code="provider_unexpected_response",
            error_message="The Seedance task succeeded without a video_url.",
            metadata=metadata,
        )
    if isinstance(content.get("last_frame_url"), str):
        metadata["last_frame_url"] = content["last_frame_url"]
    if isinstance(task.get("usage"), dict):
        metadata["usage"] = task["usage"]
    metadata.update({key: task[key] for key in _VIDEO_FACTS if task.get(key) is not None})
    if isinstance(task.get("updated_at"), int):
        metadata["output_expires_at"] = task["updated_at"] + OUTPUT_TTL_SECONDS
    return JobStatus("succeeded", output_urls=[video_url.strip()], metadata=metadata)


def _read_error(response: Response) -> ErrorBody:
    """ModelArk's `{"error": {"code", "message"}}`; some codes say more than the status."""
    code, message = _error_fields(response)
    text = answered(LABEL, response.status_code, _joined(code, message))
    if is_moderation_code(code):
        return ErrorBody(text, code="provider_content_moderated")
    if code == "AccountOverdueError":
        # 403 here means an unpaid balance, not a bad key: retrying or rotating keys will not help.
        return ErrorBody(text, code="provider_quota_exceeded")
    return ErrorBody(text)


def _error_fields(response: Response) -> tuple[str | None, str | None]:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None, response.text
    if isinstance(error, dict):
        return _str(error.get("code")), _str(error.get("message"))
    if isinstance(error, str):  # some gateways in front of ModelArk flatten the error to a string
        return None, error
    return None, None


def _joined(code: Any, message: Any) -> str:
    return ": ".join(str(p) for p in (code, message) if isinstance(p, str) and p.strip())


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_sync(job_id: str, metadata: dict[str, Any]) -> bool:
    return metadata.get("kind") == KIND_SYNC_IMAGE or job_id.startswith(SYNC_PREFIX)
