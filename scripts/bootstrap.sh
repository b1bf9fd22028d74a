#!/usr/bin/env bash
# Set up everything freshrec needs on this machine, idempotently:
#   redis-server and a JDK (Debian packages, only when missing), a Python virtualenv in .venv with
#   freshrec installed (editable, with test extras), and Apache Kafka's jars in the download cache
#   (~/.cache/freshrec, fetched once from Maven Central; later runs start offline).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]} (apt-get)" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
venv_ok() { .venv/bin/python -c "import pip._internal.operations.build, pip._internal.req" >/dev/null 2>&1; }
for attempt in 1 2; do
  if [ -x .venv/bin/python ] && venv_ok; then break; fi
  [ -d .venv ] && echo "bootstrap: .venv is incomplete or its pip is broken; recreating it" >&2
  rm -rf .venv
  echo "bootstrap: creating .venv with $($PY --version)" >&2
  $PY -m venv .venv
done
venv_ok || { echo "bootstrap: could not create a working virtualenv with $PY" >&2; exit 1; }
if ! .venv/bin/python -c "import freshrec.cli, pytest" >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.installed ]; then
  echo "bootstrap: installing Python packages into .venv" >&2
  .venv/bin/python -m pip install -q -e '.[test]'
  touch .venv/.installed
fi
.venv/bin/freshrec dev fetch
