#!/usr/bin/env bash
# The momentum study end to end: build the example, assemble the prose
# corpus, run the sweep (resumable), draw the plot.
#
#   bench/study/run_study.sh [sweep.py arguments, e.g. --only tiny-scratch-prose]
#
# Writes build/study/study.csv, study.png, study_timeseries.csv,
# study_timeseries.png and the tables on stdout. matplotlib comes from a throw-away virtual environment,
# build/study-venv (PyPI), made on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."

scripts/build.sh --target gpt2-finetune
python3 bench/study/sweep.py --binary build/examples/gpt2/gpt2-finetune "$@"

venv=build/study-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import matplotlib" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet matplotlib
fi
"$venv/bin/python" bench/study/plot.py build/study/study.csv build/study/study.png
"$venv/bin/python" bench/study/plot_timeseries.py build/study/study_timeseries.csv build/study/study_timeseries.png
echo "wrote build/study/study.csv, study.png, study_timeseries.csv and study_timeseries.png"
