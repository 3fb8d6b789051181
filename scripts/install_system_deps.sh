#!/usr/bin/env bash
# System programs the deployment tests run for real (tests/integration/test_deploy_topology.py): nginx as
# the gRPC load balancer, Prometheus (+ promtool). Debian packages; installs only what is missing.
# Called by .ci/run before `make test`; a developer runs it once.
set -euo pipefail
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
echo "installing ${missing[*]} (Debian packages)" >&2
"${sudo[@]}" apt-get update -q
# --no-install-recommends: no node exporter or other daemons we do not use.
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
