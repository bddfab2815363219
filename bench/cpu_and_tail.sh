#!/usr/bin/env bash
# One pairbus run with the load generator, then where the broker's CPU went and the latency
# tail (BENCHMARKS.md, "Session 4" and "Committer CPU per event"):
#
#   LOADGEN=<loadgen bench binary> bash bench/cpu_and_tail.sh <pairbus-broker binary> RATE SECONDS [loadgen args…]
#
# Starts `serve` on port 0 (the addresses come from its ready line) in a temp folder, runs
# PUBLISHERS (default 8) publishers at RATE events/s (0 = flat out)
# whose devices a factory manufactures first, and prints: the broker's counters, CPU per
# committed event of each thread group (µs, from /proc/<pid>/task/*/stat; `pairbus-commit` is
# the committer, `pairbus-save` the projections' save thread) and of the whole broker, its peak
# RSS, stored/s, lost and latency percentiles (from `--latencies`), and the load average
# before and after. Linux only; needs curl and python3. Set NO_FACTORY=1 to skip
# manufacturing (every event is then an unknown device's).
set -euo pipefail
PUBLISHERS=${PUBLISHERS:-8}
bin=${1:?pairbus-broker binary}; rate=${2:-10000}; dur=${3:-10}
shift $(( $# < 3 ? $# : 3 ))
loadgen=${LOADGEN:?LOADGEN must name the loadgen bench binary}
work=$(mktemp -d "${TMPDIR:-/tmp}/pairbus-tail.XXXXXX")
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
PAIRBUS_LOG=warn "$bin" serve --data "$work/data" --device-listen 127.0.0.1:0 \
    --operator-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >"$work/broker.out" 2>"$work/broker.log" &
pid=$!
for _ in $(seq 100); do grep -q "ready: device plane" "$work/broker.out" 2>/dev/null && break; sleep 0.1; done
ready=$(head -1 "$work/broker.out")
field() { sed -nE "s/.*$1 (http:\/\/)?([0-9.]+:[0-9]+).*/\2/p" <<<"$ready"; }
device=$(field "device plane"); operator=$(field "operator plane"); http=$(field "HTTP")
[[ -n "$device" && -n "$operator" && -n "$http" ]] || { echo "no ready line: $ready" >&2; exit 1; }
factory=(--operator-addr "$operator")
[[ -n "${NO_FACTORY:-}" ]] && factory=()
load0=$(cut -d' ' -f1 /proc/loadavg)
"$loadgen" --target pairbus --addr "$device" "${factory[@]}" --data "$work/data" \
    --publishers "$PUBLISHERS" --rate "$rate" --duration "$dur" --latencies "$work/lat.txt" "$@" >"$work/lg.out"
metrics=$(curl -s "$http/metrics")
echo "$metrics" | grep -E '^pairbus_(events_(received|committed)_total|ingest_router_dropped_total|ingest_backpressure_pauses_total|group_commits_total) ' |
    awk '{printf "%s=%s ", $1, $2} END {print ""}'
committed=$(echo "$metrics" | awk '/^pairbus_events_committed_total/ {print $2}')
for t in /proc/"$pid"/task/*; do echo "$(tr ' ' _ <"$t/comm") $(awk '{print $14+$15}' "$t/stat")"; done |
    awk -v n="$committed" -v tick="$(getconf CLK_TCK)" '{sub(/-[0-9]+$/, "", $1); a[$1] += $2; tot += $2}
        END {printf "µs of CPU per event:"; for (k in a) if (a[k] > 0) printf " %s=%.1f", k, a[k]/tick/n*1e6;
             printf " total=%.1f\n", tot/tick/n*1e6}'
grep VmHWM "/proc/$pid/status" | tr -s ' \t' ' '
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
echo "load $load0 -> $(cut -d' ' -f1 /proc/loadavg)"
grep -o '"stored_per_s":[0-9.]*\|"lost":[0-9]*' "$work/lg.out" | tr '\n' ' '
python3 - "$work/lat.txt" <<'PY'
import sys
lat = sorted(int(l.split()[2]) for l in open(sys.argv[1]))
print(" ".join("p%g=%.1fms" % (q * 100, lat[max(0, int(len(lat) * q) - 1)] / 1000) for q in (0.5, 0.9, 0.99, 0.999, 1.0)))
PY
