#!/usr/bin/env bash
# The docker.hosts test over ssh:// needs an OpenSSH server binary (Debian's openssh-server).
# Installed if missing, never started as a service: the test runs its own sshd on
# 127.0.0.2 with its own keys and config, and stops it after.
set -euo pipefail
if [ -x /usr/sbin/sshd ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "openssh-server is missing and this is not root: install it (apt-get install" \
    "openssh-server)" >&2
  exit 1
fi
apt-get update -qq
# policy-rc.d keeps the package from starting the system's sshd on every address.
policy=/usr/sbin/policy-rc.d
made_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
  made_policy=1
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
[ -z "$made_policy" ] || rm -f "$policy"
