#!/usr/bin/env bash
# Runs a command in a private network namespace with only loopback up, so two test sessions on
# one machine (two work trees, or a demo beside the tests) never collide on the fixed 127.x
# addresses and ports the tests bind. Needs root (unshare -n). Usage: scripts/isolated.sh CMD…
set -euo pipefail
exec unshare -n bash -c 'ip link set lo up && exec "$@"' isolated "$@"
