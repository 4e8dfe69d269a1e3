"""``cxr web``'s JSON API and security, against a real uvicorn process: authentication, the
OpenAPI schema (every documented route called and its answer validated), one film scored as the
worker scores it, upload limits, CSRF, and refusing to start without a token."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import httpx
import jsonschema
import numpy as np
import pytest
from PIL import Image

from tests.dicom_files import make_dicom
from tests.web.conftest import MAX_UPLOAD_BYTES, SAMPLE_FILM, TOKEN, XSS_NAME, web_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOCUMENTED = {
    ("post", "/api/v1/predict"),
    ("post", "/api/v1/jobs"),
    ("get", "/api/v1/jobs"),
    ("get", "/api/v1/jobs/{job_id}"),
    ("get", "/api/v1/models"),
}


def film_bytes() -> bytes:
    return SAMPLE_FILM.read_bytes()


def test_everything_but_health_and_login_needs_the_token(web_server):
    with web_server.client(token=None) as anonymous, web_server.client(token="wrong") as wrong:
        for client in (anonymous, wrong):
            for method, path in [
                ("GET", "/api/v1/models"),
                ("GET", "/api/v1/jobs"),
                ("GET", f"/api/v1/jobs/{web_server.job_id}"),
                ("GET", "/api/v1/openapi.json"),
                ("POST", "/api/v1/jobs"),
            ]:
                answer = client.request(method, path, json={"source": "/"} if method == "POST" else None)
                assert answer.status_code == 401, (method, path, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
            answer = client.post("/api/v1/predict", files={"file": ("x.jpg", film_bytes())})
            assert answer.status_code == 401
        # Pages send a browser without a session to the login form, and show nothing else.
        for path in [
            "/",
            "/jobs",
            f"/jobs/{web_server.job_id}",
            f"/jobs/{web_server.job_id}/report",
            f"/jobs/{web_server.job_id}/results.csv",
            "/models",
        ]:
            answer = anonymous.get(path)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=/"), path
    with httpx.Client(base_url=web_server.url, cookies={"cxr_session": "9999999999.abc.0000"}) as forged:
        assert forged.get("/jobs").status_code == 303
    with web_server.client(token=None) as anonymous:
        assert anonymous.post("/login", data={"token": "wrong"}).status_code == 401
        assert anonymous.get("/healthz").status_code == 200


def test_the_openapi_schema_documents_every_route_and_every_answer_matches_it(web_server):
    with web_server.client() as client:
        schema = client.get("/api/v1/openapi.json").json()
        documented = {(m, p) for p, item in schema["paths"].items() for m in item}
        assert documented == DOCUMENTED
        for path_item in schema["paths"].values():
            for operation in path_item.values():
                assert {"HTTPBearer": []} in operation["security"]

        def check(method: str, path: str, answer: httpx.Response) -> dict:
            responses = schema["paths"][path][method]["responses"]
            assert str(answer.status_code) in responses, (path, answer.status_code, answer.text)
            body_schema = responses[str(answer.status_code)]["content"]["application/json"]["schema"]
            jsonschema.validate(answer.json(), {**body_schema, "components": schema["components"]})
            return answer.json()

        job_id = web_server.job_id
        predicted = check(
            "post",
            "/api/v1/predict",
            client.post("/api/v1/predict", files={"file": ("film.jpg", film_bytes())}),
        )
        assert predicted["label"] in predicted["probabilities"]
        check("get", "/api/v1/jobs", client.get("/api/v1/jobs"))
        detail = check("get", "/api/v1/jobs/{job_id}", client.get(f"/api/v1/jobs/{job_id}"))
        assert detail["status"] == "finished" and detail["failed"] == 1
        models = check("get", "/api/v1/models", client.get("/api/v1/models"))
        assert models["models"][0]["aliases"] == {"production": 1}
        resumed = check(
            "post", "/api/v1/jobs", client.post("/api/v1/jobs", json={"source": str(web_server.archive)})
        )
        assert resumed["total"] == 7
        # Refusals are documented too (422: validation) and are one clear sentence.
        bad = check(
            "post", "/api/v1/jobs", client.post("/api/v1/jobs", json={"source": "x", "explain": "nope"})
        )
        assert bad["detail"]
        missing = check("get", "/api/v1/jobs/{job_id}", client.get("/api/v1/jobs/0123456789abcdef"))
        assert "no job" in missing["detail"]
        # The model is resolved first (its contract says at what scale to decode the film).
        unknown = client.post("/api/v1/predict", params={"model": "nosuch"}, files={"file": ("f.jpg", b"x")})
        assert unknown.status_code == 404 and "nosuch" in check("post", "/api/v1/predict", unknown)["detail"]
        not_a_film = client.post("/api/v1/predict", files={"file": ("f.jpg", b"x")})
        assert not_a_film.status_code == 422
        check("post", "/api/v1/predict", not_a_film)
        big = client.post("/api/v1/predict", files={"file": ("f.png", b"\0" * (2 * MAX_UPLOAD_BYTES))})
        assert check("post", "/api/v1/predict", big)["detail"]
        with web_server.client(token=None) as anonymous:
            check("get", "/api/v1/models", anonymous.get("/api/v1/models"))


def test_predict_answers_what_the_worker_stored_for_the_same_film(web_server):
    """One runtime, one preprocessing: the film scored alone through the API gets the very
    probabilities the worker path wrote to the job's CSV."""
    with web_server.client() as client:
        answer = client.post(
            "/api/v1/predict",
            params={"model": "cxr@production", "include_overlay": "true"},
            files={"file": ("film.jpg", film_bytes(), "image/jpeg")},
        )
        assert answer.status_code == 200, answer.text
        result = answer.json()
        rows = list(csv.DictReader(io.StringIO(_csv(web_server))))
    row = next(r for r in rows if r["uri"].endswith(SAMPLE_FILM.name))
    assert result["model"] == "cxr@1" and result["label"] == row["label"]
    for name, p in result["probabilities"].items():
        assert p == pytest.approx(float(row[f"p_{name}"]), abs=1e-5)
    assert result["shift"]["percentile"] == pytest.approx(float(row["shift_percentile"]), abs=0.01)
    assert set(result["operating_points"]) == {"covid"}
    assert result["operating_points"]["covid"]["positive"] == (row["covid_at_operating_point"] == "yes")
    assert result["explanation"]["overlay_png_base64"]
    assert "Research use only" in result["intended_use"]


