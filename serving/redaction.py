"""What of a source uri, or of an error message, may leave the server (pure functions).

A corpus manifest may carry credentials in its uris -- ``https://user:secret@host/...`` or a
signed URL (``X-Goog-Signature=...``, ``X-Amz-Signature=...``, an Azure SAS ``sig=...``) -- and
a local corpus's uris are paths on the server's disk. Neither belongs in an answer to the
public: ``public_uri`` strips userinfo and credential parameters from every URL, always, and
shows a local path as its file name unless the operator chose to expose uris
(``imgsearch serve --expose-uris``, for a trusted network or the library client that opens the
files). ``public_text`` does the same to the uris and paths inside a message (an error detail,
a reload refusal) and drops heap addresses (``<... object at 0x7f...>``). The server's log keeps
everything: it is the operator's.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import PurePosixPath

# Query parameters that authorise a request rather than name a resource (compared lower-case):
# Google Cloud Storage and S3 signed URLs (V2 and V4), Azure SAS, and common token parameters.
_CREDENTIAL_PREFIXES = ("x-goog-", "x-amz-")
_CREDENTIAL_NAMES = frozenset(
    {
        "signature", "googleaccessid", "awsaccesskeyid", "expires", "policy", "key-pair-id",
        "sig", "se", "sp", "sv", "sr", "st", "spr", "skoid", "sktid", "skt", "ske", "sks",
        "skv", "token", "access_token", "id_token", "auth", "api_key", "apikey", "key",
        "password", "secret", "credential", "credentials",
    }
)  # fmt: skip
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]]+")
# An absolute POSIX path: a "/" not inside a word, a URL or a relative path, then segments.
_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s/'\"<>():]+/)+[^\s/'\"<>():]*")
_HEAP_ADDRESS = re.compile(r"\s+at 0x[0-9a-fA-F]+")


def _is_credential(name: str) -> bool:
    lowered = name.lower()
    return lowered in _CREDENTIAL_NAMES or lowered.startswith(_CREDENTIAL_PREFIXES)


def strip_credentials(url: str) -> str:
    """``url`` without userinfo and without credential query parameters (others kept, in order)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # an unparseable URL: say nothing of it rather than leak it
        return "(unparseable uri)"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if parts.query:
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        query = urllib.parse.urlencode([(k, v) for k, v in pairs if not _is_credential(k)])
    else:
        query = ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _is_url(uri: str) -> bool:
    scheme, sep, _ = uri.partition("://")
    return (
        bool(sep)
        and scheme.isascii()
        and scheme.replace("+", "").replace(".", "").replace("-", "").isalnum()
    )


def public_uri(uri: str | None, expose: bool = False) -> str | None:
    """``uri`` as an answer may show it: a URL without credentials; a local path (or
    ``file://`` URL) as its file name unless ``expose``."""
    if uri is None:
        return None
    if _is_url(uri) and not uri.lower().startswith("file://"):
        return strip_credentials(uri)
    if expose:
        return strip_credentials(uri) if _is_url(uri) else uri
    path = urllib.parse.urlsplit(uri).path if _is_url(uri) else uri
    return PurePosixPath(path).name or path


def public_text(text: str, expose: bool = False) -> str:
    """``text`` with every URL and absolute path in it made ``public_uri`` and heap addresses
    dropped."""
    text = _HEAP_ADDRESS.sub("", text)
    text = _URL.sub(lambda m: public_uri(m.group(0), expose) or "", text)
    if not expose:
        text = _PATH.sub(lambda m: PurePosixPath(m.group(0)).name or "/", text)
    return text
