"""The contract guarded (issue 12): scripts/check_breaking.sh runs `buf breaking` against the
last v* release tag, or the first commit of protos/ while there is none (docs/versioning.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_breaking.sh"
FIELD = "  string jwks_json = 1;\n"  # GetJwksResponse's one field
ADDED = "  string added_later = 2;\n"


class Repo:
    """A throwaway git repository holding a copy of protos/ (the .proto files and buf.yaml)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        self.env.update(
            GIT_AUTHOR_NAME="t",
            GIT_AUTHOR_EMAIL="t@example.invalid",
            GIT_COMMITTER_NAME="t",
            GIT_COMMITTER_EMAIL="t@example.invalid",
        )
        (path / "protos" / "xacthuc" / "v1").mkdir(parents=True)
        shutil.copy(ROOT / "protos" / "buf.yaml", path / "protos" / "buf.yaml")
        for proto in (ROOT / "protos" / "xacthuc" / "v1").glob("*.proto"):
            shutil.copy(proto, path / "protos" / "xacthuc" / "v1" / proto.name)
        self.git("init", "-q", "-b", "main")
        self.commit("protos")

    @property
    def proto(self) -> Path:
        return self.path / "protos" / "xacthuc" / "v1" / "verification.proto"

    def git(self, *args: str) -> None:
        subprocess.run(["git", *args], cwd=self.path, env=self.env, check=True, timeout=60)

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)

    def edit(self, old: str, new: str) -> None:
        text = self.proto.read_text()
        assert old in text
        self.proto.write_text(text.replace(old, new, 1))

    def check(self, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), str(self.path)],
            env=self.env | env,
            capture_output=True,
            text=True,
            timeout=300,
        )


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


def test_without_a_tag_an_addition_passes_and_a_deletion_fails(repo: Repo) -> None:
    """No v* tag: the baseline is the first commit of protos/; a new field is compatible,
    a deleted one is reported and fails the check."""
    repo.edit(FIELD, FIELD + ADDED)
    repo.commit("add a field")
    run = repo.check()
    assert 0 == run.returncode, run.stdout + run.stderr
    assert "the first commit of protos/" in run.stdout

    repo.edit(FIELD, "")
    run = repo.check()  # uncommitted changes are checked too
    assert 0 != run.returncode
    assert "jwks_json" in run.stdout + run.stderr


def test_the_latest_release_tag_is_the_baseline(repo: Repo) -> None:
    """With v1.1.0 tagged after a field was added, deleting that field breaks the contract,
    though the first commit never had it."""
    repo.edit(FIELD, FIELD + ADDED)
    repo.commit("add a field")
    repo.git("tag", "v1.0.0", "HEAD~1")
    repo.git("tag", "v1.1.0")
    repo.git("tag", "other-tag")  # not a release: ignored
    repo.edit(ADDED, "")
    run = repo.check()
    assert 0 != run.returncode
    assert "release tag v1.1.0" in run.stdout
    assert "added_later" in run.stdout + run.stderr
    assert 0 == repo.check(BUF_AGAINST="v1.0.0").returncode  # as v1.0.0 had it


def test_a_shallow_clone_fails_rather_than_passing_against_itself(
    repo: Repo, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With history cut and no origin to deepen it from, the baseline would be HEAD itself:
    the check refuses to run."""
    clone = _shallow_clone(repo, tmp_path_factory)
    subprocess.run(
        ["git", "-C", str(clone), "remote", "remove", "origin"], env=repo.env, check=True
    )
    run = subprocess.run(
        [str(SCRIPT), str(clone)], env=repo.env, capture_output=True, text=True, timeout=300
    )
    assert 1 == run.returncode
    assert "shallow clone" in run.stderr


def test_a_shallow_clone_is_deepened_from_its_origin(
    repo: Repo, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A shallow clone (as CI checks out) fetches its history and checks the real baseline."""
    clone = _shallow_clone(repo, tmp_path_factory)
    run = subprocess.run(
        [str(SCRIPT), str(clone)], env=repo.env, capture_output=True, text=True, timeout=300
    )
    assert (0, "") == (run.returncode, run.stderr)
    assert "against the first commit of protos/" in run.stdout
    deepened = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "--is-shallow-repository"],
        env=repo.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "false" == deepened.stdout.strip()


def _shallow_clone(repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo.commit("second")
    clone = tmp_path_factory.mktemp("shallow") / "clone"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", f"file://{repo.path}", str(clone)],
        env=repo.env,
        check=True,
        timeout=60,
    )
    return clone
