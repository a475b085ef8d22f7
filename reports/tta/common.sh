# Sourced by the run scripts of reports/tta: the resume check and the log lines render.py reads (runs.log).
have() {  # NAME N: the report NAME exists with N images per cell, so a rerun skips it (another N replaces it)
    [ -f "$OUT/$1.json" ] && python -c "import json, sys
sys.exit(json.load(open('$OUT/$1.json'))['meta']['n_examples'] != $2)"
}
started() {  # NAME: the start line, with the load average render.py reports beside the run
    echo "$(date -u +%FT%TZ) start $1 (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
}
finished() {  # NAME
    echo "$(date -u +%FT%TZ) done $1" >&2
}
