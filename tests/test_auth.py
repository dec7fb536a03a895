"""API keys: stored hashed, bound to a platform and role, checked in constant time."""

from __future__ import annotations

from pathlib import Path

import pytest

from xacthuc.domain import errors
from xacthuc.server.auth import ApiKeys, Role, new_key


def test_a_created_key_authenticates_its_platform_and_role(tmp_path: Path) -> None:
    """A key written to the file and loaded back identifies its platform and role."""
    key, entry = new_key("net-1", Role.AUDITOR)
    path = tmp_path / "keys.json"
    ApiKeys.append_to_file(path, entry)
    caller = ApiKeys.load(path).authenticate(f"Bearer {key}")
    assert ("net-1", Role.AUDITOR) == (caller.platform, caller.role)
    assert key.split("_", 2)[2] not in path.read_text()


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", "bearer "])
def test_missing_credentials(header: str | None) -> None:
    """No usable Authorization header is CREDENTIAL_MISSING."""
    with pytest.raises(errors.CredentialMissing):
        ApiKeys().authenticate(header)


def test_wrong_secret_or_unknown_id_is_invalid() -> None:
    """A known id with another secret, or an unknown id, is CREDENTIAL_INVALID."""
    key, entry = new_key("net-1", Role.PLATFORM)
    keys = ApiKeys([entry])
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    for attempt in (forged, "xk_ffffffffffff_" + "A" * 43, "garbage"):
        with pytest.raises(errors.CredentialInvalid):
            keys.authenticate(f"Bearer {attempt}")


@pytest.mark.parametrize("platform", ["", "Upper", "has space", "{tag}", "a" * 64])
def test_platform_ids_are_restricted(platform: str) -> None:
    """Platform ids are short lowercase slugs: they become Redis hash tags."""
    with pytest.raises(ValueError, match="platform id"):
        new_key(platform, Role.PLATFORM)
