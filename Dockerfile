# modelberth in a container: the server and its core dependencies in a venv, nothing else
# (no llama.cpp: models run as containers through the mounted Docker socket, as remote
# endpoints, or as processes of whatever the image is given).
#
#   docker build -t modelberth .
#   docker run -d --init --network host \
#     -v "$PWD/modelberth.yaml:/etc/modelberth/modelberth.yaml:ro" \
#     -v /var/run/docker.sock:/var/run/docker.sock --group-add "$(stat -c %g /var/run/docker.sock)" \
#     modelberth
#
# The config is read from /etc/modelberth/modelberth.yaml ($MODELBERTH_CONFIG). The server
# listens on $MODELBERTH_HOST:$MODELBERTH_PORT, 0.0.0.0:8080 (set server.api_keys then, or
# MODELBERTH_HOST=127.0.0.1 with host networking); set either to "" to take server.host or
# server.port from the config instead (the healthcheck asks $MODELBERTH_PORT, else 8080).
# Arguments after the image name go to `modelberth serve` (e.g. --log-format json).
# Learned footprints are kept in /var/lib/modelberth ($MODELBERTH_STATE_DIR): mount a volume
# there to keep them. It runs as uid 10001; --init (compose: init: true) reaps what its
# upstreams leave behind.
#
# Needs BuildKit (Docker's default builder since 23.0). Build arguments and secrets:
#   BASE     the image of both stages: Debian-like, python3 >= 3.11 with its venv module
#            (scripts/debian-base.sh makes one from Debian's packages, without a registry)
#   secret pip_cert (optional): a CA bundle for pip, behind a TLS-inspecting proxy:
#            --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt
#            It is read only while the builder installs and lands in no layer.

ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/modelberth
WORKDIR /src
# The dependencies first, at the versions of requirements-core.lock (hash-checked): a change
# of the source keeps this layer.
COPY requirements-core.lock ./
RUN --mount=type=secret,id=pip_cert --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && /opt/modelberth/bin/pip install --require-hashes -r requirements-core.lock
COPY pyproject.toml README.md ./
COPY src ./src
# modelberth itself, a wheel built from the source (the dashboard's static files inside).
RUN --mount=type=secret,id=pip_cert --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && /opt/modelberth/bin/pip install --no-deps . \
    && /opt/modelberth/bin/pip check

FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/modelberth --create-home \
      --shell /usr/sbin/nologin modelberth \
    && mkdir -p /etc/modelberth
COPY --from=builder /opt/modelberth /opt/modelberth
ENV PATH=/opt/modelberth/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    MODELBERTH_CONFIG=/etc/modelberth/modelberth.yaml \
    MODELBERTH_STATE_DIR=/var/lib/modelberth \
    MODELBERTH_HOST=0.0.0.0 \
    MODELBERTH_PORT=8080
USER 10001:10001
WORKDIR /var/lib/modelberth
EXPOSE 8080
# Alive = /health answers on loopback (a 401 too: server.protect_health wants a key).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.error, urllib.request\nport = os.environ.get('MODELBERTH_PORT') or '8080'\ntry:\n    urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4)\nexcept urllib.error.HTTPError as exc:\n    raise SystemExit(exc.code != 401)"]
ENTRYPOINT ["/bin/sh", "-c", "exec modelberth serve ${MODELBERTH_HOST:+--host \"$MODELBERTH_HOST\"} ${MODELBERTH_PORT:+--port \"$MODELBERTH_PORT\"} \"$@\"", "modelberth"]
CMD []
