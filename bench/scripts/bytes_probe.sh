#!/bin/bash
# Issue 21 item 3: what bounds bytes per second. One `bench sweep` point
# (local three-node cluster, 1,000 keys, 16 s measured after 2 s of warm-up)
# and, over 8 s in its middle, the disk's written MB/s and busy share
# (/proc/diskstats: sectors written, io_ticks) and the machine's busy CPU
# share (/proc/stat).
# usage: bench/scripts/bytes_probe.sh NODE_BIN VALUE_BYTES INFLIGHT ["NODE SERVE OPTIONS"]
set -e
bin=$1; value=$2; inflight=$3; options=$4
bench=${BENCH_BIN:-$(dirname "$0")/../../target/production/bench}
disk=${DISK:-$(lsblk -ndo NAME "$(df --output=source / | tail -1)" 2>/dev/null || echo vda)}
out=$(mktemp -d /tmp/bytes-probe.XXXXXX)
args=(sweep --node-bin "$bin" --inflight "$inflight" --value-size "$value" --keys 1000
  --duration 16s --warmup 2s --no-floor --out-dir "$out/results")
[ -n "$options" ] && args+=(--node-option "$options")
"$bench" "${args[@]}" > "$out/sweep.log" 2>&1 &
sweep=$!
sleep 9
read -r written0 ticks0 < <(awk -v d="$disk" '$3==d {print $10, $13}' /proc/diskstats)
read -ra cpu0 < <(head -1 /proc/stat)
sleep 8
read -r written1 ticks1 < <(awk -v d="$disk" '$3==d {print $10, $13}' /proc/diskstats)
read -ra cpu1 < <(head -1 /proc/stat)
wait $sweep
total=0; for i in 1 2 3 4 5 6 7 8; do total=$((total + cpu1[i] - cpu0[i])); done
idle=$(( cpu1[4] + cpu1[5] - cpu0[4] - cpu0[5] ))
echo "disk $(( (written1 - written0) * 512 / 8 / 1000000 )) MB/s written, busy $(( (ticks1 - ticks0) / 80 ))%, CPU busy $(( 100 * (total - idle) / total ))%"
grep -E "^inflight=[0-9]+ value=[0-9]+B: [0-9,]+ ops/s" "$out/sweep.log" | tail -1
echo "sweep output: $out"
