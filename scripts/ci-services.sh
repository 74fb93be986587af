#!/usr/bin/env bash
# Debian packages the tests need: the engine tests start a single-node SLURM (slurmctld, slurmd,
# the client commands, munge) and PostgreSQL for the MLflow server test as daemons
# (tests/services.py); the HTML report test opens the report in headless Chromium (with a font,
# so text renders in its screenshots).
# Idempotent: installs only what is missing and runs `apt-get update` at most once. The tests skip,
# saying why, where a package is missing; this script never starts a daemon.
set -euo pipefail
PKGS=(slurmctld slurmd slurm-client munge postgresql chromium fonts-liberation)
missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "ci-services: ${PKGS[*]} already installed"
  exit 0
fi
if ! command -v apt-get > /dev/null; then
  echo "ci-services: no apt-get here; the SLURM, PostgreSQL and browser tests will skip (missing: ${missing[*]})" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
echo "ci-services: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# the packages' own services are not wanted (the tests start their daemons themselves):
# policy-rc.d answering 101 keeps dpkg from starting them
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" > /dev/null && $SUDO chmod +x "$policy" && made_policy=1
fi
trap '[ "$made_policy" -eq 1 ] && $SUDO rm -f "$policy"' EXIT
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
