#!/bin/bash
# writes/s, disk writes per client write, and node CPU per write at 256 in flight with S shards.
# usage (from the repository root, after `cargo build --profile production -p node -p bench`): bench/scripts/shards_cost.sh SHARDS
S=$1; B=${BIN_DIR:-target/production}
timeout 120 $B/bench sweep --node-bin $B/node --node-shards $S --threads 2 --inflight 256 --duration 16s --warmup 2s --no-floor > /tmp/sh-$S.out 2>&1 &
sleep 7
pids=$(pgrep -f "$B/node serve")
cpu() { set -- $(cut -d' ' -f14,15 /proc/$1/stat); echo $(($1+$2)); }
declare -A c; for p in $pids; do c[$p]=$(cpu $p); done
a=$(awk '$3=="vda"{print $8}' /proc/diskstats); sleep 8; b=$(awk '$3=="vda"{print $8}' /proc/diskstats)
t=0; for p in $pids; do t=$((t + $(cpu $p) - c[$p])); done
wait
ops=$(grep -E "^inflight=256 value=256B +[0-9]" /tmp/sh-$S.out | awk '{gsub(",","",$3); print $3}')
python3 -c "ops=$ops; print('shards $S writes/s %d disk writes/s %.0f per 1000 writes %.1f node CPU us/write %.2f' % (ops, ($b-$a)/8, ($b-$a)/8*1000/ops, $t/$(getconf CLK_TCK)*1e6/(ops*8)))"
