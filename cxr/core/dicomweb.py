"""A PACS as an archive, over DICOMweb: QIDO-RS to walk it, WADO-RS to fetch one instance.

``dicomweb://HOST:PORT/PATH?Modality=DX&StudyDate=20200101-20201231`` names the archive (plain
HTTP; ``dicomwebs://`` is HTTPS). The scheduler walks it with QIDO-RS only (studies → series →
instances, paged with ``limit``/``offset``, each level sorted by UID so a re-run cuts the same
chunks); it never downloads pixels. Each instance becomes one image URI that the worker fetches
with WADO-RS, like any other object.

**No UID in clear.** An image URI must let the worker retrieve the instance, yet URIs are stored
(``job_images``, the CSV) and logged. So the three UIDs are sealed: encrypted deterministically
with a key derived from the site's salt (``cxr.core.privacy.seal``); the URI reads
``dicomweb://host:port/path/instances/<token>``. Deterministic, so a re-walk gives the same URIs
(resume, idempotent job rows); only a host holding the salt can open it. The join keys in SQL and
the CSV are the salted hashes, as for files.

**Credentials** come only from settings (``CXR_DICOMWEB_USERNAME``/``CXR_DICOMWEB_PASSWORD`` for
basic auth, or ``CXR_DICOMWEB_TOKEN`` for a bearer token), never from the URI (a URI with a
``user:password@`` part is refused, since the source is stored with the job), and never appear
in an error message or a log line.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import urllib3

from cxr.core.errors import ImageError, PermanentError, TransientError
from cxr.core.settings import Settings

SCHEMES = {"dicomweb": "http", "dicomwebs": "https"}
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
#: Filters that would put a patient's identity into the job's source (stored and shown in clear).
_IDENTIFYING = {"patientid", "patientname", "patientbirthdate", "issuerofpatientid", "otherpatientids"}
#: Filters answered per series; everything else goes to the studies query.
_SERIES_LEVEL = {"modality", "bodypartexamined", "seriesdescription", "seriesnumber", "seriesdate"}
_INSTANCE_MARK = "/instances/"
_DICOM_PART = 'multipart/related; type="application/dicom"'


class _NoStudyPaths(logging.Filter):
    """urllib3 logs each request line at DEBUG; a DICOMweb request line carries study, series
    and instance UIDs in clear, so those records are dropped (other requests still log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "/studies/" not in record.getMessage()


logging.getLogger("urllib3.connectionpool").addFilter(_NoStudyPaths())


def is_dicomweb(uri: str) -> bool:
    return isinstance(uri, str) and uri.split("://", 1)[0] in SCHEMES


@dataclass(frozen=True)
class DicomWebSource:
    """A parsed ``dicomweb(s)://`` source: where the server is, and the QIDO filters."""

    scheme: str
    netloc: str
    path: str
    filters: tuple[tuple[str, str], ...]

    @property
    def base_url(self) -> str:
        return f"{SCHEMES[self.scheme]}://{self.netloc}{self.path}"

    @property
    def uri(self) -> str:
        """The normalised source (filters sorted): a job's identity for resume."""
        query = f"?{urlencode(self.filters)}" if self.filters else ""
        return f"{self.scheme}://{self.netloc}{self.path}{query}"

    def instance_uri(self, token: str) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}{_INSTANCE_MARK}{token}"

    def study_filters(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in self.filters:
            if key.lower() == "modality":
                out["ModalitiesInStudy"] = value
            elif key.lower() not in _SERIES_LEVEL:
                out[key] = value
        return out

    def series_filters(self) -> dict[str, str]:
        return {key: value for key, value in self.filters if key.lower() in _SERIES_LEVEL}


def parse_source(uri: str) -> DicomWebSource:
    """Parse and check a ``dicomweb(s)://HOST[:PORT]/PATH?FILTERS`` source."""
    parts = urlsplit(uri)
    if parts.scheme not in SCHEMES:
        raise PermanentError(f"not a DICOMweb source: {parts.scheme}://")
    if parts.username is not None or parts.password is not None:
        raise PermanentError(
            "a DICOMweb source must not carry credentials (they would be stored with the job): "
            "set CXR_DICOMWEB_USERNAME and CXR_DICOMWEB_PASSWORD, or CXR_DICOMWEB_TOKEN"
        )
    if not parts.hostname:
        raise PermanentError("DICOMweb source has no host (expected dicomweb://HOST:PORT/PATH)")
    try:
        parts.port  # noqa: B018 -- validates the port
    except ValueError as exc:
        raise PermanentError(f"DICOMweb source has an invalid port: {exc}") from exc
    if parts.fragment:
        raise PermanentError("DICOMweb source must not have a #fragment")
    filters = parse_qsl(parts.query, keep_blank_values=False, strict_parsing=False)
    refused = sorted({key for key, _ in filters if key.lower() in _IDENTIFYING})
    if refused:
        raise PermanentError(
            f"DICOMweb filter {', '.join(refused)} would store a patient's identity with the job; "
            "filter by dates, modality or accession range instead"
        )
    path = parts.path.rstrip("/")
    return DicomWebSource(parts.scheme, parts.netloc.lower(), path, tuple(sorted(filters)))


def split_instance_uri(uri: str) -> tuple[DicomWebSource, str]:
    """An image URI made by the walk → (its server, the sealed token)."""
    head, mark, token = uri.rpartition(_INSTANCE_MARK)
    if not mark or not token or "/" in token:
        raise ImageError("not a DICOMweb instance URI made by the walk")
    return parse_source(head), token


class DicomWebClient:
    """QIDO-RS and WADO-RS (and STOW-RS) against one server, with the settings' credentials.

    Connection errors, timeouts and 5xx answers (after urllib3's retries) are ``TransientError``:
    the chunk retries; a 4xx is about the request (``PermanentError``; a missing instance is an
    ``ImageError`` of that image). Messages name the status and the path, never the headers.
    """

    def __init__(self, base_url: str, settings: Settings) -> None:
        self.base_url = base_url.rstrip("/")
        self.page_size = settings.dicomweb_page_size
        retries = urllib3.Retry(
            total=3, backoff_factor=0.5, status_forcelist=(502, 503, 504), allowed_methods=None
        )
        timeout = urllib3.Timeout(
            connect=min(10.0, settings.dicomweb_timeout_s), read=settings.dicomweb_timeout_s
        )
        self._http = urllib3.PoolManager(retries=retries, timeout=timeout)
        self._auth = _auth_header(settings)

    def _request(
        self,
        method: str,
        path: str,
        *,
        accept: str,
        body: bytes | None = None,
        content_type: str | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> Any:
        headers = {"Accept": accept, **self._auth}
        if content_type:
            headers["Content-Type"] = content_type
        url = self.base_url + path
        if fields:
            url += "?" + urlencode(fields)
        try:
            response = self._http.request(method, url, headers=headers, body=body, redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            raise TransientError(
                f"DICOMweb server {self.base_url} unreachable: {type(exc).__name__}"
            ) from None
        if response.status >= 500:
            raise TransientError(f"DICOMweb {method} {path.split('?')[0]} answered HTTP {response.status}")
        if response.status in (401, 403):
            raise PermanentError(
                f"DICOMweb server {self.base_url} refused the request (HTTP {response.status}): check "
                "CXR_DICOMWEB_USERNAME/CXR_DICOMWEB_PASSWORD or CXR_DICOMWEB_TOKEN"
            )
        return response

    def search(self, path: str, filters: Mapping[str, str], uid_tag: str) -> list[str]:
        """The sorted UIDs (``uid_tag``) of every QIDO-RS match under ``path``, page by page."""
        uids: set[str] = set()
        offset = 0
        while True:
            fields = {**filters, "includefield": uid_tag, "limit": str(self.page_size), "offset": str(offset)}
            response = self._request("GET", path, accept="application/dicom+json", fields=fields)
            if response.status == 204:
                break
            if response.status != 200:
                raise PermanentError(f"DICOMweb search {path} answered HTTP {response.status}")
            try:
                page = json.loads(response.data or b"[]")
                found = [str(item[uid_tag]["Value"][0]) for item in page]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise PermanentError(f"DICOMweb search {path} gave an unreadable answer") from exc
            uids.update(found)
            if len(page) < self.page_size:
                break
            offset += len(page)
        return sorted(uids)

    def retrieve_instance(self, study: str, series: str, sop: str) -> bytes:
        """One instance's DICOM file (WADO-RS), in the transfer syntax the server holds."""
        path = f"/studies/{quote(study)}/series/{quote(series)}/instances/{quote(sop)}"
        response = self._request("GET", path, accept=f"{_DICOM_PART}; transfer-syntax=*")
        if response.status == 406:  # a server that cannot send "as stored": take its default
            response = self._request("GET", path, accept=_DICOM_PART)
        if response.status == 404:
            raise ImageError("DICOMweb instance not found (HTTP 404)")
        if response.status != 200:
            raise ImageError(f"DICOMweb retrieve answered HTTP {response.status}")
        parts = multipart_parts(response.headers.get("Content-Type", ""), response.data)
        if len(parts) != 1:
            raise ImageError(f"DICOMweb retrieve returned {len(parts)} parts; expected one instance")
        return parts[0]

    def store(self, instances: list[bytes]) -> Any:
        """STOW-RS: send DICOM files to the server; returns the decoded JSON answer."""
        boundary = f"cxr-{secrets.token_hex(12)}"
        body = (
            b"".join(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
                for data in instances
            )
            + f"--{boundary}--\r\n".encode()
        )
        content_type = f'{_DICOM_PART}; boundary="{boundary}"'
        response = self._request(
            "POST", "/studies", accept="application/dicom+json", body=body, content_type=content_type
        )
        if response.status not in (200, 202):
            raise PermanentError(f"DICOMweb store answered HTTP {response.status}")
        return json.loads(response.data or b"{}")


def _auth_header(settings: Settings) -> dict[str, str]:
    token = settings.dicomweb_token.get_secret_value() if settings.dicomweb_token else ""
    if token:  # an empty value (a Secret left blank) means unset
        return {"Authorization": f"Bearer {token}"}
    if settings.dicomweb_username:
        password = settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else ""
        pair = base64.b64encode(f"{settings.dicomweb_username}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a ``multipart/related`` answer (RFC 2046), headers dropped."""
    boundary = None
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not content_type.lower().startswith("multipart/") or not boundary:
        raise ImageError("DICOMweb retrieve did not answer multipart/related")
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        _headers, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ImageError("DICOMweb multipart part without headers")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts


_clients: dict[tuple[object, ...], DicomWebClient] = {}
_clients_lock = threading.Lock()


def client_for(base_url: str, settings: Settings) -> DicomWebClient:
    """One client (connection pool) per server and settings for the process."""
    key = (
        base_url,
        tuple(_auth_header(settings).items()),
        settings.dicomweb_timeout_s,
        settings.dicomweb_page_size,
    )
    with _clients_lock:
        if key not in _clients:
            _clients[key] = DicomWebClient(base_url, settings)
        return _clients[key]


def walk_instances(source: DicomWebSource, settings: Settings) -> Iterator[str]:
    """Every matching instance as a sealed image URI, studies and series in UID order (QIDO-RS
    only; no pixel is downloaded)."""
    from cxr.core.privacy import seal

    client = client_for(source.base_url, settings)
    series_filters = source.series_filters()
    for study in client.search("/studies", source.study_filters(), STUDY_UID):
        for series in client.search(f"/studies/{quote(study)}/series", series_filters, SERIES_UID):
            path = f"/studies/{quote(study)}/series/{quote(series)}/instances"
            for sop in client.search(path, {}, SOP_UID):
                yield source.instance_uri(seal(f"{study}/{series}/{sop}", settings))


def fetch_instance(uri: str, settings: Settings) -> bytes:
    """The DICOM bytes behind an image URI made by ``walk_instances`` (the worker's fetch)."""
    from cxr.core.privacy import unseal

    source, token = split_instance_uri(uri)
    try:
        study, series, sop = unseal(token, settings).split("/")
    except ValueError as exc:
        raise ImageError(
            "cannot open this DICOMweb instance reference: it was sealed with another salt "
            "(every host needs the same CXR_PATIENT_ID_SALT) or is damaged"
        ) from exc
    return client_for(source.base_url, settings).retrieve_instance(study, series, sop)
