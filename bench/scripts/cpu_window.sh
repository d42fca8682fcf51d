#!/bin/bash
# The nodes' CPU per write after a warm-up, measured outside the bench (see
# cpu_sweep.sh for why).
# usage: bench/scripts/cpu_window.sh BENCH NODE OUT_DIR WARMUP_S DURATION_S [more `bench sweep` arguments]
#   e.g. bench/scripts/cpu_window.sh target/production/bench target/production/node /tmp/run1 15 15 --no-floor
# Keeps (time, user ticks, system ticks) of the NODE processes every 0.25 s
# during `BENCH sweep --inflight 256 --warmup WARMUP_S --duration DURATION_S`;
# the load's end is the last sample at which the nodes still used more than
# half their busy rate; the CPU is taken over the DURATION_S before it and
# divided by the result file's writes.
bench=$1; node=$2; out=$3; warmup=$4; duration=$5; shift 5
real=$(readlink -f "$node")
"$bench" sweep --node-bin "$node" --inflight 256 --duration "${duration}s" --warmup "${warmup}s" --out-dir "$out" --quiet "$@" > "$out.log" 2>&1 &
bench_pid=$!
: > "$out.samples"
# Forks one `pidof` per sample and nothing else (see cpu_sweep.sh).
exec {wait_fd}<> <(:)
while kill -0 $bench_pid 2>/dev/null; do
  u=0; s=0; n=0
  read -r -a pids < <(pidof -- "$real")
  for pid in "${pids[@]}"; do
    read -r -a f 2>/dev/null < /proc/$pid/stat || continue
    u=$((u + f[13])); s=$((s + f[14])); n=$((n + 1))
  done
  [ $n -gt 0 ] && echo "$EPOCHREALTIME $u $s $n" >> "$out.samples"
  read -r -t 0.25 -u $wait_fd
done
python3 - "$out" "$duration" "$(getconf CLK_TCK)" <<'PY'
import glob, json, sys
out, duration, hz = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = [tuple(map(float, line.split())) for line in open(out + '.samples')]
nodes = max(row[3] for row in rows)
rows = [row for row in rows if row[3] == nodes]
rates = [(b[1] + b[2] - a[1] - a[2]) / (b[0] - a[0]) for a, b in zip(rows, rows[1:])]
busy = sorted(rates)[len(rates) * 3 // 4]
end = rows[max(i for i, rate in enumerate(rates) if rate > 0.5 * busy) + 1]
start = min(rows, key=lambda row: abs(row[0] - (end[0] - duration)))
result = json.load(open(glob.glob(out + '/*.json')[0]))
writes = result['total']['count']
user, system = (end[1] - start[1]) / hz, (end[2] - start[2]) / hz
print(f"writes/s {result['total']['throughput_per_second']:.0f}, p99 {result['total']['latency_us']['p99']:.0f} us, "
      f"window {end[0] - start[0]:.2f} s, CPU per write {(user + system) * 1e6 / writes:.2f} us "
      f"(user {user * 1e6 / writes:.2f}, system {system * 1e6 / writes:.2f}), "
      f"bench's figure {(result.get('cpu') or {}).get('cpu_us_per_write')}")
PY
