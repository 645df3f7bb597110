"""S3 as the durable artifact store: private objects, shared through presigned URLs.

Stored references are `s3://bucket/key`; callers and providers get a presigned GET URL made when the run is read or
the next step is submitted, so nothing public is ever stored and a URL's expiry starts when it is handed out.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

from babychain.artifacts import ArtifactStore


class S3ArtifactStore(ArtifactStore):
    def __init__(self, bucket: str, *, client: Any | None = None, url_ttl_seconds: int = 3600) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.url_ttl_seconds = url_ttl_seconds
        # SigV4: what every region accepts for presigned URLs (up to 7 days).
        self._client = client or boto3.client("s3", config=Config(signature_version="s3v4"))

    def put(self, key: str, content: bytes, content_type: str) -> str:
        self._client.put_object(Bucket=self.bucket, Key=key, Body=content, ContentType=content_type)
        return f"s3://{self.bucket}/{quote(key)}"

    def shareable(self, reference: str) -> str:
        prefix = f"s3://{self.bucket}/"
        if not reference.startswith(prefix):
            return reference
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": unquote(reference.removeprefix(prefix))},
            ExpiresIn=self.url_ttl_seconds,
        )
        return url
