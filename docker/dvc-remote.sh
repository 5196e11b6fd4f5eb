#!/usr/bin/env bash
# Point DVC at a shared remote: an S3-compatible URL (DVC_REMOTE_URL, e.g. s3://bucket/rtml; for MinIO,
# Ceph, R2 and the like also DVC_REMOTE_ENDPOINT_URL). The credentials stay in the environment
# (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), where dvc-s3 reads them; nothing secret is written.
# The remote goes into .dvc/config.local (git-ignored) as the default; unset, .dvc/config's local remote
# stays the default (make demo, forks without the repository's variables).
#   DVC_REMOTE_URL=s3://bucket/rtml docker/dvc-remote.sh && dvc pull --allow-missing && dvc repro && dvc push
set -euo pipefail

url=${DVC_REMOTE_URL:-}
if [[ -z $url ]]; then
  echo "dvc-remote: DVC_REMOTE_URL is not set: the default remote stays .dvc/config's"
  exit 0
fi
if [[ $url != s3://?* ]]; then
  echo "dvc-remote: DVC_REMOTE_URL must be an S3-compatible URL, s3://<bucket>/<path>; got ${url%%:*}:..." >&2
  exit 2
fi
dvc remote add --local --force --default shared "$url"
if [[ -n ${DVC_REMOTE_ENDPOINT_URL:-} ]]; then
  dvc remote modify --local shared endpointurl "$DVC_REMOTE_ENDPOINT_URL"
fi
echo "dvc-remote: default remote 'shared' is $url${DVC_REMOTE_ENDPOINT_URL:+ at $DVC_REMOTE_ENDPOINT_URL}"
