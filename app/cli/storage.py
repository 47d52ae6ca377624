"""Where the Ray job reads and writes: local paths, or S3-compatible storage (`s3://bucket/prefix`, the `ray` extra).

Remote locations are universal-pathlib `UPath`s over fsspec/s3fs, so folder pairing, the manifest and resume use
the same pathlib calls as on local disk. Credentials come from the usual AWS environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, or a profile) of every node; the endpoint and region from
AWS_ENDPOINT_URL / AWS_REGION or the --s3-endpoint / --s3-region flags, which travel with each path.
"""

import os
import uuid
from pathlib import Path

from .files import PARTIAL_SUFFIX, CliError

REMOTE_SCHEMES = ("s3",)
# One PUT holds up to 5 GB and is atomic; s3fs switches to a multipart upload above 2 × chunksize, so the
# chunksize is set so that every output goes up in one PUT, which a conditional create can guard.
_SINGLE_PUT_CHUNKSIZE = 5 * 2**30 // 2


def is_remote(text: str | os.PathLike) -> bool:
    return "://" in str(text)


def location(text: str, storage_options: dict | None = None):
    """A local `Path`, or a `UPath` for s3://bucket/prefix that carries the endpoint and region."""
    if not is_remote(text):
        return Path(text)
    scheme = str(text).split("://", 1)[0].lower()
    if scheme not in REMOTE_SCHEMES:
        raise CliError(f"{text!r}: only local paths and s3:// locations are supported")
    try:
        from upath import UPath
    except ImportError:
        raise CliError(f"{text!r}: remote storage needs the ray extra: pip install 's2crnet[ray]'") from None
    return UPath(text, **(storage_options or {}))


def s3_options(endpoint: str | None, region: str | None) -> dict:
    """s3fs's options from the flags; what is not given comes from the AWS environment of each node."""
    options: dict = {}
    if endpoint:
        options["endpoint_url"] = endpoint
    if region:
        options["client_kwargs"] = {"region_name": region}
    return options


def write_whole(path, data: bytes, overwrite: bool) -> bool:
    """Write `data` at `path` whole or not at all → False when it exists and `overwrite` is off (left as it is).

    Local: a hidden temporary file in the same folder, then a hard link (which refuses to replace a file) or,
    with `overwrite`, a rename; each attempt has its own temporary name, so a retried task never meets a half
    file. S3: one PUT (atomic), conditional on the key being absent (If-None-Match) unless `overwrite`.
    """
    if isinstance(path, Path):
        return _write_local(path, data, overwrite)
    try:
        path.fs.pipe_file(path.path, data, mode="overwrite" if overwrite else "create",
                          chunksize=_SINGLE_PUT_CHUNKSIZE)
    except FileExistsError:
        return False
    return True


def _write_local(path: Path, data: bytes, overwrite: bool) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")
    try:
        partial.write_bytes(data)
        if overwrite:
            os.replace(partial, path)
            return True
        try:
            os.link(partial, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: check, then rename (a narrow race, not a half file)
            if path.exists():
                return False
            os.replace(partial, path)
        return True
    finally:
        partial.unlink(missing_ok=True)
