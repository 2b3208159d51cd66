#!/usr/bin/env bash
# A real two-node Docker Swarm on this one machine, for the Swarm tests (issue #20):
#   scripts/swarm.sh up     the local engine (scripts/ensure-docker-engine.sh) becomes the
#                           manager on 127.0.0.1; a second dockerd, with its own data root,
#                           exec root, pidfile and socket, joins it as a worker on 127.0.0.2
#   scripts/swarm.sh down   modelberth's services removed, both engines leave, the second one
#                           stops
# A local engine already in a swarm this script did not make is never touched.
# Prints the second engine's socket (unix://...) after `up`. Idempotent both ways. Everything
# listens on loopback addresses only; the dead proxy makes any image pull fail at once.
set -euo pipefail

STATE=${MODELBERTH_SWARM_DIR:-/tmp/modelberth-swarm}
SOCKET=$STATE/docker.sock
SECOND=(docker -H "unix://$SOCKET")

second_running() { "${SECOND[@]}" info >/dev/null 2>&1; }
clear_second() {
  left=$("${SECOND[@]}" ps -aq)
  [ -z "$left" ] || "${SECOND[@]}" rm -f $left >/dev/null
}

up() {
  bash "$(dirname "$0")/ensure-docker-engine.sh"
  mkdir -p "$STATE"
  # Its TLS endpoint, for the docker.hosts tests (tcp:// with TLS): certificates made once.
  bash "$(dirname "$0")/docker-tls.sh" "$STATE/tls" 127.0.0.2
  if ! second_running; then
    HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
      nohup dockerd --bridge=none --iptables=false --ip-masq=false --ip6tables=false \
        --storage-driver=overlay2 --data-root "$STATE/data" --exec-root "$STATE/exec" \
        --pidfile "$STATE/docker.pid" -H "unix://$SOCKET" -H tcp://127.0.0.2:2376 \
        --tlsverify --tlscacert "$STATE/tls/ca.pem" --tlscert "$STATE/tls/server-cert.pem" \
        --tlskey "$STATE/tls/server-key.pem" >"$STATE/dockerd.log" 2>&1 &
    for _ in $(seq 1 100); do
      second_running && break
      sleep 0.1
    done
    if ! second_running; then
      echo "swarm: the second dockerd did not come up; its log:" >&2
      tail -n 30 "$STATE/dockerd.log" >&2
      exit 1
    fi
  fi
  if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    # A short heartbeat: a stopped node is known to be down in seconds, not half a minute.
    docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 \
      --dispatcher-heartbeat 1s >/dev/null
    touch "$STATE/initialised"  # ours to leave again
  elif [ ! -e "$STATE/initialised" ]; then
    echo "swarm: the local engine is already in a swarm this script did not make; not" \
      "touching it" >&2
    exit 1
  fi
  if [ "$("${SECOND[@]}" info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    # A second engine that stopped without leaving still holds its old swarm's state, and
    # the containers of that swarm's tasks, which no manager will remove now: the engine is
    # this script's own, so all of its containers go.
    "${SECOND[@]}" swarm leave --force >/dev/null 2>&1 || true
    clear_second
    token=$(docker swarm join-token -q worker)
    "${SECOND[@]}" swarm join --token "$token" --advertise-addr 127.0.0.2 \
      --listen-addr 127.0.0.2:2377 --data-path-addr 127.0.0.2 127.0.0.1:2377 >/dev/null
  fi
  for _ in $(seq 1 100); do
    [ "$(docker node ls --filter role=worker --format '{{.Status}}' | grep -c Ready)" -ge 1 ] \
      && break
    sleep 0.2
  done
  echo "unix://$SOCKET"
}

down() {
  [ -e "$STATE/initialised" ] || { second_running || exit 0; }
  if docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null | grep -q active; then
    # Only what modelberth and its tests made: their services carry these names or labels.
    services=$( (docker service ls -q --filter label=modelberth.managed=true
                 docker service ls -q --filter name=modelberth-) | sort -u)
    [ -n "$services" ] && docker service rm $services >/dev/null
  fi
  if second_running; then
    "${SECOND[@]}" swarm leave --force >/dev/null 2>&1 || true
    clear_second
    "${SECOND[@]}" network rm docker_gwbridge >/dev/null 2>&1 || true
    kill "$(cat "$STATE/docker.pid")" 2>/dev/null || true
    for _ in $(seq 1 100); do
      [ -e "$STATE/docker.pid" ] || break
      sleep 0.1
    done
  fi
  if [ -e "$STATE/initialised" ] && docker info >/dev/null 2>&1; then
    docker swarm leave --force >/dev/null 2>&1 || true
    docker network rm docker_gwbridge >/dev/null 2>&1 || true
    rm -f "$STATE/initialised"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
