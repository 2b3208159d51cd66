#!/usr/bin/env bash
# Make Debian's Chromium available for the dashboard's browser tests (tests/test_ui.py).
# Playwright drives it through executable_path; its own browser download is never used (no
# hub access from this machine, and a browser from Debian is the one its security updates
# cover).
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1; then
  echo "ensure-chromium: installing chromium (Debian)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi
