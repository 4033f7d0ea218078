#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it. CI runs exactly this (.ci/run).
#   - Python packages: this project with its dev extras (torch pinned to the local CPU wheel)
#   - Debian packages for the integration tests: mosquitto (broker), prometheus (server + promtool),
#     nats-server (JetStream and its MQTT listener: the scale-out path)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "warning: ${need_apt[*]} missing and not root: integration tests will be skipped" >&2
  fi
fi

python -m pip install -q --disable-pip-version-check -e ".[dev]"
# Parallel workers: most integration tests wait on brokers, daemons and sleeps, so 4 workers pay even on
# 2 cores; slow tests are collected first (tests/conftest.py). PYTEST_WORKERS=0 runs them serially.
exec python -m pytest -q -n "${PYTEST_WORKERS:-4}" --dist worksteal "$@"
