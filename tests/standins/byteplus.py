"""A BytePlus ModelArk stand-in on loopback: Seedream images (synchronous) and Seedance video tasks.

It speaks the documented wire protocol (reference/providers.md §2): the same paths under `/api/v3`, Bearer auth with
`{"error": {"code", "message"}}` bodies, the task lifecycle `queued → running → succeeded|failed` (plus `cancelled`
and `expired`), DELETE semantics (cancel when queued, refuse when running, delete when finished), unsigned
`callback_url` POSTs carrying the GET-task body, and real JPEG / MP4 / PNG outputs served by the stand-in itself.

Usage::

    with BytePlusStandIn(api_key="ark-test") as server:
        provider = BytePlusProvider("ark-test", base_url=server.base_url, allow_loopback=True)
        server.moderate_next()

Where the reference is silent the stand-in picks something plausible and says so: a refused DELETE answers 400
`InvalidParameter`; an unknown task answers 404 `ResourceNotFound`; an `expired` task carries `error: null`.
Videos are rendered smaller than the nominal resolution (`video_max_side`) to keep tests fast; the task still echoes
the requested `resolution`, and `usage` is computed from the nominal size.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import random
import re
import secrets
import string
import threading
import time
from collections.abc import Iterable
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import av
import httpx
from PIL import Image

from babychain.local import media
from babychain.local.loopback import LoopbackServer, QuietHandler

API = "/api/v3"
TASKS = f"{API}/contents/generations/tasks"
IMAGES = f"{API}/images/generations"
MAX_INPUT_BYTES = 30 * 1024 * 1024
TERMINAL = ("succeeded", "failed", "cancelled", "expired")
RATIOS = ("16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive", "keep_ratio")
RESOLUTIONS = {"480p": 480, "720p": 720, "1080p": 1080}
SIZE_PRESETS = {"1K": (1024, 1024), "2K": (2048, 2048), "4K": (4096, 4096)}
FPS = 24
_DEFAULT_FAULT_CODES = {
    400: "InvalidParameter",
    401: "AuthenticationError",
    403: "AccessDenied",
    404: "InvalidEndpoint.NotFound",
    429: "RateLimitExceeded.EndpointRPMExceeded",
    500: "InternalServiceError",
    502: "BadGateway",
    503: "ServiceUnavailable",
}


def _request_id() -> str:
    return "0217" + secrets.token_hex(12)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": f"{message} Request id: {_request_id()}", "param": "", "type": ""}}


class _Refusal(Exception):
    """An API error answer: HTTP status plus ModelArk's error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(code, message)


def _missing(name: str) -> _Refusal:
    return _Refusal(
        400,
        "MissingParameter",
        f"The request failed because it is missing one or multiple required parameters: {name}.",
    )


def _invalid(message: str) -> _Refusal:
    return _Refusal(
        400, "InvalidParameter", f"One or more parameters specified in the request are not valid: {message}"
    )


