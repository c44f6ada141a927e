#!/usr/bin/env bash
# Installs Debian packages some tests start, as root with apt-get only; otherwise it says how,
# and those tests skip. The shared body of install_slurm.sh and install_browser.sh:
#   install_debian.sh LABEL WHAT "BIN ..." "PACKAGE ..." "VERSION COMMAND"
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
label=$1 what=$2
read -r -a bins <<< "$3"
read -r -a packages <<< "$4"
version=$5
need=()
for bin in "${bins[@]}"; do
  command -v "$bin" >/dev/null || need+=("$bin")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "$label ok: $(eval "$version")"
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages ${packages[*]} ($what) ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 \
         && apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null; }
  echo "$label ok: $(eval "$version")"
else
  echo "$label is not installed (no ${need[*]}) and this is not root. Install it with:"
  echo "    sudo apt-get install ${packages[*]}"
  echo "($what need it, and skip without; nothing else does)"
fi
