#!/usr/bin/env bash
# Start (or reuse) the local test SLURM cluster: munged, slurmctld and two emulated
# slurmd nodes on this machine, config in /etc/slurm/slurm.conf. Idempotent.
# Needs root (uses sudo otherwise). The pytest fixture `slurm_cluster` does the same;
# this script is for CI logs and for trying the profiles by hand:
#   .ci/start-slurm.sh && sinfo
#   .ci/start-slurm.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
action="${1:-start}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo --preserve-env=PATH)
fi
# stdlib only: runs before the venv exists
"${sudo_cmd[@]}" python3 tests/slurm_cluster.py "$action" --nodes 2
if [ "$action" = start ]; then
    sinfo
fi