class BytePlusStandIn(LoopbackServer):
    def __init__(
        self,
        api_key: str = "ark-test-key",
        *,
        delay_seconds: float = 0.2,
        image_delay_seconds: float = 0.0,
        video_max_side: int = 384,
        callback_statuses: Iterable[str] = ("queued", "running", "succeeded", "failed"),
        callback_retry_seconds: float = 0.2,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.delay_seconds = delay_seconds
        self.image_delay_seconds = image_delay_seconds
        self.video_max_side = video_max_side
        self.callback_statuses = tuple(callback_statuses)
        self.callback_retry_seconds = callback_retry_seconds
        # What tests read: every request received, every callback attempt, the tasks by id.
        self.requests: list[dict[str, Any]] = []
        self.callbacks: list[dict[str, Any]] = []
        self.tasks: dict[str, dict[str, Any]] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.RLock()
        self._submit_faults: list[dict[str, Any]] = []
        self._job_faults: list[dict[str, Any]] = []
        self._overdue = False
        self._hold_queued = False
        self._hold_running = False
        self._race_next_delete = False
        self._outputs: list[tuple[bytes, str]] = []
        self._stopping = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name="byteplus-ticker", daemon=True)
        # A short poll interval keeps shutdown (and so each test's teardown) quick.
        super().__init__(self._handler_class(), host=host, port=port, name="byteplus-standin", poll_interval=0.02)

    # ------------------------------------------------------------------------------------------- lifecycle

    @property
    def origin(self) -> str:
        return super().base_url

    @property
    def base_url(self) -> str:
        """What the adapter takes as `base_url` (ModelArk's `/api/v3` root)."""
        return self.origin + API

    def start(self) -> Self:
        super().start()
        self._ticker.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        super().stop()

    # ------------------------------------------------------------------------------------------- controls

    def fail_next_submit(
        self, status: int, times: int = 1, body: Any = None, retry_after: float | str | None = None
    ) -> None:
        """The next `times` generation POSTs (image or task) answer `status` with `body` (default: ModelArk shape)."""
        if body is None:
            body = error_body(_DEFAULT_FAULT_CODES.get(status, "InternalServiceError"), f"Injected HTTP {status}.")
        with self._lock:
            self._submit_faults.append({"status": status, "times": times, "body": body, "retry_after": retry_after})

    def moderate_next(self, code: str | None = None, *, per_image: bool = False) -> None:
        """The next generation is moderated.

        An image request answers 400 `OutputImageSensitiveContentDetected` (or, with `per_image`, 200 with the
        error in `data[0].error`, as group mode reports it); a video task fails with
        `OutputVideoSensitiveContentDetected`. `code` overrides the code.
        """
        with self._lock:
            self._job_faults.append({"kind": "moderated", "code": code, "per_image": per_image})

    def fail_next_job(self, code: str = "InternalServiceError", message: str = "The generation failed.") -> None:
        """The next video task ends `failed` with this error."""
        with self._lock:
            self._job_faults.append({"kind": "failed", "code": code, "message": message, "video_only": True})

    def expire_next(self) -> None:
        """The next video task stays queued and then turns `expired` (its execution_expires_after passed)."""
        with self._lock:
            self._job_faults.append({"kind": "expired", "video_only": True})

    def overdue(self, on: bool = True) -> None:
        """Every API call answers 403 `AccountOverdueError` while on."""
        self._overdue = on

    def hold_queued(self, on: bool = True) -> None:
        """While on, tasks stay `queued` (so a DELETE cancels them); off lets them run."""
        self._hold_queued = on

    def hold_running(self, on: bool = True) -> None:
        """While on, running tasks do not finish (to observe `running`, or a cancel that ModelArk refuses)."""
        self._hold_running = on

    def race_next_delete(self) -> None:
        """The next DELETE finds its queued task just started running (the queued → running race)."""
        self._race_next_delete = True

    def serve_next_output(self, content: bytes, content_type: str) -> None:
        """The next output file stored (a Seedream image or a Seedance video) is these bytes with this Content-Type
        instead (a storage host that serves something else, or labels it wrongly)."""
        with self._lock:
            self._outputs.append((content, content_type))

    def task(self, task_id: str) -> dict[str, Any] | None:
        """The task as GET would answer it, or None."""
        with self._lock:
            task = self.tasks.get(task_id)
            return self._public(task) if task else None

    def requests_for(self, method: str, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]

    # ------------------------------------------------------------------------------------------- faults

    def _take_submit_fault(self) -> dict[str, Any] | None:
        with self._lock:
            if not self._submit_faults:
                return None
            fault = self._submit_faults[0]
            fault["times"] -= 1
            if fault["times"] <= 0:
                self._submit_faults.pop(0)
            return fault

    def _take_job_fault(self, video: bool) -> dict[str, Any] | None:
        with self._lock:
            for i, fault in enumerate(self._job_faults):
                if video or not fault.get("video_only"):
                    return self._job_faults.pop(i)
            return None

    # ------------------------------------------------------------------------------------------- files

    def _store(self, data: bytes, fmt: str) -> str:
        name = f"{secrets.token_hex(12)}{media.extension_for(fmt)}"
        with self._lock:
            self.files[name] = self._outputs.pop(0) if self._outputs else (data, media.content_type_for(fmt))
        # Real outputs are signed TOS URLs; the query is decoration here, but adapters must pass it through.
        return f"{self.origin}/files/{name}?X-Tos-Expires=86400&X-Tos-Signature={secrets.token_hex(8)}"

    def _fetch(self, url: str) -> bytes:
        if url.startswith("data:"):
            try:
                return base64.b64decode(url.split(",", 1)[1], validate=True)
            except (IndexError, binascii.Error) as exc:
                raise _invalid("image data URL is not valid base64.") from exc
        try:
            response = httpx.get(url, timeout=10.0, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise _invalid(f"the image at {url} could not be downloaded.") from exc
        if response.status_code != 200 or len(response.content) > MAX_INPUT_BYTES:
            raise _invalid(f"the image at {url} could not be downloaded (HTTP {response.status_code}).")
        return response.content

    # ------------------------------------------------------------------------------------------- images

    def generate_images(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        model = self._model(body, ("seedream", "seededit"))
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _missing("prompt")
        size = body.get("size")
        if size is None:
            width, height = 2048, 2048
        elif isinstance(size, str) and size in SIZE_PRESETS:
            width, height = SIZE_PRESETS[size]
        elif isinstance(size, str) and re.fullmatch(r"\d{2,5}x\d{2,5}", size):
            width, height = (int(v) for v in size.split("x"))
        else:
            raise _invalid("size must be 1K, 2K, 4K or WIDTHxHEIGHT.")
        response_format = body.get("response_format", "url")
        if response_format not in ("url", "b64_json"):
            raise _invalid("response_format must be url or b64_json.")
        if body.get("sequential_image_generation", "disabled") not in ("auto", "disabled"):
            raise _invalid("sequential_image_generation must be auto or disabled.")
        image = body.get("image")
        images = [image] if isinstance(image, str) else image
        if image is not None and (
            not isinstance(images, list) or not 1 <= len(images) <= 14 or not all(isinstance(i, str) for i in images)
        ):
            raise _invalid("image must be a URL or a list of 1-14 URLs.")
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or not -1 <= seed <= 2147483647):
            raise _invalid("seed must be an integer from -1 to 2147483647.")

        fault = self._take_job_fault(video=False)
        if fault and fault["kind"] == "moderated":
            code = fault["code"] or "OutputImageSensitiveContentDetected"
            message = "The request failed because the output image may contain sensitive information."
            if not fault["per_image"]:
                raise _Refusal(400, code, message)
            return 200, {
                "model": model,
                "created": int(time.time()),
                "data": [{"error": error_body(code, message)["error"]}],
                "usage": {"generated_images": 0, "output_tokens": 0, "total_tokens": 0},
            }

        use_seed = seed if isinstance(seed, int) and seed >= 0 else random.randrange(2**31)
        try:
            if images:
                source = self._fetch(images[0])
                sized = size is not None
                data = media.image_to_image(
                    source,
                    prompt,
                    seed=use_seed,
                    output_format="jpeg",
                    width=width if sized else None,
                    height=height if sized else None,
                )
            else:
                data = media.text_to_image(prompt, seed=use_seed, width=width, height=height, output_format="jpeg")
        except ValueError as exc:
            raise _invalid(f"image: {exc}.") from exc
        with Image.open(io.BytesIO(data)) as img:
            actual = f"{img.width}x{img.height}"
            tokens = img.width * img.height // 256
        if self.image_delay_seconds:
            time.sleep(self.image_delay_seconds)
        item = (
            {"url": self._store(data, "jpeg"), "size": actual}
            if response_format == "url"
            else {"b64_json": base64.b64encode(data).decode(), "size": actual}
        )
        return 200, {
            "model": model,
            "created": int(time.time()),
            "data": [item],
            "usage": {"generated_images": 1, "output_tokens": tokens, "total_tokens": tokens},
        }

    # ------------------------------------------------------------------------------------------- tasks

    @staticmethod
    def _model(body: dict[str, Any], families: tuple[str, ...]) -> str:
        model = body.get("model")
        if model is None or model == "":
            raise _missing("model")
        if not isinstance(model, str):
            raise _invalid("model must be a string.")
        if not (model.startswith("ep-") or any(f in model for f in families)):
            raise _Refusal(
                404,
                "InvalidEndpoint.NotFound",
                f"The model or endpoint {model} does not exist or you do not have access to it.",
            )
        return model

    def create_task(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        model = self._model(body, ("seedance",))
        content = body.get("content")
        if not isinstance(content, list) or not content:
            raise _missing("content")
        texts: list[str] = []
        for item in content:
            if not isinstance(item, dict) or item.get("type") not in ("text", "image_url"):
                raise _invalid("content items must be text or image_url objects.")
            if item["type"] == "text":
                if not isinstance(item.get("text"), str):
                    raise _invalid("content text item needs a text string.")
                texts.append(item["text"])
            else:
                image_url = item.get("image_url")
                if not isinstance(image_url, dict) or not isinstance(image_url.get("url"), str):
                    raise _missing("content.image_url.url")
                if item.get("role", "first_frame") not in ("first_frame", "last_frame", "reference_image"):
                    raise _invalid("content role must be first_frame, last_frame or reference_image.")
        if not texts:
            raise _missing("content (a text item with the prompt)")
        params = self._video_params(model, body, texts, content)
        callback_url = body.get("callback_url")
        if callback_url is not None and not isinstance(callback_url, str):
            raise _invalid("callback_url must be a string.")

        fault = self._take_job_fault(video=True)
        now = time.time()
        task_id = "cgt-" + time.strftime("%Y%m%d%H%M%S", time.gmtime(now)) + "-" + _random_suffix()
        task: dict[str, Any] = {
            "id": task_id,
            "model": model,
            "status": "queued",
            "error": None,
            "created_at": int(now),
            "updated_at": int(now),
            **params["echo"],
            "_content": content,
            "_prompt": " ".join(texts),
            "_params": params,
            "_callback_url": callback_url,
            "_fault": fault,
            "_queued_until": time.monotonic() + self.delay_seconds * 0.3,
            "_expire_at": time.monotonic() + self.delay_seconds,
            "_run_until": None,
            "_rendering": False,
            "_notified": set(),
            "_outbox": [],
            "_delivering": False,
        }
        with self._lock:
            self.tasks[task_id] = task
            self._note(task)
        return 200, {"id": task_id}

    def _video_params(
        self, model: str, body: dict[str, Any], texts: list[str], content: list[dict[str, Any]]
    ) -> dict[str, Any]:
        # Text commands (`--rs 720p --rt 16:9 --dur 5 --seed 1 --cf true`) work too; JSON fields win.
        commands = dict(re.findall(r"--(rs|rt|dur|seed|cf|wm|fps)\s+(\S+)", " ".join(texts)))
        has_image = any(i.get("type") == "image_url" for i in content)
        resolution = body.get("resolution", commands.get("rs") or ("1080p" if "1-0-pro" in model else "720p"))
        ratio = body.get("ratio", commands.get("rt") or ("adaptive" if has_image else "16:9"))
        duration = body.get("duration", int(commands["dur"]) if commands.get("dur", "").lstrip("-").isdigit() else 5)
        seed = body.get("seed", int(commands["seed"]) if commands.get("seed", "").lstrip("-").isdigit() else -1)
        if resolution not in RESOLUTIONS:
            raise _invalid("resolution must be 480p, 720p or 1080p.")
        if ratio not in RATIOS:
            raise _invalid(f"ratio must be one of {', '.join(RATIOS)}.")
        if not isinstance(duration, int) or isinstance(duration, bool) or not (duration == -1 or 2 <= duration <= 12):
            raise _invalid("duration must be -1 or 2-12 seconds.")
        if not isinstance(seed, int) or isinstance(seed, bool) or not -1 <= seed <= 4294967295:
            raise _invalid("seed must be an integer from -1 to 4294967295.")
        for flag in ("watermark", "camera_fixed", "generate_audio", "return_last_frame", "draft"):
            if flag in body and not isinstance(body[flag], bool):
                raise _invalid(f"{flag} must be a boolean.")
        seconds = 5 if duration == -1 else duration
        echo: dict[str, Any] = {
            "seed": seed if seed >= 0 else random.randrange(2**31),
            "resolution": resolution,
            "ratio": ratio,
            "duration": seconds,
            "framespersecond": FPS,
        }
        for key in ("generate_audio", "draft", "service_tier", "execution_expires_after"):
            if key in body:
                echo[key] = body[key]
        return {"echo": echo, "return_last_frame": bool(body.get("return_last_frame"))}

    def delete_task(self, task_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                raise _Refusal(404, "ResourceNotFound", f"The specified task {task_id} is not found.")
            if self._race_next_delete and task["status"] == "queued":
                self._race_next_delete = False
                self._set(task, "running")
                task["_run_until"] = time.monotonic() + self.delay_seconds * 0.7
            status = task["status"]
            if status == "queued":
                self._set(task, "cancelled")
                return 200, {}
            if status in ("running", "cancelled"):
                raise _Refusal(400, "InvalidParameter", f"The task is {status} and cannot be cancelled or deleted.")
            del self.tasks[task_id]  # finished: the record is deleted and can no longer be queried
            return 200, {}

    def list_tasks(self, query: dict[str, list[str]]) -> dict[str, Any]:
        try:
            page_num = int(query.get("page_num", ["1"])[0])
            page_size = int(query.get("page_size", ["10"])[0])
        except ValueError as exc:
            raise _invalid("page_num and page_size must be integers.") from exc
        if not (1 <= page_num <= 500 and 1 <= page_size <= 500):
            raise _invalid("page_num and page_size must be 1-500.")
        statuses = set(query.get("filter.status", []))
        ids = {i for v in query.get("filter.task_ids", []) for i in v.split(",")}
        models = set(query.get("filter.model", []))
        with self._lock:
            items = [
                self._public(t)
                for t in sorted(self.tasks.values(), key=lambda t: t["created_at"], reverse=True)
                if (not statuses or t["status"] in statuses)
                and (not ids or t["id"] in ids)
                and (not models or t["model"] in models)
            ]
        start = (page_num - 1) * page_size
        return {"total": len(items), "items": items[start : start + page_size]}

    def _set(self, task: dict[str, Any], status: str) -> None:
        task["status"] = status
        task["updated_at"] = int(time.time())
        self._note(task)

    def _note(self, task: dict[str, Any]) -> None:
        """Queues the callback of a documented transition as it happens, so none is skipped between two ticks."""
        status = task["status"]
        if task["_callback_url"] and status in self.callback_statuses and status not in task["_notified"]:
            task["_notified"].add(status)
            task["_outbox"].append(self._public(task))

    @staticmethod
    def _public(task: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps({k: v for k, v in task.items() if not k.startswith("_")}))

    # ------------------------------------------------------------------------------------------- lifecycle ticks

    def _tick_loop(self) -> None:
        while not self._stopping.wait(0.02):
            self._advance()

    def _advance(self) -> None:
        now = time.monotonic()
        renders: list[str] = []
        batches: list[tuple[str, str, list[dict[str, Any]]]] = []
        with self._lock:
            for task in self.tasks.values():
                fault = task["_fault"] or {}
                if task["status"] == "queued":
                    if fault.get("kind") == "expired":
                        if now >= task["_expire_at"]:
                            self._set(task, "expired")
                    elif not self._hold_queued and now >= task["_queued_until"]:
                        self._set(task, "running")
                        task["_run_until"] = now + self.delay_seconds * 0.7
                elif (
                    task["status"] == "running"
                    and not task["_rendering"]
                    and not self._hold_running
                    and now >= task["_run_until"]
                ):
                    if fault.get("kind") == "moderated":
                        code = fault["code"] or "OutputVideoSensitiveContentDetected"
                        task["error"] = error_body(
                            code, "The request failed because the output video may contain sensitive information."
                        )["error"]
                        self._set(task, "failed")
                    elif fault.get("kind") == "failed":
                        task["error"] = error_body(fault["code"], fault["message"])["error"]
                        self._set(task, "failed")
                    else:
                        task["_rendering"] = True
                        renders.append(task["id"])
                if task["_outbox"] and not task["_delivering"]:
                    task["_delivering"] = True
                    batches.append((task["id"], task["_callback_url"], task["_outbox"]))
                    task["_outbox"] = []
        for task_id in renders:
            threading.Thread(target=self._render, args=(task_id,), daemon=True).start()
        for task_id, url, bodies in batches:
            threading.Thread(target=self._deliver_in_order, args=(task_id, url, bodies), daemon=True).start()

    def _deliver_in_order(self, task_id: str, url: str, bodies: list[dict[str, Any]]) -> None:
        # One task's callbacks go out one after another, in the order of its transitions.
        try:
            for body in bodies:
                self._deliver(url, body)
        finally:
            with self._lock:
                if task_id in self.tasks:
                    self.tasks[task_id]["_delivering"] = False

    def _render(self, task_id: str) -> None:
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                return
            content, prompt, params = task["_content"], task["_prompt"], task["_params"]
            echo = dict(params["echo"])
        try:
            video, last_frame, width, height = self._make_video(content, prompt, echo)
        except Exception as exc:  # the task fails like a real one would, not the ticker
            with self._lock:
                if task_id in self.tasks:
                    self.tasks[task_id]["error"] = error_body("InvalidParameter", f"Could not generate: {exc}")["error"]
                    self._set(self.tasks[task_id], "failed")
            return
        out: dict[str, Any] = {"video_url": self._store(video, "mp4")}
        if params["return_last_frame"]:
            out["last_frame_url"] = self._store(last_frame, "png")
        tokens = width * height * FPS * int(echo["duration"]) // 1024
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None or task["status"] != "running":
                return
            task["content"] = out
            task["usage"] = {"completion_tokens": tokens, "total_tokens": tokens}
            task["_rendering"] = False
            self._set(task, "succeeded")

    def _make_video(
        self, content: list[dict[str, Any]], prompt: str, echo: dict[str, Any]
    ) -> tuple[bytes, bytes, int, int]:
        images = [i for i in content if i.get("type") == "image_url"]
        first = next((i for i in images if i.get("role") in (None, "first_frame")), None) or next(iter(images), None)
        ratio = None if echo["ratio"] in ("adaptive", "keep_ratio") else echo["ratio"]
        if first is not None:
            source = self._fetch(first["image_url"]["url"])
        else:
            w, h = (int(v) for v in (ratio or "16:9").split(":"))
            source = media.text_to_image(
                prompt, seed=echo["seed"], width=768, height=max(64, round(768 * h / w)), output_format="png"
            )
        video = media.image_to_video(
            source,
            prompt,
            seed=echo["seed"],
            duration_seconds=float(echo["duration"]),
            ratio=ratio,
            max_side=self.video_max_side,
        )
        with av.open(io.BytesIO(video), mode="r") as container:
            last = None
            for frame in container.decode(video=0):
                last = frame
            assert last is not None
            picture = last.to_image()
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        # Billing uses the nominal size (e.g. 720p 16:9 is 1280x720), not the small render.
        short = RESOLUTIONS[echo["resolution"]]
        aspect = picture.width / picture.height
        width, height = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
        return video, buf.getvalue(), width, height

    def _deliver(self, url: str, body: dict[str, Any]) -> None:
        # ModelArk retries succeeded/failed deliveries up to 3 times when not acknowledged within 5 s.
        attempts = 4 if body["status"] in ("succeeded", "failed") else 1
        for attempt in range(1, attempts + 1):
            record: dict[str, Any] = {"url": url, "status": body["status"], "body": body, "attempt": attempt}
            try:
                response = httpx.post(url, json=body, timeout=5.0)
                record["status_code"] = response.status_code
            except httpx.HTTPError as exc:
                record["error"] = exc.__class__.__name__
            with self._lock:
                self.callbacks.append(record)
            if 200 <= record.get("status_code", 0) < 300 or self._stopping.is_set():
                return
            time.sleep(self.callback_retry_seconds)

    # ------------------------------------------------------------------------------------------- HTTP

    def _authorized(self, header: str | None) -> bool:
        return hmac.compare_digest((header or "").encode(), f"Bearer {self.api_key}".encode())

    def _handler_class(self) -> type[QuietHandler]:
        server = self

        class Handler(QuietHandler, keep_alive=True):
            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_bytes(status, data, "application/json", {"X-Request-Id": _request_id(), **(headers or {})})

            def _handle(self) -> None:
                method = self.command
                url = urlsplit(self.path)
                raw = self.read_body()
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = None
                with server._lock:
                    server.requests.append(
                        {
                            "method": method,
                            "path": url.path,
                            "query": url.query,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "json": parsed,
                        }
                    )
                if method == "GET" and url.path.startswith("/files/"):
                    return self._file(url.path.removeprefix("/files/"))
                try:
                    status, answer, headers = self._route(method, url.path, url.query, parsed)
                except _Refusal as refusal:
                    status, answer, headers = refusal.status, refusal.body, {}
                self._send(status, answer, headers)
                return None

            def _route(self, method: str, path: str, query: str, body: Any) -> tuple[int, Any, dict[str, str]]:
                if not path.startswith(API + "/"):
                    raise _Refusal(404, "NotFound", f"{path} is not a ModelArk API path.")
                if not server._authorized(self.headers.get("Authorization")):
                    raise _Refusal(
                        401, "AuthenticationError", "The API key or AK/SK in the request is missing or invalid."
                    )
                if server._overdue:
                    raise _Refusal(
                        403, "AccountOverdueError", "The request failed because your account has an overdue balance."
                    )
                task_id = path.removeprefix(TASKS + "/") if path.startswith(TASKS + "/") else None
                if method == "POST" and path in (IMAGES, TASKS):
                    fault = server._take_submit_fault()
                    if fault is not None:
                        headers = {"Retry-After": str(fault["retry_after"])} if fault["retry_after"] is not None else {}
                        payload = fault["body"]
                        if isinstance(payload, str):
                            payload = payload.encode()
                        return fault["status"], payload, headers
                    if not isinstance(body, dict):
                        raise _invalid("the request body must be a JSON object.")
                    if path == IMAGES:
                        status, answer = server.generate_images(body)
                    else:
                        status, answer = server.create_task(body)
                    return status, answer, {}
                if method == "GET" and path == TASKS:
                    return 200, server.list_tasks(parse_qs(query)), {}
                if task_id and method == "GET":
                    task = server.task(task_id)
                    if task is None:
                        raise _Refusal(404, "ResourceNotFound", f"The specified task {task_id} is not found.")
                    return 200, task, {}
                if task_id and method == "DELETE":
                    status, answer = server.delete_task(task_id)
                    return status, answer, {}
                raise _Refusal(404, "NotFound", f"{method} {path} is not a ModelArk API route.")

            def _file(self, name: str) -> None:
                with server._lock:
                    stored = server.files.get(name)
                if stored is None:
                    return self._send(404, error_body("NoSuchKey", "The specified key does not exist."))
                return self.send_bytes(200, *stored)

            do_GET = do_POST = do_DELETE = _handle  # one router for every method (self.command)

        return Handler


def _random_suffix() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
