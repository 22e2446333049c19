"""Fake AWS credentials for the tests that run against moto (never a real account)."""

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
CLEARED = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_CONFIG_FILE", "TOPIC_ARN")


def use_fake_aws(monkeypatch, tmp_path) -> None:
    """Point boto3 at fake credentials and no config file, for moto.

    Parameters
    ----------
    monkeypatch : pytest.MonkeyPatch
        Undoes the changes after the test.
    tmp_path : pathlib.Path
        Where empty AWS config and credentials files are placed.
    """
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_ENV.items():
        monkeypatch.setenv(name, value)
    empty = tmp_path / "aws-empty-config"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
