#!/bin/bash
# Issue 21 item 3: 4 KiB and 64 KiB values against the synced write bandwidth
# floor, one binary after another in alternating rounds.
# usage: bench/scripts/bytes_floor.sh ROUNDS OUT_DIR NAME=NODE_BIN [NAME=NODE_BIN ...]
# Each run: `bench sweep` (the floor measured first, then a fresh local
# three-node cluster per point) at 64 and 256 in flight, 1,000 keys (a state
# that stops growing, so the runs measure the log rather than page faults),
# plus the disk's written bytes over the whole sweep from /proc/diskstats.
set -e
rounds=$1; out=$2; shift 2
mkdir -p "$out"
bench=${BENCH_BIN:-$(dirname "$0")/../../target/production/bench}
disk=${DISK:-$(lsblk -ndo NAME "$(df --output=source / | tail -1)" 2>/dev/null || echo vda)}
for round in $(seq 1 "$rounds"); do
  for pair in "$@"; do
    name=${pair%%=*}; bin=${pair#*=}
    dir=$out/$name-$round
    before=$(awk -v d="$disk" '$3==d {print $10}' /proc/diskstats)
    "$bench" sweep --node-bin "$bin" --inflight 64,256 --value-size 4096,65536 --keys 1000 \
      --duration 8s --warmup 2s --out-dir "$dir" > "$dir.log" 2>&1
    after=$(awk -v d="$disk" '$3==d {print $10}' /proc/diskstats)
    echo "== $name round $round: disk wrote $(( (after - before) * 512 / 1000000 )) MB over the sweep"
    sed -n '/of floor/,$p' "$dir.log" | grep -E '^inflight'
  done
done
