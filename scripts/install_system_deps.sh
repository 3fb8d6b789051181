#!/usr/bin/env bash
# System programs some tests run for real: nginx as the gRPC load balancer and Prometheus (+ promtool) for
# tests/integration/test_deploy_topology.py, Node.js + npm for the Node client and buf
# (tests/integration/test_node_client.py, tests/unit/test_proto_buf.py). Debian packages; installs only
# what is missing. Called by .ci/run before `make test`; a developer runs it once. Without them those
# tests skip with one line saying what is missing (and fail under CI=true).
set -euo pipefail
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=(prometheus)
# Debian 12's nodejs is 18, enough for @grpc/grpc-js and buf's npm package.
{ command -v node && command -v npm; } >/dev/null 2>&1 || missing+=(nodejs npm)
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
