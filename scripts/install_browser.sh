#!/usr/bin/env bash
# Installs what the explorer's browser tests drive (tests/explorer/: selenium opens the explorer's
# HTML file in a real headless browser): Debian's chromium and chromium-driver, whose driver
# selenium is given by path (/usr/bin/chromedriver), so that selenium-manager downloads nothing.
# As root with apt-get only; otherwise it says how, and the browser tests skip.
set -euo pipefail
PACKAGES=(chromium chromium-driver)
need=()
for bin in chromium chromedriver; do
  command -v "$bin" >/dev/null || need+=("$bin")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "browser ok: $(chromium --version 2>/dev/null | head -1), $(chromedriver --version | head -1)"
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages ${PACKAGES[*]} (the explorer's browser tests) ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 \
         && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null; }
  echo "browser ok: $(chromium --version 2>/dev/null | head -1), $(chromedriver --version | head -1)"
else
  echo "Chromium is not installed (no ${need[*]}) and this is not root. Install it with:"
  echo "    sudo apt-get install ${PACKAGES[*]}"
  echo "(the explorer's browser tests need it, and skip without; nothing else does)"
fi