def _film_pixels() -> np.ndarray:
    return np.asarray(Image.open(SAMPLE_FILM).convert("L"), dtype=np.uint16) * 257


def test_a_dicom_film_is_scored(web_server):
    with web_server.client() as client:
        answer = client.post("/api/v1/predict", files={"file": ("film.dcm", make_dicom(_film_pixels()))})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["image"] == {"format": "DICOM", "width": 384, "height": 384}
    assert result["label"] in result["probabilities"]


def _csv(web_server) -> str:
    with web_server.client(token=None) as browser:
        browser.post("/login", data={"token": TOKEN})
        return browser.get(f"/jobs/{web_server.job_id}/results.csv").text


def test_uploads_over_the_limits_are_refused_clearly(web_server):
    with web_server.client() as client:
        big = client.post("/api/v1/predict", files={"file": ("big.png", b"\0" * (MAX_UPLOAD_BYTES + 10))})
        assert big.status_code == 413 and "byte limit" in big.json()["detail"]
        huge = client.post("/api/v1/predict", files={"file": ("huge.png", b"\0" * (3 * MAX_UPLOAD_BYTES))})
        assert huge.status_code == 413 and f"{MAX_UPLOAD_BYTES}-byte limit" in huge.json()["detail"]
        # Small in bytes, too many pixels: refused from the header, before decoding.
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((1500, 1500), np.uint8)).save(buffer, format="PNG")
        assert len(buffer.getvalue()) < MAX_UPLOAD_BYTES
        wide = client.post("/api/v1/predict", files={"file": ("wide.png", buffer.getvalue())})
        assert wide.status_code == 422 and "pixel" in wide.json()["detail"]
        junk = client.post("/api/v1/predict", files={"file": ("notes.png", b"hello, not a film")})
        assert junk.status_code == 422 and "not a recognised image" in junk.json()["detail"]
        lateral_dicom = make_dicom(_film_pixels(), view="LL")
        lateral = client.post("/api/v1/predict", files={"file": ("lat.dcm", lateral_dicom)})
        assert lateral.status_code == 422 and "not frontal" in lateral.json()["detail"]
        chunked = client.post(
            "/api/v1/predict",
            content=iter([b"--x\r\n"]),
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        )
        assert chunked.status_code == 411
        unknown = client.post(
            "/api/v1/predict",
            params={"model": "nosuch@production"},
            files={"file": ("film.jpg", film_bytes())},
        )
        assert unknown.status_code == 404


