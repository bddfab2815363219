#!/usr/bin/env bash
# Alternating MQTT load rounds against pairbus, Mosquitto and NATS JetStream (BENCHMARKS.md,
# "Broker under MQTT load"). Each run gets a freshly started daemon on free loopback ports and
# a fresh temp folder, whose data is deleted and synced away after the run; all daemons are
# stopped on exit.
#
#   bash bench/compare.sh                      # 3 rounds × {flat out, 10,000/s} × 3 targets
#   ROUNDS=5 DURATION=10 RATES="0 10000 100" PUBLISHERS=8 bash bench/compare.sh
#
# Needs /usr/sbin/mosquitto (Debian `mosquitto`) and /usr/sbin/nats-server (Debian
# `nats-server`), python3 for the table. Honours CARGO_TARGET_DIR; LOADGEN=<bench binary>
# BROKER=<pairbus-broker binary> skip the build and use those.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
PUBLISHERS=${PUBLISHERS:-8}
RATES=${RATES:-"0 10000"}
TARGETS=${TARGETS:-"pairbus mosquitto nats"}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
NATS=${NATS:-/usr/sbin/nats-server}

cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/pairbus-compare.XXXXXX")
pid=""
stop_daemon() {
    if [[ -n "$pid" ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=""
    fi
}
cleanup() {
    stop_daemon
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # host port
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on $1:$2" >&2
    return 1
}

if [[ -n "${LOADGEN:-}" ]]; then
    # Prebuilt binaries (e.g. copies of a before and an after build): LOADGEN and BROKER.
    exe=$LOADGEN
    broker_bin=${BROKER:?BROKER must name the pairbus-broker binary when LOADGEN is set}
else
    echo "building the load generator (release)…" >&2
    cargo bench -p pairbus-broker --bench loadgen --no-run 2>"$work/build.log" ||
        { cat "$work/build.log" >&2; exit 1; }
    exe=$(sed -n 's/.*Executable .*(\(.*\)).*/\1/p' "$work/build.log" | tail -1)
    broker_bin="$(dirname "$(dirname "$exe")")/pairbus-broker"
fi
[[ -x "$exe" ]] || { echo "load generator not found" >&2; exit 1; }
[[ -x "$broker_bin" ]] || { echo "pairbus-broker not found: $broker_bin" >&2; exit 1; }

# Starts $1 in $2 (a fresh folder); sets pid, addr and extra (loadgen arguments).
start_daemon() {
    local target=$1 dir=$2 port
    mkdir -p "$dir"
    port=$(free_port)
    addr="127.0.0.1:$port"
    extra=()
    case "$target" in
    pairbus)
        http_port=$(free_port)
        operator_addr="127.0.0.1:$(free_port)"
        "$broker_bin" serve --data "$dir/data" --device-listen "$addr" \
            --operator-listen "$operator_addr" --http-listen "127.0.0.1:$http_port" \
            >"$dir/out.log" 2>&1 &
        pid=$!
        extra=(--data "$dir/data" --operator-addr "$operator_addr")
        ;;
    mosquitto)
        cat >"$dir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
CONF
        "$MOSQUITTO" -c "$dir/mosquitto.conf" >"$dir/out.log" 2>&1 &
        pid=$!
        ;;
    nats)
        cat >"$dir/nats.conf" <<CONF
server_name: pairbus-bench
listen: 127.0.0.1:$(free_port)
jetstream { store_dir: "$dir/js" }
mqtt { listen: $addr }
CONF
        "$NATS" -c "$dir/nats.conf" >"$dir/out.log" 2>&1 &
        pid=$!
        ;;
    esac
    wait_port 127.0.0.1 "$port"
    if [[ "$target" == nats ]]; then
        # The MQTT listener opens before JetStream is ready for MQTT sessions.
        for _ in $(seq 100); do grep -q "Server is ready" "$dir/out.log" && break; sleep 0.1; done
        sleep 1
    fi
    if [[ "$target" == pairbus ]]; then
        for _ in $(seq 100); do [[ -f "$dir/data/fleet.key" ]] && break; sleep 0.1; done
    fi
}

results="$work/results.jsonl"
: >"$results"
echo "$(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq "$ROUNDS"); do
    for rate in $RATES; do
        for target in $TARGETS; do
            dir="$work/$round-$rate-$target"
            start_daemon "$target" "$dir"
            "$exe" --target "$target" --addr "$addr" "${extra[@]}" \
                --publishers "$PUBLISHERS" --rate "$rate" --duration "$DURATION" \
                --label "round $round" >"$dir/loadgen.out" ||
                echo "loadgen failed against $target (round $round, rate $rate)" >&2
            grep -v '^RESULT ' "$dir/loadgen.out" >&2 || true
            if [[ "$target" == pairbus ]]; then
                # What the broker itself counted, to tell events never committed from
                # confirmations never delivered when the load generator reports some lost.
                curl -sf "127.0.0.1:$http_port/metrics" |
                    grep -E '^pairbus_(events_(received|committed)_total|ingest_router_dropped_total|ingest_backpressure_pauses_total) ' |
                    tr '\n' ' ' >&2 || true
                echo >&2
            fi
            sed -n 's/^RESULT //p' "$dir/loadgen.out" >>"$results"
            stop_daemon
            # Each run starts on a quiet disk: without this, the writeback of one run's data
            # (NATS' JetStream files, pairbus' log) landed in a later run and slowed whichever
            # target syncs (pairbus flat out: 53k/s in such runs, 62–69k/s otherwise).
            rm -rf "$dir/data" "$dir/js"
            sync
        done
    done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in rows:
    groups.setdefault((r["mode"], r["target"]), []).append(r)
med = lambda xs: statistics.median(xs)
print()
print("| mode | target | runs | stored/s (median) | lost (total) | p50 ms | p99 ms | max ms | load during runs |")
print("|---|---|---:|---:|---:|---:|---:|---:|---|")
modes = []
for (mode, _) in groups:
    if mode not in modes:
        modes.append(mode)
for mode in modes:
    for target in ["pairbus", "mosquitto", "nats"]:
        rs = groups.get((mode, target))
        if not rs:
            continue
        loads = [float(r["load"].split()[0]) for r in rs if r["load"]]
        print(f"| {mode} | {target} | {len(rs)} | {med([r['stored_per_s'] for r in rs]):,.0f} | "
              f"{sum(r['lost'] for r in rs)} | {med([r['p50_ms'] for r in rs]):.2f} | "
              f"{med([r['p99_ms'] for r in rs]):.2f} | {med([r['max_ms'] for r in rs]):.2f} | "
              f"{min(loads):.1f}–{max(loads):.1f} |")
print()
for mode in modes:
    p = groups.get((mode, "pairbus"))
    if not p:
        continue
    ps = med([r["stored_per_s"] for r in p])
    for other in ["nats", "mosquitto"]:
        o = groups.get((mode, other))
        if o:
            print(f"{mode}: pairbus / {other} stored/s = {ps / med([r['stored_per_s'] for r in o]):.2f}")
PY
