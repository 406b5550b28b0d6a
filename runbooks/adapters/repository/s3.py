"""A backup repository in an S3 bucket (AWS, MinIO, Ceph RGW): streamed multipart uploads, bounded memory."""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from runbooks.adapters.repository.base import IncompleteUpload, ObjectInfo, Repository
from runbooks.core.errors import (
    AuthenticationFailed,
    BackupNotFound,
    ConfigurationError,
    RepositoryNotFound,
    RepositoryNotWritable,
    RepositoryUnavailable,
    RunbookError,
)

_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                    "ServiceUnavailable", "RequestTimeTooSkewed"}
MiB = 1 << 20
_MAX_PART = 5 * 1024 * MiB


def translate(exc: Exception, *, url: str, action: str) -> RunbookError:
    """Map a botocore error to our hierarchy: transient ones retry, permanent ones say what to fix."""
    if isinstance(exc, RunbookError):
        return exc
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _AUTH_CODES or status == 403:
            return AuthenticationFailed(
                f"S3 refused to {action} in {url}: {code or status}.",
                hint="check repository.access_key_id / secret_access_key and the bucket policy.",
            )
        if code in {"NoSuchBucket"}:
            return RepositoryNotFound(
                f"S3 bucket of {url} does not exist.", hint="create the bucket or fix repository.url."
            )
        if code in {"NoSuchKey", "404", "NotFound"}:
            return BackupNotFound(f"S3 object missing while trying to {action} in {url}.")
        if code in _TRANSIENT_CODES or status >= 500:
            return RepositoryUnavailable(
                f"S3 at {url} failed to {action}: {code or status}.", hint="transient; the task retries."
            )
        return RepositoryNotWritable(f"S3 refused to {action} in {url}: {code or status}.",
                                     hint="check the bucket's configuration and permissions.")
    if isinstance(exc, NoCredentialsError):
        return AuthenticationFailed(
            f"no S3 credentials to {action} in {url}.",
            hint="set repository.access_key_id and RUNBOOKS_REPOSITORY__SECRET_ACCESS_KEY (or AWS_* variables).",
        )
    if isinstance(exc, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError | BotoCoreError):
        return RepositoryUnavailable(
            f"S3 endpoint for {url} unreachable while trying to {action} ({type(exc).__name__}).",
            hint="check repository.endpoint_url and the network; transient errors are retried.",
        )
    return RepositoryUnavailable(f"S3 error while trying to {action} in {url}: {type(exc).__name__}.")


class S3Writer:
    """Streams an object as a multipart upload holding at most ``concurrency + 1`` parts in memory.

    Small objects (less than one part) go up as a single PUT. Part size doubles every 1,000 parts so a dump of
    any size stays under S3's 10,000-part limit without buffering more for small ones.
    """

    def __init__(self, repo: S3Repository, key: str) -> None:
        self._repo = repo
        self._key = repo.full_key(key)
        self._part_size = repo.part_size
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._inflight: deque[Future[dict[str, Any]]] = deque()
        self._pool: ThreadPoolExecutor | None = None

    def write(self, data: bytes) -> int:
        self._buffer += data
        while len(self._buffer) >= self._part_size:
            chunk = bytes(self._buffer[: self._part_size])
            del self._buffer[: self._part_size]
            self._submit(chunk)
        return len(data)

    def _submit(self, chunk: bytes) -> None:
        repo = self._repo
        if self._upload_id is None:
            try:
                resp = repo.client.create_multipart_upload(Bucket=repo.bucket, Key=self._key, **repo.sse_args)
            except Exception as exc:
                raise translate(exc, url=repo.url, action="start an upload") from None
            self._upload_id = resp["UploadId"]
            self._pool = ThreadPoolExecutor(repo.max_concurrency, thread_name_prefix="s3-part")
        while len(self._inflight) >= repo.max_concurrency:
            self._parts.append(self._inflight.popleft().result())
        number = len(self._parts) + len(self._inflight) + 1
        if number % 1000 == 0:
            self._part_size = min(self._part_size * 2, _MAX_PART)
        assert self._pool is not None
        self._inflight.append(self._pool.submit(self._upload_part, number, chunk))

    def _upload_part(self, number: int, chunk: bytes) -> dict[str, Any]:
        repo = self._repo
        try:
            resp = repo.client.upload_part(
                Bucket=repo.bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=chunk
            )
        except Exception as exc:
            raise translate(exc, url=repo.url, action=f"upload part {number}") from None
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def close(self) -> None:
        repo = self._repo
        try:
            if self._upload_id is None:
                repo.client.put_object(Bucket=repo.bucket, Key=self._key, Body=bytes(self._buffer), **repo.sse_args)
                return
            if self._buffer:
                self._submit(bytes(self._buffer))
                self._buffer.clear()
            while self._inflight:
                self._parts.append(self._inflight.popleft().result())
            self._parts.sort(key=lambda p: p["PartNumber"])
            repo.client.complete_multipart_upload(
                Bucket=repo.bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
            )
        except RunbookError:
            self.abort()
            raise
        except Exception as exc:
            self.abort()
            raise translate(exc, url=repo.url, action="complete an upload") from None
        finally:
            if self._pool:
                self._pool.shutdown(wait=True)

    def abort(self) -> None:
        for future in self._inflight:
            future.cancel()
        self._inflight.clear()
        if self._pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._upload_id is not None:
            try:
                self._repo.client.abort_multipart_upload(
                    Bucket=self._repo.bucket, Key=self._key, UploadId=self._upload_id
                )
            except Exception:
                pass  # the next run's leftover sweep aborts it
            self._upload_id = None