def test_forms_refuse_cross_site_posts_and_a_missing_csrf_token(web_server):
    with web_server.client(token=None) as browser:
        login = browser.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
        assert login.status_code == 303 and login.headers["location"] == "/"  # no open redirect
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        page = browser.get("/").text
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        files = {"file": ("film.jpg", film_bytes(), "image/jpeg")}
        assert browser.post("/predict", files=files, data={}).status_code == 403
        cross = browser.post(
            "/predict", files=files, data={"csrf": csrf}, headers={"Origin": "https://evil.example"}
        )
        assert cross.status_code == 403
        cross_login = browser.post(
            "/login", data={"token": TOKEN}, headers={"Origin": "https://evil.example"}
        )
        assert cross_login.status_code == 403
        ok = browser.post("/predict", files=files, data={"csrf": csrf}, headers={"Origin": web_server.url})
        assert ok.status_code == 200 and 'id="overlay"' in ok.text
        # Every page says what it is for and forbids inline scripts.
        assert "Research use only" in ok.text
        csp = ok.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert "<script" not in ok.text
        # The archive's file name is text on the job page, never markup.
        job_page = browser.get(f"/jobs/{web_server.job_id}").text
        assert "&lt;img src=x onerror=alert(1)&gt;.png" in job_page and XSS_NAME not in job_page


def test_refuses_to_start_without_a_token(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cxr.cli.main", "web", *args],
            env=web_env(tmp_path / "d"),
            capture_output=True,
            text=True,
            timeout=120,
        )

    plain = run("--port", "1")
    assert plain.returncode == 2 and "CXR_WEB_TOKEN is not set" in plain.stderr
    exposed = run("--generate-token", "--host", "0.0.0.0", "--port", "1")
    assert exposed.returncode == 2 and "loopback addresses only" in exposed.stderr


def test_a_running_job_shows_live_progress(web_server):
    """The list and the job page refresh themselves (a meta refresh: no script) while a job runs."""
    from cxr.core.db.models import Job, JobStatus
    from cxr.core.db.session import session_scope
    from modelstore import open_model_store
    from tests.worker_support import create_job

    resolved = open_model_store(web_server.settings).resolve("cxr@production")
    job_id = create_job(web_server.settings, resolved.to_dict(), total=40)
    try:
        with web_server.client() as client:
            polled = client.get(f"/api/v1/jobs/{job_id}").json()
        with web_server.client(token=None) as browser:
            browser.post("/login", data={"token": TOKEN})
            listing, page = browser.get("/jobs").text, browser.get(f"/jobs/{job_id}").text
    finally:  # the other tests share this server: leave no job running
        with session_scope(web_server.settings) as session:
            session.get(Job, job_id).status = JobStatus.CANCELLED
    assert (polled["status"], polled["done"], polled["progress"]) == ("running", 0, 0.0)
    assert '<meta http-equiv="refresh" content="5">' in listing
    assert '<meta http-equiv="refresh" content="5">' in page and "0 of 40 images" in page
