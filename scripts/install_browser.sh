#!/usr/bin/env bash
# Installs what the explorer's browser tests drive (tests/explorer/: selenium opens the explorer's
# HTML file in a real headless browser): Debian's chromium and chromium-driver, whose driver
# selenium is given by path (/usr/bin/chromedriver), so that selenium-manager downloads nothing.
# As root with apt-get only; otherwise it says how, and the browser tests skip.
exec bash "$(dirname "$0")/install_debian.sh" Chromium "the explorer's browser tests" \
  "chromium chromedriver" "chromium chromium-driver" \
  'echo "$(chromium --version 2>/dev/null | head -1), $(chromedriver --version | head -1)"'
