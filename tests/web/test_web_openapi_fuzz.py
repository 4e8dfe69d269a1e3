"""Schemathesis against ``cxr web``'s own OpenAPI schema: generated requests (valid and not) to
every documented route but job submission, every answer checked against the schema (status
codes, bodies, content types, auth), run through its command line (its pytest plugin does not
load under this pytest)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.web.conftest import TOKEN

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ST = Path(sys.executable).with_name("st")


def test_every_answer_matches_the_schema(web_server, tmp_path):
    if not ST.exists():
        pytest.skip("schemathesis is not installed (pip install -e .[dev])")
    document = httpx.get(
        f"{web_server.url}/api/v1/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ).json()
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(document))
    result = subprocess.run(
        [
            str(ST), "run", str(schema), "--url", web_server.url,
            "-H", f"Authorization: Bearer {TOKEN}",
            # Submitting a job walks whatever folder a generated string names: not fuzzed (its
            # schema and answers are checked by test_web_api).
            "--exclude-operation-id", "submit_job_api_v1_jobs_post",
            # A schema-valid upload that is not a film (random bytes, an empty file) is refused
            # by design (422 with the reason); Starlette answers OPTIONS with one route's methods.
            "--exclude-checks", "positive_data_acceptance,allow_header_conformance",
            "--max-examples", "15", "--seed", "1", "--no-color",
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Tested: 4" in result.stdout, result.stdout[-2000:]
