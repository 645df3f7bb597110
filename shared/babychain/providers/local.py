"""The adapter for the built-in local provider (`babychain.local.provider_server`), spoken to over HTTP."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from babychain.chains.families import GenerationRequest
from babychain.errors import ProviderError
from babychain.providers.base import JobStatus, Provider, StepJob, Submission
from babychain.providers.http import ProviderHttp

# The local job's error codes that keep a step error code of their own; any other failure is `provider_failed`.
_STEP_CODES = {"content_moderated": "provider_content_moderated", "input_media_refused": "input_media_refused"}
# The request's fields go out as JSON: a shallow dict of them says the same as `asdict`, without its deep copy.
_REQUEST_FIELDS = tuple(f.name for f in fields(GenerationRequest))


class LocalProvider(Provider):
    """The adapter: turns a step's provider-native params into a local job and reads it back."""

    name = "local"
    outputs_on_loopback = True

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        # The runner's own loopback server: no key, no allowlist.
        self.base_url = base_url.rstrip("/")
        self._http = ProviderHttp("Local provider", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._http.json_object(self._http.send(method, self.base_url + path, body=body))

    def submit(self, job: StepJob) -> Submission:
        request = job.model.family(job.mode).describe(job.params)
        answer = self._request(
            "POST",
            "/v1/jobs",
            {
                "model": job.model.id,
                "step_key": job.step_key,
                "idempotency_key": job.idempotency_key,
                "request": {name: getattr(request, name) for name in _REQUEST_FIELDS},
            },
        )
        # A job that is done when submitted (a cache hit, an instant stand-in) hands its output back at once.
        done = [answer["output_url"]] if answer["status"] == "succeeded" and answer.get("output_url") else None
        return Submission(job_id=answer["id"], metadata={"local_status": answer["status"]}, output_urls=done)

    def poll(self, job_id: str, metadata: dict[str, Any]) -> JobStatus:
        answer = self._request("GET", f"/v1/jobs/{job_id}")
        match answer["status"]:
            case "succeeded":
                return JobStatus("succeeded", output_urls=[answer["output_url"]])
            case "failed":
                code = _STEP_CODES.get(str(answer.get("error_code")), "provider_failed")
                return JobStatus("failed", error_code=code, error_message=answer.get("error_message"))
            case "canceled":
                return JobStatus("canceled")
            case _:
                return JobStatus("pending", progress=answer.get("progress"))

    def cancel(self, job_id: str, metadata: dict[str, Any]) -> bool:
        try:
            return self._request("DELETE", f"/v1/jobs/{job_id}").get("status") == "canceled"
        except ProviderError:
            return False
