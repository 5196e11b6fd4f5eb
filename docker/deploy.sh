#!/usr/bin/env bash
# Deploys the compose stack to one Docker host over SSH (.github/workflows/deploy.yaml runs it).
#
#   docker/deploy.sh up TAG           copy docker-compose.yaml and the files it mounts to the host, pull the
#                                     images tagged TAG (the git commit that build.yaml pushed), start the
#                                     stack and wait for its healthchecks; TAG is appended to <path>/releases
#   docker/deploy.sh rollback [TAG]   the same for TAG, by default the release before the current one; the
#                                     releases after it are dropped from <path>/releases (a second rollback
#                                     goes further back)
#   docker/deploy.sh run CMD...       CMD in a one-off platform container on the host, with the stack's
#                                     settings, e.g. `rtml rollback --approver NAME --reason TEXT`
#   docker/deploy.sh releases | current | previous
#
# Environment: DEPLOY_HOST (required), DEPLOY_USER, DEPLOY_PATH (default /opt/rtml), DEPLOY_SSH_KEY and
# DEPLOY_KNOWN_HOSTS (else ssh's own configuration), IMAGE_PREFIX (e.g. ghcr.io/OWNER: the images are
# <prefix>/rtml-platform and <prefix>/rtml-scorer; required by up and rollback), REGISTRY_USER and
# REGISTRY_TOKEN (docker login before pulling; optional).
# The host keeps its own .env (the secrets, made from .env.example); this script never copies or reads it.
# On the host: docker compose --env-file .env --env-file release.env ps|logs|...
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,13p' "$0" >&2
  exit 2
}

host=${DEPLOY_HOST:?DEPLOY_HOST is not set}
path=${DEPLOY_PATH:-/opt/rtml}
target=${DEPLOY_USER:+$DEPLOY_USER@}$host
compose='docker compose --env-file .env --env-file release.env'

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
ssh_options=(-o BatchMode=yes -o ConnectTimeout=20)
if [[ -n ${DEPLOY_SSH_KEY:-} ]]; then
  printf '%s\n' "$DEPLOY_SSH_KEY" >"$scratch/key"
  chmod 600 "$scratch/key"
  ssh_options+=(-i "$scratch/key" -o IdentitiesOnly=yes)
fi
if [[ -n ${DEPLOY_KNOWN_HOSTS:-} ]]; then
  printf '%s\n' "$DEPLOY_KNOWN_HOSTS" >"$scratch/known_hosts"
  ssh_options+=(-o "UserKnownHostsFile=$scratch/known_hosts" -o StrictHostKeyChecking=yes)
fi

q() { printf '%q ' "$@"; }                                  # quote words for the host's shell
# shellcheck disable=SC2029  # expanding on this side is the point: the words were quoted with q
remote() { ssh "${ssh_options[@]}" "$target" "$1"; }       # one command line on the host
in_path() { remote "cd $(q "$path") && $1"; }              # ... in the deploy folder

releases() { in_path 'cat releases 2>/dev/null || true'; }

copy_files() {
  remote "mkdir -p $(q "$path")"
  tar -czf - docker-compose.yaml .env.example docker monitoring | in_path 'tar -xzf -'
  if ! in_path 'test -f .env'; then
    echo "deploy: $path/.env is missing on $host: create it from .env.example with the real secrets" >&2
    exit 1
  fi
}

start() {
  local tag=$1 prefix=${IMAGE_PREFIX:?IMAGE_PREFIX is not set (e.g. ghcr.io/OWNER)}
  if [[ -n ${REGISTRY_TOKEN:-} ]]; then
    printf '%s\n' "$REGISTRY_TOKEN" |
      remote "docker login $(q "${prefix%%/*}") -u $(q "${REGISTRY_USER:?REGISTRY_USER is not set}") --password-stdin"
  fi
  printf 'IMAGE_TAG=%s\nPLATFORM_IMAGE=%s\nSCORER_IMAGE=%s\n' "$tag" "$prefix/rtml-platform" "$prefix/rtml-scorer" |
    in_path 'cat >release.env'
  in_path "$compose pull --quiet && $compose up --detach --no-build --remove-orphans --wait --wait-timeout 900"
}

command=${1:-}
[[ $# -gt 0 ]] && shift
case $command in
  up)
    [[ $# -eq 1 && -n $1 ]] || usage
    copy_files
    start "$1"
    in_path "echo $(q "$1") >>releases"
    echo "deployed $1 to $host"
    ;;
  rollback)
    [[ $# -le 1 ]] || usage
    mapfile -t history < <(releases)
    if [[ -n ${1:-} ]]; then
      tag=$1
    elif [[ ${#history[@]} -ge 2 ]]; then
      tag=${history[-2]}
    else
      echo "deploy: no release before the current one on $host; name the tag to restore" >&2
      exit 1
    fi
    kept=()
    for ((i = ${#history[@]} - 1; i >= 0; i--)); do
      if [[ ${history[i]} == "$tag" ]]; then
        kept=("${history[@]:0:i+1}")
        break
      fi
    done
    [[ ${#kept[@]} -gt 0 ]] || kept=("${history[@]}" "$tag")
    copy_files
    start "$tag"
    printf '%s\n' "${kept[@]}" | in_path 'cat >releases'
    echo "rolled back $host to $tag"
    ;;
  run)
    [[ $# -gt 0 ]] || usage
    in_path "$compose run --rm --no-deps -T dagster-code $(q "$@")"
    ;;
  releases) releases ;;
  current) releases | tail -n 1 ;;
  previous)
    mapfile -t history < <(releases)
    if [[ ${#history[@]} -lt 2 ]]; then
      echo "deploy: no release before the current one on $host" >&2
      exit 1
    fi
    echo "${history[-2]}"
    ;;
  *) usage ;;
esac
