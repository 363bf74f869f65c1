#!/usr/bin/env bash
# Debian's chromium, for tests/cli/test_report_browser.py (the HTML report opened in a real headless browser).
# Does nothing when a chromium is already on the PATH; uses sudo when not root.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
