#!/usr/bin/env bash
# The contract guarded: `buf breaking` (the FILE rules of protos/buf.yaml) between protos/ as
# it is now and protos/ of the baseline, the last release (docs/versioning.md):
#   - the latest tag matching v* that HEAD contains;
#   - while there is none, the first commit of protos/ (the contract as first published),
#     so the check always runs;
#   - or the ref in $BUF_AGAINST (e.g. BUF_AGAINST=main, to check a branch against main).
# Usage: scripts/check_breaking.sh [REPO]   (default: this repository)
set -euo pipefail
repo=${1:-"$(dirname "$0")/.."}
cd "$repo"

if ! git rev-parse --git-dir >/dev/null 2>&1; then
  echo "check_breaking: FAILED: not a git checkout; the baseline is a git tag or commit" >&2
  exit 1
fi
if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  git fetch --quiet --unshallow --tags 2>/dev/null || true
fi
if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  # A shallow clone would make HEAD its own baseline: a check that always passes.
  echo "check_breaking: FAILED: shallow clone; run 'git fetch --unshallow --tags' first" >&2
  exit 1
fi

if [ -n "${BUF_AGAINST:-}" ]; then
  ref=$BUF_AGAINST
  what="$BUF_AGAINST (BUF_AGAINST)"
elif ref=$(git describe --tags --abbrev=0 --match 'v*' HEAD 2>/dev/null); then
  what="release tag $ref"
else
  ref=$(git log --reverse --format=%H -- protos | awk 'NR == 1')
  if [ -z "$ref" ]; then
    echo "check_breaking: FAILED: no commit holds protos/" >&2
    exit 1
  fi
  what="the first commit of protos/ (${ref:0:12}; no v* tag yet)"
fi

baseline=$(mktemp -d)
trap 'rm -rf "$baseline"' EXIT
git archive --format=tar "$ref" protos | tar -x -C "$baseline"
echo "check_breaking: protos/ against $what"
(cd protos && npx --yes @bufbuild/buf@1.75.0 breaking --against "$baseline/protos")
