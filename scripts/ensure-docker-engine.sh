#!/usr/bin/env bash
# Make a Docker engine available for the tests: install Debian's docker.io if it is missing,
# start dockerd if `docker info` does not answer, and remove containers an earlier run left.
# The proxy variables make any accidental image pull fail at once on loopback: no registry is
# reachable from this machine and none may be contacted.
set -euo pipefail

if ! command -v dockerd >/dev/null 2>&1; then
  echo "ensure-docker-engine: installing docker.io (Debian)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "ensure-docker-engine: starting dockerd" >&2
  log=/tmp/modelberth-dockerd.log
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
    nohup dockerd --bridge=none --iptables=false --ip-masq=false --ip6tables=false \
      --storage-driver=overlay2 >"$log" 2>&1 &
  for _ in $(seq 1 100); do
    docker info >/dev/null 2>&1 && break
    sleep 0.1
  done
  if ! docker info >/dev/null 2>&1; then
    echo "ensure-docker-engine: dockerd did not come up; its log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
fi

stale=$(docker ps -aq --filter label=modelberth.managed=true)
if [ -n "$stale" ]; then
  echo "ensure-docker-engine: removing stale modelberth containers" >&2
  docker rm -f $stale >/dev/null
fi
