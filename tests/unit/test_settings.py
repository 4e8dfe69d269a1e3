import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from cxr.core.settings import Settings, mask_url, scrub_secrets


def test_embedded_defaults_live_under_the_data_dir(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("CXR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    default = Settings()
    assert default.data_dir == tmp_path / "cxr-data"
    assert default.database_url == f"sqlite:///{tmp_path / 'cxr-data' / 'cxr.db'}"
    assert default.storage_url == (tmp_path / "cxr-data" / "objects").as_uri()
    assert default.in_process

    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "elsewhere"))
    moved = Settings()
    assert moved.database_url == f"sqlite:///{tmp_path / 'elsewhere' / 'cxr.db'}"
    assert moved.storage_url == (tmp_path / "elsewhere" / "objects").as_uri()
    assert moved.model_cache_dir == tmp_path / "elsewhere" / "model-cache"


def test_production_values_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CXR_DATABASE_URL", "postgresql+psycopg2://cxr:pw@db/cxr")
    monkeypatch.setenv("CXR_STORAGE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("CXR_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("CXR_BROKER_URL", "redis://redis:6379/0")
    settings = Settings()
    assert settings.storage_url == "s3://bucket/prefix"
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert not settings.in_process


def test_storage_url_scheme_is_checked(monkeypatch):
    monkeypatch.setenv("CXR_STORAGE_URL", "ftp://nope")
    with pytest.raises(ValidationError, match="file:///path or s3://bucket/prefix"):
        Settings()


def test_masking():
    assert mask_url("postgresql://user:hunter2@db:5432/x") == "postgresql://user:***@db:5432/x"
    assert mask_url("redis://redis:6379/0") == "redis://redis:6379/0"
    assert "hunter2" not in scrub_secrets("could not connect to redis://:hunter2@host:6379/0")


def test_cxr_config_masks_every_secret(tmp_path):
    secrets = {
        "CXR_S3_SECRET_ACCESS_KEY": "s3-secret-value-123",
        "CXR_S3_ACCESS_KEY_ID": "access-key-id-456",
        "CXR_PATIENT_ID_SALT": "salt-value-789",
        "CXR_DATABASE_URL": "postgresql+psycopg2://cxr:db-password-000@db/cxr",
        "CXR_BROKER_URL": "redis://:broker-password-111@redis:6379/0",
    }
    env = {**os.environ, "CXR_DATA_DIR": str(tmp_path), **secrets}
    cxr = Path(sys.executable).with_name("cxr")
    for args in ([str(cxr), "config"], [str(cxr), "config", "--json"]):
        result = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
        for secret in ("s3-secret-value-123", "access-key-id-456", "salt-value-789",
                       "db-password-000", "broker-password-111"):  # fmt: skip
            assert secret not in result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["s3_secret_access_key"] == "***"
    assert data["database_url"] == "postgresql+psycopg2://cxr:***@db/cxr"
    assert data["data_dir"] == str(tmp_path)


def test_batch_size_and_decode_threads_default_to_where_the_model_runs(monkeypatch):
    for name in list(os.environ):
        if name.startswith("CXR_"):
            monkeypatch.delenv(name)
    auto = Settings()
    assert (auto.inference_batch_size, auto.decode_threads) == (0, 0)
    assert auto.batch_size_for(model_on_cpu=True) == 8 and auto.batch_size_for(model_on_cpu=False) == 32
    assert auto.decode_threads_for(model_on_cpu=True, cores=16) == 2
    assert auto.decode_threads_for(model_on_cpu=False, cores=16) == 16
    assert auto.decode_threads_for(model_on_cpu=False, cores=1) == 2

    monkeypatch.setenv("CXR_INFERENCE_BATCH_SIZE", "16")
    monkeypatch.setenv("CXR_DECODE_THREADS", "3")
    pinned = Settings()
    assert pinned.batch_size_for(model_on_cpu=False) == pinned.batch_size_for(model_on_cpu=True) == 16
    assert pinned.decode_threads_for(model_on_cpu=False, cores=16) == 3
    with pytest.raises(ValidationError):
        Settings(inference_batch_size=-1)
