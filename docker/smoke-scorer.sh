#!/usr/bin/env bash
# Smoke test of the scorer image's real entrypoint (build.yaml): the image as built, against a PostgreSQL
# and a Redis container on a network of their own. It must start, answer /livez, say on /readyz that it is
# not ready (this network has no MLflow registry, hence no production model), answer a valid /score with
# 503 and the reason, an invalid one with 400, serve /metrics, and stop cleanly on SIGTERM. Scoring with a
# model, in the same environment (the serving group, the source on PYTHONPATH), is tests/test_serving.py's.
#   docker/smoke-scorer.sh ghcr.io/<owner>/rtml-scorer:<sha>
set -euo pipefail

image=${1:?usage: docker/smoke-scorer.sh <scorer image>}
net=rtml-smoke-$$
cleanup() {
  docker logs rtml-smoke-scorer-$$ 2>&1 | tail -n 40 || true
  docker rm -f "rtml-smoke-scorer-$$" "rtml-smoke-pg-$$" "rtml-smoke-redis-$$" >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
}
trap cleanup EXIT

docker network create "$net" >/dev/null
docker run -d --name "rtml-smoke-pg-$$" --network "$net" --network-alias postgres \
  -e POSTGRES_PASSWORD=smoke postgres:15.10-bookworm >/dev/null
docker run -d --name "rtml-smoke-redis-$$" --network "$net" --network-alias redis redis:7.4.1-bookworm >/dev/null
until docker exec "rtml-smoke-pg-$$" pg_isready -U postgres >/dev/null 2>&1; do sleep 1; done
docker run -d --name "rtml-smoke-scorer-$$" --network "$net" -p 127.0.0.1:3001:3001 \
  -e RTML_DATABASE_URL=postgresql://postgres:smoke@postgres:5432/postgres \
  -e RTML_REDIS_URL=redis://redis:6379/0 \
  -e RTML_MLFLOW_TRACKING_URI=http://mlflow.invalid:5000 \
  "$image" >/dev/null

status() { curl -s -o /tmp/smoke-body -w '%{http_code}' "$@"; }
for _ in $(seq 120); do
  [[ $(status http://127.0.0.1:3001/livez) == 200 ]] && break
  sleep 1
done
check() {  # check <expected status> <what> <curl arguments...>
  local expected=$1 what=$2 got
  shift 2
  got=$(status "$@")
  if [[ $got != "$expected" ]]; then
    echo "smoke: $what answered $got, expected $expected: $(head -c 500 /tmp/smoke-body)" >&2
    exit 1
  fi
  echo "smoke: $what → $got $(head -c 200 /tmp/smoke-body)"
}
transaction='{"transaction": {"transaction_id": "smoke-1", "customer_id": "c1", "merchant_id": "m1",
  "amount": 12.5, "currency": "EUR", "channel": "pos", "timestamp": "2026-12-01T12:00:00Z"}}'
check 200 /livez http://127.0.0.1:3001/livez
check 503 "/readyz (no production model)" http://127.0.0.1:3001/readyz
check 503 "/score without a model" -H 'content-type: application/json' -d "$transaction" http://127.0.0.1:3001/score
grep -q "production" /tmp/smoke-body || { echo "smoke: the 503 does not say why" >&2; exit 1; }
check 400 "/score with a bad amount" -H 'content-type: application/json' \
  -d '{"transaction": {"amount": "lots"}}' http://127.0.0.1:3001/score
check 200 /metrics http://127.0.0.1:3001/metrics
grep -q '^rtml_' /tmp/smoke-body || { echo "smoke: /metrics has no rtml_ series" >&2; exit 1; }
docker stop -t 30 "rtml-smoke-scorer-$$" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "rtml-smoke-scorer-$$")
[[ $code == 0 ]] || { echo "smoke: the scorer exited with $code on SIGTERM" >&2; exit 1; }
echo "smoke: the scorer image starts, answers and stops cleanly"