class S3Repository(Repository):
    def __init__(
        self,
        *,
        bucket: str,
        prefix: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        part_size_mb: int = 16,
        max_concurrency: int = 2,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.part_size = part_size_mb * MiB
        self.max_concurrency = max_concurrency
        self.sse_args: dict[str, str] = {}
        if sse:
            self.sse_args["ServerSideEncryption"] = sse
            if sse == "aws:kms" and sse_kms_key_id:
                self.sse_args["SSEKMSKeyId"] = sse_kms_key_id
        if client is None:
            if endpoint_url is not None and not endpoint_url.startswith(("http://", "https://")):
                raise ConfigurationError(f"repository.endpoint_url {endpoint_url!r} must be an http(s) URL.")
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region or "us-east-1",
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                config=Config(
                    retries={"mode": "standard", "max_attempts": 5},  # backoff + jitter on 5xx/throttling
                    s3={"addressing_style": "path" if endpoint_url else "auto"},
                    connect_timeout=10,
                    read_timeout=120,
                    max_pool_connections=max(10, max_concurrency * 2),
                ),
            )
        self.client = client

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def check_writable(self) -> None:
        """A write, and a second conditional write of the same key that the server must refuse: backup ids are
        claimed with ``If-None-Match: *``, and a server that ignores it would let two runs share one."""
        key = f".write-probe-{uuid.uuid4().hex}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.full_key(key), Body=b"ok", **self.sse_args)
            try:
                honoured = not self.put_bytes_if_absent(key, b"again")
            finally:
                self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key))
        except RunbookError:
            raise
        except Exception as exc:
            raise translate(exc, url=self.url, action="write") from None
        if not honoured:
            raise RepositoryNotWritable(
                f"S3 at {self.url} ignores conditional writes (If-None-Match: *), so two backup runs could claim "
                "the same backup id.", hint="use a server that supports them (AWS S3, MinIO, Ceph RGW 18+).")

    def open_writer(self, key: str) -> S3Writer:
        return S3Writer(self, key)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))["Body"]
        except Exception as exc:
            raise translate(exc, url=self.url, action=f"read {key!r}") from None
        try:
            yield from body.iter_chunks(chunk_size)
        except Exception as exc:
            raise translate(exc, url=self.url, action=f"read {key!r}") from None
        finally:
            body.close()  # also when the reader stops early (pg_restore --list has what it needs)

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.full_key(key), Body=data, **self.sse_args)
        except Exception as exc:
            raise translate(exc, url=self.url, action=f"write {key!r}") from None

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """A conditional PUT (``If-None-Match: *``): AWS S3, MinIO and Ceph RGW refuse it with 412 when the key
        exists. A server that ignores the header would let two writers win; the catalog reads the claim back."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.full_key(key), Body=data, IfNoneMatch="*",
                                   **self.sse_args)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in {"PreconditionFailed", "ConditionalRequestConflict"} or status in {409, 412}:
                return False
            raise translate(exc, url=self.url, action=f"create {key!r}") from None
        except Exception as exc:
            raise translate(exc, url=self.url, action=f"create {key!r}") from None
        return True

    def replace_bytes_if(self, key: str, data: bytes, *, expect: bytes) -> bool:
        """A PUT conditional on the ETag just read (``If-Match``): a deleted or replaced object is not recreated."""
        try:
            current = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))
            if bytes(current["Body"].read()) != expect:
                return False
            self.client.put_object(Bucket=self.bucket, Key=self.full_key(key), Body=data, IfMatch=current["ETag"],
                                   **self.sse_args)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in {"PreconditionFailed", "NoSuchKey", "404", "ConditionalRequestConflict"} or status in {
                    404, 409, 412}:
                return False
            raise translate(exc, url=self.url, action=f"refresh {key!r}") from None
        except Exception as exc:
            raise translate(exc, url=self.url, action=f"refresh {key!r}") from None
        return True

    def check_exists(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if status == 404 or exc.response.get("Error", {}).get("Code") in {"404", "NoSuchBucket"}:
                raise RepositoryNotFound(f"S3 bucket of {self.url} does not exist.",
                                         hint="create the bucket or fix repository.url.") from None
            raise translate(exc, url=self.url, action="open the bucket") from None
        except Exception as exc:
            raise translate(exc, url=self.url, action="open the bucket") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))["Body"].read())
        except Exception as exc:
            raise translate(exc, url=self.url, action=f"read {key!r}") from None

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise translate(exc, url=self.url, action=f"inspect {key!r}") from None
        except Exception as exc:
            raise translate(exc, url=self.url, action=f"inspect {key!r}") from None

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix)):
                for item in page.get("Contents", []):
                    yield ObjectInfo(self._relative(item["Key"]), int(item["Size"]), item["LastModified"])
        except Exception as exc:
            raise translate(exc, url=self.url, action="list backups") from None

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self.full_key(k)} for k in keys[start : start + 1000]]
            try:
                resp = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as exc:
                raise translate(exc, url=self.url, action="delete objects") from None
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise RepositoryNotWritable(
                    f"S3 refused to delete {first.get('Key')!r} in {self.url}: {first.get('Code')}.",
                    hint="check s3:DeleteObject permission and object-lock retention on the bucket.",
                )

    def list_incomplete_uploads(self, prefix: str) -> list[IncompleteUpload]:
        found: list[IncompleteUpload] = []
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix)):
                for item in page.get("Uploads", []):
                    found.append(IncompleteUpload(self._relative(item["Key"]), item["UploadId"], item["Initiated"]))
        except Exception as exc:
            raise translate(exc, url=self.url, action="list incomplete uploads") from None
        return found

    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.full_key(upload.key), UploadId=upload.upload_id
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return
            raise translate(exc, url=self.url, action="abort an incomplete upload") from None
