#!/usr/bin/env bash
# System packages the test suite needs beyond Python, Java and Maven: Debian's Chromium for the
# dashboard's browser test. Installed only when missing; needs root (CI runs as root) or sudo.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[deps] chromium not found and no apt-get: install Chromium to run the dashboard test" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
    echo "[deps] chromium not found and not root: the dashboard test will fail under CI" >&2
    exit 0
  fi
fi
echo "[deps] installing Debian's chromium for the dashboard test" >&2
$sudo apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
