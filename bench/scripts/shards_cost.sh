#!/bin/bash
# writes/s, disk writes per client write, and node CPU per write at 256 in flight with S shards.
# usage (from the repository root, after `cargo build --profile production -p node -p bench`):
#   bench/scripts/shards_cost.sh SHARDS ["NODE OPTIONS"]   e.g. bench/scripts/shards_cost.sh 4 "--cores 2"
S=$1; OPT=${2:-}; B=${BIN_DIR:-target/production}
timeout 120 $B/bench sweep --node-bin $B/node --node-shards $S --node-option "$OPT" --threads 2 --inflight 256 --duration 16s --warmup 2s --no-floor > /tmp/sh-$S.out 2>&1 &
sleep 7
pids=$(pgrep -f "$B/node serve")
cpu() { set -- $(cut -d' ' -f14,15 /proc/$1/stat); echo $(($1+$2)); }
declare -A c; for p in $pids; do c[$p]=$(cpu $p); done
a=$(awk '$3=="vda"{print $8}' /proc/diskstats); sleep 8; b=$(awk '$3=="vda"{print $8}' /proc/diskstats)
t=0; for p in $pids; do t=$((t + $(cpu $p) - c[$p])); done
wait
ops=$(grep -E "^inflight=256 value=256B +[0-9]" /tmp/sh-$S.out | awk '{gsub(",","",$3); print $3}')
line=$(grep -E "^inflight=256 value=256B +[0-9]" /tmp/sh-$S.out | awk '{print "p50", $4, "p99", $6, "p99.9", $7, "errors", $10}')
export RETRIED=$(python3 -c "import json,glob; d=json.load(open(glob.glob('$(ls -td bench-results/sweep-* | head -1)/*.json')[0])); print(d.get('retried') or {})")
export LINE="$line" OPT
python3 -c "import os; ops=$ops; print('shards $S [%s] writes/s %d %s disk writes per 1000 writes %.1f node CPU us/write %.2f retried %s' % (os.environ['OPT'], ops, os.environ['LINE'], ($b-$a)/8*1000/ops, $t/$(getconf CLK_TCK)*1e6/(ops*8), os.environ['RETRIED']))"
