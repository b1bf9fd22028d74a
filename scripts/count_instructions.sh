#!/usr/bin/env bash
# Instructions (valgrind callgrind) of the measured part of scripts/ingest_probe.py: a cost figure
# that does not move with the machine's load, for comparing two versions of the code (wall and CPU
# time moved by +-40% between runs of the same code on these shared machines).
#
#   scripts/count_instructions.sh [ingest_probe.py options]      e.g. --partials, --measure 20000
#
# PROBE=path runs another probe script (e.g. a copy adapted to an older checkout, put first on
# PYTHONPATH); PYTHONPATH is kept after the portable hnswlib.
#
# The hnswlib wheel in .venv is built with -march=native (AVX-512), which valgrind cannot run:
# a portable build (HNSWLIB_NO_NATIVE=1) goes into .cache/valgrind-hnswlib once and is put first
# on PYTHONPATH; numpy's AVX-512 kernels are switched off the same way. Under callgrind the warm-up
# runs uninstrumented (~5x slower than native), the measured part ~50x slower: ~4 min in all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install -y valgrind)" >&2; exit 2; }
HNSW=.cache/valgrind-hnswlib
mkdir -p .cache
(
  flock 9  # two counts started together build it once
  if [ ! -f "$HNSW/.done" ]; then
    version=$($PY -c "import importlib.metadata as m; print(m.version('hnswlib'))")
    echo "building a portable hnswlib $version into $HNSW ..." >&2
    HNSWLIB_NO_NATIVE=1 $PY -m pip install -q --no-deps --no-binary hnswlib --no-cache-dir --target "$HNSW" "hnswlib==$version"
    touch "$HNSW/.done"
  fi
) 9> .cache/valgrind-hnswlib.lock
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
flag="$work/handshake"
PYTHONHASHSEED=0 PYTHONPATH="$HNSW${PYTHONPATH:+:$PYTHONPATH}" \
NPY_DISABLE_CPU_FEATURES="AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR" \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out" \
  $PY "${PROBE:-scripts/ingest_probe.py}" --handshake "$flag" "$@" > "$work/log" 2>&1 &
vg=$!
while [ ! -f "$flag" ]; do
  sleep 1
  kill -0 $vg 2>/dev/null || { echo "the probe died:" >&2; tail -20 "$work/log" >&2; exit 1; }
done
callgrind_control -i on "$(cat "$flag")" > /dev/null 2>&1
touch "$flag.ack"
wait $vg
grep -E "^measured" "$work/log" || true
echo "instructions: $(grep -E 'I\s+refs' "$work/log" | awk '{print $NF}')"
