#!/usr/bin/env bash
# The commit the deploy workflow deploys for its TAG input, checked before anything is checked out:
#
#   docker/release-tag.sh TAG     prints the full commit SHA; exits 1 with a message otherwise
#
# TAG is a full commit SHA that is on main (build.yaml pushed its images), or a release tag (v1, v1.2,
# v1.2.3: its commit, which must be on main too). Refused: branches, abbreviated SHAs, a commit that is
# not on main (a pull request's, a fork's), and anything else a person can type into the input.
# MAIN_REF (default origin/main) names main; the clone needs its history (checkout fetch-depth 0).
set -euo pipefail
tag=${1:-}
main=${MAIN_REF:-origin/main}

refuse() {
  echo "release-tag: $1" >&2
  exit 1
}

if [[ $tag =~ ^[0-9a-f]{40}$ ]]; then
  commit=$tag
  git cat-file -e "$commit^{commit}" 2>/dev/null || refuse "$tag is not a commit of this repository"
elif [[ $tag =~ ^v[0-9]+(\.[0-9]+){0,2}$ ]]; then
  commit=$(git rev-parse -q --verify "refs/tags/$tag^{commit}") || refuse "no release tag $tag"
else
  refuse "'$tag' is neither a full commit SHA (40 hex digits) nor a release tag (v1, v1.2, v1.2.3)"
fi
git merge-base --is-ancestor "$commit" "$main" || refuse "$tag ($commit) is not on $main: only main is deployed"
echo "$commit"
