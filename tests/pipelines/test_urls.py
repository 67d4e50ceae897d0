"""Credentials in URLs: refused in params, redacted in messages and logs."""

import logging

import pytest

from pipelines.config import parse_params
from pipelines.errors import ConfigError
from pipelines.urls import check_no_credentials, redact, secret_parts


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("s3://AKIAXXXX:wJalrXUtn@bucket/cifar.tgz", ["userinfo"]),
        ("s3://AKIAXXXX@bucket/cifar.tgz", ["userinfo"]),  # an s3 key id alone is still a credential
        ("https://user:pw@host/data.parquet", ["userinfo"]),
        ("https://host/x.tgz?X-Amz-Credential=a&X-Amz-Signature=b&X-Amz-Expires=60",
         ["query parameter 'X-Amz-Credential'", "query parameter 'X-Amz-Signature'"]),
        ("https://acct.blob.core.windows.net/c/x?sv=2022&sig=abc", ["query parameter 'sig'"]),
        ("https://host/x?access_token=t", ["query parameter 'access_token'"]),
        ("https://host/x?api_key=t", ["query parameter 'api_key'"]),
        ("s3://bucket/x.parquet?versionId=3", []),
        ("sftp://alice@host/data", []),  # a user name without a password holds no secret
        ("/data/cifar-10-python.tar.gz", []),
        ("127.0.0.1:6379", []),
    ],
)
def test_secret_parts_are_found(url, parts):
    assert secret_parts(url) == parts


@pytest.mark.parametrize(
    ("section", "key", "url", "hint"),
    [
        ("data", "source", "s3://AKIAXXXX:wJalrXUtn@bucket/cifar.tgz", "AWS_ACCESS_KEY_ID"),
        ("storage", "shared_uri", "gs://bucket/x?token=ya29secret", "GOOGLE_APPLICATION_CREDENTIALS"),
        ("ray", "address", "http://admin:hunter2@head:8265", "RAY_AUTH_TOKEN"),
    ],
)
def test_params_refuse_credentials_naming_the_key_and_where_they_go_without_echoing_them(section, key, url, hint):
    raw = {section: {key: url}, **({"data": {"name": "cifar10", "source": url}} if section == "data" else {})}
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    message = str(caught.value)
    assert message.startswith(f"params: {section}.{key} must not hold credentials")
    assert hint in message and "\n" not in message
    for secret in ("wJalrXUtn", "ya29secret", "hunter2"):
        assert secret not in message


def test_check_passes_clean_urls_through():
    assert check_no_credentials("s3://bucket/x") == "s3://bucket/x"
    assert check_no_credentials(None) is None


def test_redact_masks_userinfo_and_query_values_in_any_text():
    text = "could not read s3://KEY:SECRET@bucket/a.tgz?token=abc&v=2#frag, nor 'https://u:p@h/x' or gs://ok/y"
    assert redact(text) == "could not read s3://***@bucket/a.tgz?token=***&v=***#frag, nor 'https://***@h/x' or gs://ok/y"
    assert redact("plain words and /local/path?x=1") == "plain words and /local/path?x=1"


def test_stage_log_records_are_redacted(caplog):
    from stages.common import redact_log_records

    previous = logging.getLogRecordFactory()
    try:
        redact_log_records()
        redact_log_records()  # idempotent: one wrapper
        with caplog.at_level(logging.WARNING):
            logging.getLogger("some.library").warning("fetching %s", "https://u:secret@host/x?sig=abc")
        assert caplog.records[-1].getMessage() == "fetching https://***@host/x?sig=***"
    finally:
        logging.setLogRecordFactory(previous)
