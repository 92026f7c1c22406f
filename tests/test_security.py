"""No secrets in the repository; credentials stay out of it."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import PROJECT_ROOT

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(
        r"(?i)aws_secret_access_key[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}\b"
    ),
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"),
}


def find_secrets(text: str) -> list[str]:
    return [name for name, pattern in SECRET_PATTERNS.items() if pattern.search(text)]


def _tracked_files() -> list[str]:
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True
    ).stdout
    return [name for name in listing.decode().split("\0") if name]


def test_scanner_finds_each_kind_of_secret():
    # Built at run time, so that this file itself holds none of them.
    key_id = "AKIA" + "QWERTYUIOPASDFGH"
    secret = "aws_secret_access_key = " + "a1B2" * 10
    private_key = "-----BEGIN " + "RSA PRIVATE KEY-----"
    assert find_secrets(key_id) == ["AWS access key id"]
    assert find_secrets(secret) == ["AWS secret access key"]
    assert find_secrets(private_key) == ["private key"]
    assert find_secrets("aws_access_key_id: ${oc.env:AWS_ACCESS_KEY_ID}") == []


def test_no_tracked_file_holds_a_secret():
    files = _tracked_files()
    assert "pyproject.toml" in files
    leaks = {}
    for name in files:
        try:
            text = (PROJECT_ROOT / name).read_text(errors="ignore")
        except (IsADirectoryError, FileNotFoundError):
            continue
        if found := find_secrets(text):
            leaks[name] = found
    assert leaks == {}


def test_local_credentials_are_ignored_by_git():
    for path in (
        "conf/local/credentials.yml",
        "conf/base/credentials.yml",
        "conf/emr/credentials.yml",
    ):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=PROJECT_ROOT, check=False)
        assert ignored.returncode == 0, f"{path} would be committed"
