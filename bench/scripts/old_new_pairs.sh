#!/bin/bash
# Alternating old/new sweeps (bench/RESULTS.md, "This session's change, old against new"):
# needs /tmp/node-prod, /tmp/bench-prod (old) and /tmp/node-head, /tmp/bench-head (new), production builds.
for i in 1 2 3 4; do
  for v in prod head; do
    timeout 150 /tmp/bench-$v sweep --node-bin /tmp/node-$v --inflight 1,256 --duration 8s --warmup 2s --no-floor --quiet --out-dir /tmp/abh/$v-$i > /tmp/abh/$v-$i.log 2>&1
    grep -E "^inflight=(1|256) value=256B +[0-9]" /tmp/abh/$v-$i.log | sed "s/^/$i $v $(date +%T) /"
  done
done
