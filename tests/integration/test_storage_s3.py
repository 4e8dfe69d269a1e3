import boto3
import botocore.config
import botocore.exceptions
import pytest

from cxr.core.errors import ObjectNotFound, PermanentError
from cxr.core.settings import Settings
from cxr.core.storage import open_store, read_uri
from tests.store_contract import check_store_contract

pytestmark = pytest.mark.integration


def test_s3_store_contract(s3_settings):
    store = open_store(settings=s3_settings)
    check_store_contract(store)
    uri = store.put("round/trip.bin", b"\x00\x01binary")
    assert uri.startswith("s3://")
    assert read_uri(uri, s3_settings) == b"\x00\x01binary"


def test_wrong_secret_is_refused(s3_server, s3_settings):
    good = open_store(settings=s3_settings)
    good.put("private.txt", b"secret")
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key="not-the-secret",
        region_name="us-east-1",
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )
    bucket = s3_settings.storage_url.split("/")[2]
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.get_object(Bucket=bucket, Key="store/private.txt")
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"

    wrong = Settings(**{**s3_settings.model_dump(), "s3_secret_access_key": "not-the-secret"})
    with pytest.raises(PermanentError, match="SignatureDoesNotMatch") as caught:
        open_store(settings=wrong).get("private.txt")
    assert "not-the-secret" not in str(caught.value)
    assert s3_server.secret_key not in str(caught.value)


def test_whole_object_reads_take_the_presigned_path_and_errors_fall_back_to_boto3(s3_settings):
    store = open_store(settings=s3_settings)
    store.put("fast/one.bin", b"\x00payload\xff")
    keys: list[str] = []
    real_get_object = store.client.get_object

    def counting_get_object(**kwargs):
        keys.append(kwargs["Key"])
        return real_get_object(**kwargs)

    store.client.get_object = counting_get_object
    assert store.get("fast/one.bin") == b"\x00payload\xff"
    assert keys == []  # served by the presigned GET, not by get_object
    with pytest.raises(ObjectNotFound):
        store.get("fast/absent.bin")
    assert [key.rsplit("/", 2)[-2:] for key in keys] == [["fast", "absent.bin"]]  # boto3 said why
