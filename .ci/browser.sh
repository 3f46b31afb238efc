#!/usr/bin/env bash
# Installs what the browser test (tests/browser.rs) needs: Debian's Chromium
# and its WebDriver, chromedriver. Does nothing when both are there already.
set -euo pipefail

if [ -x /usr/bin/chromedriver ] && [ -x /usr/bin/chromium ]; then
  echo "browser: $(/usr/bin/chromedriver --version)"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq chromium chromium-driver >/dev/null
echo "browser: $(/usr/bin/chromedriver --version)"
