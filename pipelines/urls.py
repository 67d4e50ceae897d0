"""Credentials never travel inside URLs: refused in params, redacted from every message.

params.yaml values are recorded in ``dvc.lock``, printed in errors and (in job mode) sent with
jobs, so a URL such as ``s3://KEY:SECRET@bucket/data`` or ``https://host/f?token=...`` would leak
its secret to every clone and log. :func:`check_no_credentials` refuses such URLs with a message
naming where the credentials go instead; :func:`redact` masks the userinfo and query values of
any URL in a text, for messages and logs.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

# Where each filesystem looks for credentials (fsspec's s3fs, gcsfs, adlfs; HTTP through netrc).
CREDENTIAL_SOURCES = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS in the environment",
    "az": "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN in the environment",
    "http": "a ~/.netrc entry for the host, or the store's own scheme (s3://, gs://) with its credentials in the environment",
}
_SCHEME_FAMILY = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "abfs": "az", "abfss": "az",
                  "adl": "az", "http": "http", "https": "http"}

# Query parameter names that carry secrets: presigned S3 (X-Amz-Signature, X-Amz-Credential,
# X-Amz-Security-Token), Azure SAS (sig), GCS signed URLs (X-Goog-Signature), and the usual
# token / key / password spellings.
_SECRET_PARAM = re.compile(
    r"(^|[-_.])(sig|signature|token|secret|password|passwd|pwd|credential|credentials|key|apikey|auth|authorization)$"
    r"|token|secret|passw|signature|credential|api[-_]?key|access[-_]?key",
    re.IGNORECASE,
)

_URL = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<rest>[^\s'\"<>`]*)")


def looks_secret(name: str) -> bool:
    """Whether a parameter, option or variable called ``name`` would carry a credential."""
    return bool(_SECRET_PARAM.search(name))


def credential_hint(url: str) -> str:
    """Where the credentials for ``url``'s scheme belong."""
    family = _SCHEME_FAMILY.get(urlsplit(url).scheme.lower())
    if family is None:
        return "the environment of the filesystem's client (see its fsspec documentation)"
    return CREDENTIAL_SOURCES[family]


def secret_parts(url: str) -> list[str]:
    """The parts of ``url`` that carry credentials: ``"userinfo"`` and ``"query parameter <name>"``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        # a bare user name (sftp://alice@host) is no secret; a password or an s3-style key pair is
        if ":" in userinfo or _SCHEME_FAMILY.get(parts.scheme.lower()) in ("s3", "gs", "az"):
            found.append("userinfo")
    found += [f"query parameter {name!r}" for name, _ in parse_qsl(parts.query, keep_blank_values=True)
              if looks_secret(name)]
    return found


def check_no_credentials(url: str | None, hint: str | None = None) -> str | None:
    """Return ``url`` unchanged, or raise ``ValueError`` if it embeds credentials (a pydantic
    validator; the config error adds the key and the redacted value).

    The message never repeats the secret: it names the part and where credentials go instead
    (``hint``, default: where the URL's filesystem looks for them).
    """
    if not url:
        return url
    found = secret_parts(url)
    if found:
        raise ValueError(
            f"must not hold credentials ({', '.join(found)}): they would be recorded in dvc.lock and "
            f"printed in logs; use {hint or credential_hint(url)}"
        )
    return url


def _redact_url(match: re.Match[str]) -> str:
    scheme, rest = match.group("scheme"), match.group("rest")
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    rest = authority + slash + tail
    if "?" in rest:
        head, _, query = rest.partition("?")
        query, hash_mark, fragment = query.partition("#")
        pairs = [pair.split("=", 1)[0] + ("=***" if "=" in pair else "") for pair in query.split("&")]
        rest = f"{head}?{'&'.join(pairs)}{hash_mark}{fragment}"
    return scheme + rest


def redact(text: str) -> str:
    """``text`` with every URL's userinfo and query values replaced by ``***``."""
    return _URL.sub(_redact_url, text)
