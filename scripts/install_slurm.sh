#!/usr/bin/env bash
# Installs what the SLURM tests start (tests/slurm_cluster.py: a one-node cluster in a temporary
# directory, with its own config, key and ports): Debian's slurmctld, slurmd, slurm-client and
# munge. As root with apt-get only; otherwise it says how, and the SLURM tests skip.
exec bash "$(dirname "$0")/install_debian.sh" SLURM "the SLURM tests" \
  "slurmctld slurmd sbatch munged" "slurmctld slurmd slurm-client munge" \
  'echo "$(slurmctld -V) and munge (the SLURM tests start their own cluster)"'
