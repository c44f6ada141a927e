#!/usr/bin/env bash
# Installs what the SLURM tests start (tests/slurm_cluster.py: a one-node cluster in a temporary
# directory, with its own config, key and ports): Debian's slurmctld, slurmd, slurm-client and
# munge. As root with apt-get only; otherwise it says how, and the SLURM tests skip.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
PACKAGES=(slurmctld slurmd slurm-client munge)
need=()
for bin in slurmctld slurmd sbatch munged; do
  command -v "$bin" >/dev/null || need+=("$bin")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "slurm ok: $(slurmctld -V) and munge (the SLURM tests start their own cluster)"
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages ${PACKAGES[*]} (the SLURM tests' one-node cluster) ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 \
         && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null; }
  echo "slurm ok: $(slurmctld -V) and munge (the SLURM tests start their own cluster)"
else
  echo "SLURM is not installed (no ${need[*]}) and this is not root. Install it with:"
  echo "    sudo apt-get install ${PACKAGES[*]}"
  echo "(the SLURM tests need it and root, and skip without; nothing else does)"
fi
