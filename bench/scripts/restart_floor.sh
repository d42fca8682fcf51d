#!/bin/bash
# Issue 21 item 4, the system figure: a single node restarted on a log of
# about 1 GiB (64 KiB values, no snapshot, so the whole log is read,
# checked and applied), time from its start to its first linearizable
# read, against the machine's direct sequential read of the same bytes
# (`bench floor`'s read bandwidth). Drops the page cache (root).
# usage: bench/scripts/restart_floor.sh NODE_BIN [ROUNDS] [DIR]
# (NODE_ARGS: more `node serve` options, e.g. NODE_ARGS="--shards 4";
# LOAD: the `bench run` load that writes the log, by default 64 KiB values
# in an open loop, e.g. LOAD="--value-size 256 --keys 100000 --inflight 256
# --duration 25s" for about 1.8 GB of small writes)
set -e
node=$1; rounds=${2:-3}; dir=${3:-/work/restart-floor}
bench=${BENCH_BIN:-$(dirname "$0")/../../target/production/bench}
export NODE_TOKEN=restart-floor-token
addr=127.0.0.1:28001
by_bytes=""; "$node" serve --help | grep -q snapshot-log-bytes && by_bytes="--snapshot-log-bytes 0"
serve() {
  "$node" serve --node-id 1 --cluster-id 1 --peers 1=127.0.0.1:28000 --peer-addr 127.0.0.1:28000 \
    --client-addr $addr --data-dir "$dir" --snapshot-entries 100000000 $by_bytes \
    --log-level error --pin-cores false $NODE_ARGS > "$dir.log" 2>&1 &
  echo $!
}
rm -rf "$dir" && mkdir -p "$dir"
pid=$(serve)
sleep 1
# An open loop at a fixed rate, so the log is about 1.1 GB however fast
# the node is (a closed loop for 6 s wrote 3-4 GB by 2026-12-05).
load=${LOAD:-"--value-size 65536 --keys 1000 --rate 2800 --inflight-max 64 --duration 6s"}
"$bench" run --addr $addr $load --warmup 0s --quiet --no-floor > /dev/null
"$node" kv --addr $addr put restart-probe present > /dev/null
stop() { kill "$1"; while kill -0 "$1" 2>/dev/null; do sleep 0.05; done; }
stop $pid
bytes=$(find "$dir" -name "*.wal" -printf "%s\n" | awk "{s+=\$1} END {printf \"%d\", s}")
read_mbs=$("$bench" floor --out "$dir-floor.json" 2>/dev/null | awk '/direct sequential read/ {print $(NF-3)}' | head -1)
floor=$(python3 -c "print(f'{$bytes / 1e6 / $read_mbs:.2f}')")
echo "log segments: $((bytes / 1000000)) MB; direct sequential read $read_mbs MB/s: the floor is $floor s"
for round in $(seq 1 "$rounds"); do
  sync; echo 3 > /proc/sys/vm/drop_caches
  start=$(date +%s.%N)
  pid=$(serve)
  until "$node" kv --addr $addr --timeout 1s get restart-probe 2>/dev/null | grep -q present; do
    kill -0 $pid 2>/dev/null || { echo "the node exited: $(tail -2 "$dir.log")"; exit 1; }
    sleep 0.02
  done
  end=$(date +%s.%N)
  echo "round $round: first linearizable read after $(python3 -c "print(f'{$end - $start:.2f} s, {($end - $start) / $floor:.2f}x the floor')")"
  stop $pid
done
