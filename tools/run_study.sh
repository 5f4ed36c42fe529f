#!/usr/bin/env bash
# Run the v2 study in the background, committing each finished run (see tools/run_study.py); log in outputs/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p outputs
nohup env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python tools/run_study.py "$@" > outputs/run_study.log 2>&1 &
echo "study running as process $! (log: outputs/run_study.log; stop: kill $!; start again to resume)"
