#!/usr/bin/env bash
# Installs the offline data the default run needs: Debian's dataset-fashion-mnist.
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ]; then
  echo "data ok: Fashion-MNIST at $DIR"
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing Debian package dataset-fashion-mnist (offline Fashion-MNIST) ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  echo "data ok: Fashion-MNIST at $DIR"
else
  echo "Fashion-MNIST is not installed and this is not root. Install it with:"
  echo "    sudo apt-get install dataset-fashion-mnist"
  echo "(the tests use scikit-learn's digits and do not need it; the default run does)"
fi
