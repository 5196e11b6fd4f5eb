#!/usr/bin/env bash
# Deploys the compose stack to one Docker host over SSH (.github/workflows/deploy.yaml runs it).
#
#   docker/deploy.sh up TAG           copy docker-compose.yaml and the files it mounts to the host, pull the
#                                     images tagged TAG (the git commit that build.yaml pushed), start the
#                                     stack and wait for its healthchecks
#   docker/deploy.sh rollback [TAG]   the same for TAG, by default the newest good release other than the
#                                     current one; the current one is marked rolled-back (a second rollback
#                                     goes further back); refused when there is no such release
#   docker/deploy.sh run CMD...       CMD in a one-off platform container on the host, with the stack's
#                                     settings, e.g. `rtml rollback --approver NAME --reason TEXT`
#   docker/deploy.sh releases | current | previous
#
# <path>/releases records every attempt, one line each: `TAG OUTCOME UTC-TIME`, OUTCOME one of attempted,
# ok, failed, rolled-back. The current release is the last one attempted (what the host runs, maybe half
# started); a good release is one whose newest outcome is ok; `previous` is the newest good release other
# than the current one (a tag deployed twice counts once; a failed deploy is never a rollback target).
#
# Environment: DEPLOY_HOST (required), DEPLOY_USER, DEPLOY_PATH (default /opt/rtml), DEPLOY_SSH_KEY and
# DEPLOY_KNOWN_HOSTS (else ssh's own configuration), IMAGE_PREFIX (e.g. ghcr.io/OWNER: the images are
# <prefix>/rtml-platform and <prefix>/rtml-scorer; required by up and rollback), REGISTRY_USER and
# REGISTRY_TOKEN (docker login before pulling; optional), DEPLOY_DRAIN_SECONDS (how long a deploy waits for
# Dagster runs in progress, default 900), DEPLOY_BACKUPS_KEEP (PostgreSQL backups kept on the host, default 5),
# DEPLOY_RELEASES_KEEP (release folders kept on the host, default 10).
# The host keeps its own .env (the secrets, made from .env.example); this script never copies it, and refuses
# a host whose .env still holds a placeholder (it prints the names only).
# On the host: docker compose --env-file .env --env-file release.env ps|logs|...
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,18p' "$0" >&2
  exit 2
}

host=${DEPLOY_HOST:?DEPLOY_HOST is not set}
path=${DEPLOY_PATH:-/opt/rtml}
target=${DEPLOY_USER:+$DEPLOY_USER@}$host
compose='docker compose --env-file .env --env-file release.env'

scratch=$(mktemp -d)
attempt='' # the release being deployed: recorded as failed if the script stops before it is up
trap on_exit EXIT
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

record() { in_path "echo $(q "$1 $2 $(date -u +%Y-%m-%dT%H:%M:%SZ)") >>releases"; }

# the current release: the tag of the last line (a line of an older layout is a bare tag: deployed, ok)
current() { releases | awk 'NF { tag = $1 } END { print tag }'; }

# the newest good release other than the current one (empty: none)
previous() {
  releases | awk '
    NF { tag = $1; outcome[$1] = (NF == 1 ? "ok" : $2); newest[$1] = NR; last = $1 }
    END {
      best = 0
      for (t in outcome) if (t != last && outcome[t] == "ok" && newest[t] > best) { best = newest[t]; found = t }
      print found
    }'
}

# deploy TAG, recording the attempt and its outcome (failed also when the script stops half-way)
on_exit() {
  local status=$?
  if [[ $status -ne 0 && -n $attempt ]]; then record "$attempt" failed || true; fi
  rm -rf "$scratch"
}

deploy_tag() {
  check_host # before the first record: a host that cannot take a release has not attempted one
  record "$1" attempted
  attempt=$1
  copy_files "$1"
  start "$1"
  attempt=''
  record "$1" ok
}

check_host() {
  remote "mkdir -p $(q "$path")"
  if ! in_path 'test -f .env'; then
    echo "deploy: $path/.env is missing on $host: create it from .env.example with the real secrets" >&2
    exit 1
  fi
  # the placeholders of .env.example are public: a host must never run with one (only names are printed)
  local placeholders
  placeholders=$(in_path "grep -E '^[A-Z_]+=local-only-change-me\$' .env | cut -d= -f1 | tr '\n' ' '" || true)
  if [[ -n $placeholders ]]; then
    echo "deploy: $path/.env on $host still holds the placeholder of .env.example for: ${placeholders% }" \
      "- set real secrets there" >&2
    exit 1
  fi
}

# Each release's files in a folder of their own (<path>/releases.d/TAG: a file removed in git is gone from
# it), then switched in one rename each: `monitoring` (a symlink to the release's monitoring/) and
# docker-compose.yaml. The monitoring containers are recreated after the stack is up (start), so they
# read the new files; the newest DEPLOY_RELEASES_KEEP (10) folders stay for rollbacks and diffs.
copy_files() {
  local dir="releases.d/$1"
  in_path "rm -rf $(q "$dir.new") && mkdir -p $(q "$dir.new")"
  tar -czf - docker-compose.yaml .env.example docker monitoring | in_path "tar -xzf - -C $(q "$dir.new")"
  in_path "rm -rf $(q "$dir") && mv $(q "$dir.new") $(q "$dir")"
  in_path "if [ -d monitoring ] && [ ! -L monitoring ]; then rm -rf monitoring; fi" # a host of the older layout
  in_path "ln -sfn $(q "$dir/monitoring") monitoring.next && mv -Tf monitoring.next monitoring"
  in_path "cp $(q "$dir/docker-compose.yaml") docker-compose.yaml.next && mv -f docker-compose.yaml.next docker-compose.yaml"
  in_path "cp $(q "$dir/.env.example") .env.example"
  in_path "ls -1td releases.d/*/ | tail -n +$(q "$((${DEPLOY_RELEASES_KEEP:-10} + 1))") | xargs -r rm -rf --"
}

