#!/bin/bash
# The nodes' CPU per write over one sweep at 256 in flight, measured outside
# the bench, so that builds whose bench cannot report it (older protocol
# versions, driven by their own bench) are measured the same way.
# usage: bench/scripts/cpu_sweep.sh BENCH NODE OUT_DIR [more `bench sweep` arguments]
#   e.g. bench/scripts/cpu_sweep.sh target/production/bench target/production/node /tmp/run1 --no-floor
# Samples every process whose executable is NODE every 20 ms (/proc/PID/stat
# utime, stime, minflt; the processes are found with `pidof` every 0.5 s),
# keeping each pid's last values, during
# `BENCH sweep --inflight 256 --duration 10s --warmup 0s`; prints the nodes'
# minor faults, then CPU over their whole life divided by the writes in the
# result file (`total.count`), split into user and system time, and the
# bench's own figure where it has one (window only; agrees to 1-2 %).
bench=$1; node=$2; out=$3; shift 3
real=$(readlink -f "$node")
declare -A total user faults
"$bench" sweep --node-bin "$node" --inflight 256 --duration 10s --warmup 0s --out-dir "$out" --quiet "$@" > "$out.log" 2>&1 &
bench_pid=$!
# The sampling forks nothing but one `pidof` every 25 samples (the nodes
# start once per sweep), and waits with a builtin `read -t` rather than
# `sleep`: an earlier version forked `readlink` for every process every
# 20 ms, which took about a quarter of the two cores it was measuring.
exec {wait_fd}<> <(:)
pids=(); sample=0
while kill -0 $bench_pid 2>/dev/null; do
  if [ $((sample % 25)) = 0 ]; then read -r -a pids < <(pidof -- "$real"); fi
  sample=$((sample + 1))
  for pid in "${pids[@]}"; do
    read -r -a f 2>/dev/null < /proc/$pid/stat || continue
    total[$pid]=$(( f[13] + f[14] )); user[$pid]=${f[13]}; faults[$pid]=${f[9]}
  done
  read -r -t 0.02 -u $wait_fd
done
sum() { local s=0 v; for v in "$@"; do s=$((s + v)); done; echo $s; }
echo "nodes: ${#total[@]}, minor faults: $(sum "${faults[@]}")"
python3 - "$(ls "$out"/*.json | head -1)" "$(sum "${total[@]}")" "$(sum "${user[@]}")" "$(getconf CLK_TCK)" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))
ticks, user, hz = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
writes = result['total']['count']
per_write = lambda t: t / hz * 1e6 / writes
print(f"writes/s {result['total']['throughput_per_second']:.0f}, CPU per write {per_write(ticks):.2f} us "
      f"(user {per_write(user):.2f}, system {per_write(ticks - user):.2f}), "
      f"bench's figure {(result.get('cpu') or {}).get('cpu_us_per_write')}")
PY
