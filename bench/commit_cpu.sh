#!/bin/bash
# usage: LOADGEN=<loadgen bench binary> bench/commit_cpu.sh <pairbus-broker binary> <label> [loadgen args...]
# Starts the broker on free loopback ports, runs the load generator against it, then reads
# the pairbus-commit and pairbus-save threads' utime+stime (/proc/<pid>/task/*/stat) and
# pairbus_events_committed_total (/metrics) before stopping the broker: CPU per committed event.
set -u
BROKER=$1; LABEL=$2; shift 2
D=$(mktemp -d)
PAIRBUS_LOG=warn $BROKER serve --data $D/data --device-listen 127.0.0.1:0 --operator-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 > $D/out 2>$D/err &
BPID=$!
for i in $(seq 50); do grep -q "device plane" $D/out 2>/dev/null && break; sleep 0.2; done
LINE=$(head -1 $D/out)
DEV=$(echo "$LINE" | sed -E 's/.*device plane ([0-9.:]+).*/\1/')
HTTP=$(echo "$LINE" | grep -oE 'http[^0-9]*[0-9.]+:[0-9]+' | grep -oE '[0-9.]+:[0-9]+' | head -1)
L0=$(cut -d' ' -f1 /proc/loadavg)
${LOADGEN:?path of the loadgen bench binary} --target pairbus --addr $DEV --data $D/data "$@" > $D/lg 2>&1
L1=$(cut -d' ' -f1 /proc/loadavg)
sleep 1
TID=$(for t in /proc/$BPID/task/*; do [ "$(cat $t/comm)" = pairbus-commit ] && basename $t; done)
read UT ST < <(awk '{print $14, $15}' /proc/$BPID/task/$TID/stat)
SID=$(for t in /proc/$BPID/task/*; do [ "$(cat $t/comm)" = pairbus-save ] && basename $t; done)
SAVE=0; [ -n "$SID" ] && SAVE=$(awk '{print $14+$15}' /proc/$BPID/task/$SID/stat)
PROC=$(awk '{print $14+$15}' /proc/$BPID/stat)
TICK=$(getconf CLK_TCK)
COMMITTED=$(curl -s http://$HTTP/metrics | awk '/^pairbus_events_committed_total/{print $2}')
kill -TERM $BPID; wait $BPID
STORED=$(grep -oE 'stored[^0-9]*[0-9,.]+ */s|[0-9,.]+ stored/s' $D/lg | head -1)
python3 - "$LABEL" $UT $ST $TICK $COMMITTED "$L0" "$L1" $SAVE $PROC <<'PY'
import sys
l,ut,st,tick,c,l0,l1,save,proc=sys.argv[1:10]
cpu=(int(ut)+int(st))/int(tick)
save=int(save)/int(tick); proc=int(proc)/int(tick); c=int(c)
print(f"{l}: commit thread cpu {cpu:.2f}s committed {c} -> {cpu/c*1e6:.2f} us/event; save thread {save/c*1e6:.2f} us/event; whole broker {proc/c*1e6:.2f} us/event; load {l0}->{l1}")
PY
grep -iE "stored|lost|events/s" $D/lg | head -5
rm -rf $D
