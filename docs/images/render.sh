#!/usr/bin/env bash
# Redraw the pictures in docs/images with the flowpro CLI, from examples/dags.
#
#     bash docs/images/render.sh      # needs flowpro installed and Graphviz's dot on PATH
#
# Definition graphs come from `flowpro dags show`; run graphs (with each step's state) from
# `flowpro graph` after a real run on a throwaway SQLite database.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dags=$(cd "$here/../../examples/dags" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export FLOWPRO_DATABASE_URL="sqlite:///$work/flowpro.db"
unset FLOWPRO_DAGS

# Definitions, built for a fixed tick (nightly_etl names its steps after the days before it):
# SVG for the pages, Mermaid next to them.
tick=2026-11-29T02:00:00Z
for spec in "regional_report:report.py" "customer_export:pii.py" "nightly_etl:etl.py"; do
    name=${spec%%:*}
    file=$dags/${spec#*:}
    flowpro dags show "$name" "$file" --tick "$tick" -o "$here/$name.svg"
    flowpro dags show "$name" "$file" --tick "$tick" -o "$here/$name.mmd"
done

workflow_id() { python -c 'import json, sys; print(json.load(sys.stdin)["workflow_id"])'; }
step_id() {  # the job id of step $2 of workflow $1
    flowpro jobs list --json --limit 1000 | python -c '
import json, sys
print(next(j["id"] for j in json.load(sys.stdin)
           if j["meta"].get("workflow_id") == sys.argv[1] and j["meta"].get("name") == sys.argv[2]))
' "$1" "$2"
}

# A run that completed.
done_id=$(flowpro dags trigger regional_report "$dags/report.py" --tick 2026-11-01T06:00:00Z --json | workflow_id)
flowpro run "$dags/report.py" --until-idle --log-level WARNING > /dev/null
flowpro graph "$done_id" -o "$here/regional_report-run.svg"
flowpro graph "$done_id" -o "$here/regional_report-run.mmd"

# A run where one region was cancelled by hand before it ran: the cascade cancels the rest.
cut_id=$(flowpro dags trigger regional_report "$dags/report.py" --tick 2026-12-01T06:00:00Z --json | workflow_id)
flowpro jobs cancel "$(step_id "$cut_id" region:latam)" > /dev/null
flowpro run "$dags/report.py" --until-idle --log-level WARNING > /dev/null
flowpro graph "$cut_id" -o "$here/regional_report-cancelled.svg"
flowpro graph "$cut_id" -o "$here/regional_report-cancelled.mmd"

# A run just triggered: the first step available, the rest suspended on their deps.
new_id=$(flowpro dags trigger regional_report "$dags/report.py" --tick 2027-01-01T06:00:00Z --json | workflow_id)
flowpro graph "$new_id" -o "$here/regional_report-triggered.svg"
flowpro graph "$new_id" -o "$here/regional_report-triggered.mmd"
echo "redrawn: $(cd "$here" && ls *.svg *.mmd | tr '\n' ' ')"
