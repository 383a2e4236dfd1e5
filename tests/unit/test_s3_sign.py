"""SigV4 against AWS's published vectors; where credentials come from; no secret in errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from drkit.repository.s3_sign import (
    EMPTY_SHA256,
    Credentials,
    CredentialSource,
    NoCredentials,
    authorization,
    canonical_request,
    uri_encode,
)

# The SigV4 test suite (docs.aws.amazon.com/general/latest/gr/signature-v4-test-suite.html).
SUITE = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SUITE_DATE = "20150830T123600Z"
SUITE_SCOPE = "Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"
# The S3 examples (docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html).
S3 = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
S3_DATE = "20130524T000000Z"
S3_SCOPE = "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"
S3_HOST = "examplebucket.s3.amazonaws.com"

SUITE_CASES = [
    # name, method, params, extra headers, signed headers, signature
    (
        "get-vanilla",
        "GET",
        [],
        {},
        "host;x-amz-date",
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
    ),
    (
        "post-vanilla",
        "POST",
        [],
        {},
        "host;x-amz-date",
        "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
    ),
    (
        "get-vanilla-query-order-key-case",
        "GET",
        [("Param2", "value2"), ("Param1", "value1")],
        {},
        "host;x-amz-date",
        "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
    ),
    (
        "post-header-value-case",
        "POST",
        [],
        {"My-Header1": "VALUE1"},
        "host;my-header1;x-amz-date",
        "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d",
    ),
    (
        "get-header-value-trim",
        "GET",
        [],
        {"My-Header1": " value1", "My-Header2": '"a   b   c"'},
        "host;my-header1;my-header2;x-amz-date",
        "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
    ),
]


@pytest.mark.parametrize(
    ("name", "method", "params", "extra", "signed", "signature"),
    SUITE_CASES,
    ids=[c[0] for c in SUITE_CASES],
)
def test_sigv4_test_suite(
    name: str,
    method: str,
    params: list[tuple[str, str]],
    extra: dict[str, str],
    signed: str,
    signature: str,
) -> None:
    headers = {"Host": "example.amazonaws.com", "X-Amz-Date": SUITE_DATE, **extra}
    got = authorization(
        SUITE,
        method,
        "/",
        params,
        headers,
        EMPTY_SHA256,
        region="us-east-1",
        service="service",
        amz_date=SUITE_DATE,
    )
    assert got == f"AWS4-HMAC-SHA256 {SUITE_SCOPE}, SignedHeaders={signed}, Signature={signature}"


def test_get_vanilla_canonical_request() -> None:
    creq, signed = canonical_request(
        "GET", "/", [], {"Host": "example.amazonaws.com", "X-Amz-Date": SUITE_DATE}, EMPTY_SHA256
    )
    assert creq == (
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
        f"host;x-amz-date\n{EMPTY_SHA256}"
    )
    assert signed == "host;x-amz-date"
    assert hashlib.sha256(creq.encode()).hexdigest() == (
        "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
    )


S3_CASES = [
    (
        "GET object",
        "GET",
        "/test.txt",
        [],
        {"Range": "bytes=0-9"},
        EMPTY_SHA256,
        "host;range;x-amz-content-sha256;x-amz-date",
        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
    ),
    (
        "PUT object",
        "PUT",
        "/" + uri_encode("test$file.text", keep_slash=True),
        [],
        {"Date": "Fri, 24 May 2013 00:00:00 GMT", "x-amz-storage-class": "REDUCED_REDUNDANCY"},
        hashlib.sha256(b"Welcome to Amazon S3.").hexdigest(),
        "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
        "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
    ),
    (
        "GET lifecycle",
        "GET",
        "/",
        [("lifecycle", "")],
        {},
        EMPTY_SHA256,
        "host;x-amz-content-sha256;x-amz-date",
        "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
    ),
    (
        "list objects",
        "GET",
        "/",
        [("max-keys", "2"), ("prefix", "J")],
        {},
        EMPTY_SHA256,
        "host;x-amz-content-sha256;x-amz-date",
        "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
    ),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "params", "extra", "payload", "signed", "signature"),
    S3_CASES,
    ids=[c[0] for c in S3_CASES],
)
def test_s3_examples(
    name: str,
    method: str,
    path: str,
    params: list[tuple[str, str]],
    extra: dict[str, str],
    payload: str,
    signed: str,
    signature: str,
) -> None:
    headers = {"host": S3_HOST, "x-amz-date": S3_DATE, "x-amz-content-sha256": payload, **extra}
    got = authorization(
        S3,
        method,
        path,
        params,
        headers,
        payload,
        region="us-east-1",
        service="s3",
        amz_date=S3_DATE,
    )
    assert got == f"AWS4-HMAC-SHA256 {S3_SCOPE}, SignedHeaders={signed}, Signature={signature}"


def test_uri_encoding() -> None:
    assert uri_encode("a b/c~d+e$é", keep_slash=True) == "a%20b/c~d%2Be%24%C3%A9"
    assert uri_encode("a/b", keep_slash=False) == "a%2Fb"


# -- the credential chain -------------------------------------------------------


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "HOME": str(tmp_path),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        **extra,
    }


def test_policy_keys_win_over_the_environment(tmp_path: Path) -> None:
    env = _env(tmp_path, AWS_ACCESS_KEY_ID="ENVKEY", AWS_SECRET_ACCESS_KEY="envsecret")
    source = CredentialSource(Credentials("POLICYKEY", "policysecret"), env)
    assert source.get() == Credentials("POLICYKEY", "policysecret")
    assert source.origin == "policy"


def test_environment_with_session_token(tmp_path: Path) -> None:
    env = _env(tmp_path, AWS_ACCESS_KEY_ID="K", AWS_SECRET_ACCESS_KEY="S", AWS_SESSION_TOKEN="T")
    assert CredentialSource(None, env).get() == Credentials("K", "S", "T")


def test_profile_from_credentials_then_config_file(tmp_path: Path) -> None:
    (tmp_path / "credentials").write_text(
        "[default]\naws_access_key_id = DEFKEY\naws_secret_access_key = defsecret\n"
    )
    (tmp_path / "config").write_text(
        "[profile backup]\naws_access_key_id = CFGKEY\naws_secret_access_key = cfgsecret\n"
        "aws_session_token = cfgtoken\nregion = eu-central-1\n"
    )
    assert CredentialSource(None, _env(tmp_path)).get() == Credentials("DEFKEY", "defsecret")
    chosen = CredentialSource(None, _env(tmp_path, AWS_PROFILE="backup"))
    assert chosen.get() == Credentials("CFGKEY", "cfgsecret", "cfgtoken")
    assert chosen.origin == "profile backup"


def test_nothing_anywhere_falls_back_to_botocore_and_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(tmp_path)
    for name in list(__import__("os").environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # No instance metadata service may be asked from a test: botocore would try 169.254.169.254.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(NoCredentials, match="AWS_ACCESS_KEY_ID"):
        CredentialSource(None, env).get()


def test_credentials_never_show_the_secret() -> None:
    creds = Credentials("AKIDSHOWN", "TOPSECRETVALUE", "SESSIONTOKENVALUE")
    source = CredentialSource(creds, {})
    source.get()
    for text in (repr(creds), str(creds), repr(source)):
        assert "TOPSECRETVALUE" not in text and "SESSIONTOKENVALUE" not in text
    assert "AKIDSHOWN" in repr(creds)
