#!/bin/bash
# Two node builds restarted alternately on the same log (a data directory
# `restart_floor.sh` left, with its `restart-probe` key): time from the
# process's start to its first linearizable read, the peak resident memory
# then (VmHWM), and the node's own recovery lines (`--log-level info`).
# Drops the page cache before each restart (root).
# usage: bench/scripts/restart_ab.sh OLD_NODE NEW_NODE DIR [ROUNDS] [node options...]
set -e
old_node=$1; new_node=$2; dir=$3; rounds=${4:-3}; shift 4 || shift $#
export NODE_TOKEN=restart-floor-token
addr=127.0.0.1:28001
for round in $(seq 1 $rounds); do
 for v in old new; do
  if [ $v = old ]; then node=$old_node; else node=$new_node; fi
  sync; echo 3 > /proc/sys/vm/drop_caches
  start=$(date +%s.%N)
  "$node" serve --node-id 1 --cluster-id 1 --peers 1=127.0.0.1:28000 --peer-addr 127.0.0.1:28000 \
    --client-addr $addr --data-dir "$dir" --snapshot-entries 100000000 --snapshot-log-bytes 0 \
    --log-level info --pin-cores false "$@" > "$dir-$v.log" 2>&1 &
  pid=$!
  until "$node" kv --addr $addr --timeout 1s get restart-probe 2>/dev/null | grep -q present; do
    kill -0 $pid 2>/dev/null || { echo "the node exited: $(tail -2 "$dir-$v.log")"; exit 1; }
    sleep 0.02
  done
  end=$(date +%s.%N)
  hwm=$(awk '/VmHWM/ {print int($2/1024)}' /proc/$pid/status)
  echo "round $round $v: $(python3 -c "print(f'{$end - $start:.2f}')") s, peak ${hwm} MiB; $(grep -oE 'applied the committed log[^"]*|took=[0-9.]+[a-z]+' "$dir-$v.log" | tr '\n' ' ' | cut -c1-200)"
  kill $pid; while kill -0 $pid 2>/dev/null; do sleep 0.05; done
 done
done