start() {
  local tag=$1 prefix=${IMAGE_PREFIX:?IMAGE_PREFIX is not set (e.g. ghcr.io/OWNER)}
  if [[ -n ${REGISTRY_TOKEN:-} ]]; then
    printf '%s\n' "$REGISTRY_TOKEN" |
      remote "docker login $(q "${prefix%%/*}") -u $(q "${REGISTRY_USER:?REGISTRY_USER is not set}") --password-stdin"
  fi
  printf 'IMAGE_TAG=%s\nPLATFORM_IMAGE=%s\nSCORER_IMAGE=%s\n' "$tag" "$prefix/rtml-platform" "$prefix/rtml-scorer" |
    in_path 'cat >release.env'
  in_path "$compose pull --quiet"
  drain_runs
  backup_postgres "$tag"
  migrate
  in_path "$compose up --detach --no-build --remove-orphans --wait --wait-timeout 900"
  # their configuration is bind-mounted from the release's folder: recreated, they read this release's
  in_path "$compose up --detach --no-build --no-deps --force-recreate --wait alertmanager-config alertmanager prometheus grafana"
}

# PostgreSQL (rtml, dagster, mlflow) dumped before the new images start, kept in <path>/backups (the newest
# DEPLOY_BACKUPS_KEEP, default 5). Restore: docs/deploy.md.
backup_postgres() {
  if [[ -z $(in_path "$compose ps --quiet --status running postgres" || true) ]]; then
    return 0 # first deploy: nothing to back up
  fi
  local file
  file="backups/$(date -u +%Y%m%dT%H%M%SZ)-before-$1.sql"
  in_path "mkdir -p backups && $compose exec -T postgres pg_dumpall -U postgres --clean --if-exists >$(q "$file") && gzip $(q "$file")"
  in_path "ls -1t backups/*.sql.gz | tail -n +$(q "$((${DEPLOY_BACKUPS_KEEP:-5} + 1))") | xargs -r rm --"
  echo "deploy: PostgreSQL backed up to $path/$file.gz"
}

# Schema migrations as their own step, with the stores up and nothing else yet: the databases (rtml up),
# Dagster's instance and MLflow's tracking store, each with the new release's code.
migrate() {
  in_path "$compose up --detach --no-build --wait postgres redis"
  in_path "$compose run --rm --no-deps -T init"
  in_path "$compose run --rm --no-deps -T dagster-code dagster instance migrate"
  in_path "$compose run --rm --no-deps -T mlflow sh -c 'mlflow db upgrade \"\$MLFLOW_BACKEND_STORE_URI\"'"
}

# Runs execute inside dagster-code, which `up` recreates: stop the daemon (no new run starts from the
# queue; queued runs wait in the database) and let the runs in progress finish, at most DEPLOY_DRAIN_SECONDS
# (default 900). Runs still going then are killed with the container and marked failed by Dagster's run
# monitoring (docker/dagster.yaml), so none holds a slot of max_concurrent_runs.
drain_runs() {
  if [[ -z $(in_path "$compose ps --quiet --status running dagster-code" || true) ]]; then
    return 0 # first deploy, or the code server is down: nothing runs
  fi
  in_path "$compose stop dagster-daemon"
  if ! in_path "$compose exec -T dagster-code rtml runs wait --timeout $(q "${DEPLOY_DRAIN_SECONDS:-900}")"; then
    echo "deploy: Dagster runs still in progress after ${DEPLOY_DRAIN_SECONDS:-900} s: recreating the code server anyway (run monitoring marks them failed)" >&2
  fi
}

command=${1:-}
[[ $# -gt 0 ]] && shift
case $command in
  up)
    [[ $# -eq 1 && -n $1 ]] || usage
    deploy_tag "$1"
    echo "deployed $1 to $host"
    ;;
  rollback)
    [[ $# -le 1 ]] || usage
    from=$(current)
    tag=${1:-$(previous)}
    if [[ -z $tag ]]; then
      echo "deploy: no good release other than the current one (${from:-none}) on $host; name the tag to restore" >&2
      exit 1
    fi
    if [[ $tag == "$from" ]]; then
      echo "deploy: $tag is the current release on $host already: nothing to roll back to" >&2
      exit 1
    fi
    check_host
    [[ -z $from ]] || record "$from" rolled-back
    deploy_tag "$tag"
    echo "rolled back $host from ${from:-nothing} to $tag"
    ;;
  run)
    [[ $# -gt 0 ]] || usage
    in_path "$compose run --rm --no-deps -T dagster-code $(q "$@")"
    ;;
  releases) releases ;;
  current) current ;;
  previous)
    tag=$(previous)
    if [[ -z $tag ]]; then
      echo "deploy: no good release other than the current one on $host" >&2
      exit 1
    fi
    echo "$tag"
    ;;
  *) usage ;;
esac
