#!/bin/bash
# Steady-state bytes per second with node options: `bench sweep` of one
# cluster, VALUE (default 65536) bytes on KEYS (default 1,000) keys at 256
# in flight, WARMUP (default 14) s of warm-up (past the first snapshots and
# compactions, so the log reuses its segments as it does in a long run),
# then 10 s measured; the disk's
# bytes over 5 s inside the measured part, and disk bytes per log byte
# (three replicas' values).
# usage: bench/scripts/steady_bytes.sh NODE_BIN OUT_DIR "NODE OPTIONS"
# e.g.   bench/scripts/steady_bytes.sh target/production/node /tmp/s1 "--snapshot-log-bytes 1GiB"
bin=$1; out=$2; opt=$3
rm -rf $out
${BENCH_BIN:-$(dirname "$0")/../../target/production/bench} sweep --node-bin $bin --node-option "$opt" --inflight 256 --value-size ${VALUE:-65536} --keys ${KEYS:-1000} --duration 10s --warmup ${WARMUP:-14}s --no-floor --out-dir $out > $out.log 2>&1 &
p=$!
sleep $(( ${WARMUP:-14} + 6 )); a=$(awk -v d=${DISK:-vda} '$3==d' /proc/diskstats); sleep 5; b=$(awk -v d=${DISK:-vda} '$3==d' /proc/diskstats)
wait $p
f=$(ls $out/0*.json)
python3 - "$a" "$b" "$f" "$opt" "$bin" ${VALUE:-65536} <<'PY'
import sys,json
a=list(map(int,sys.argv[1].split()[3:])); b=list(map(int,sys.argv[2].split()[3:])); d=[y-x for x,y in zip(a,b)]
r=json.load(open(sys.argv[3])); n=r['throughput_per_second']; v=int(sys.argv[6])
mb=d[6]*512/5e6
print(f"{sys.argv[5]:16s} [{sys.argv[4]}] {n:8.0f} w/s  values {n*v/1e6:6.1f} MB/s/replica  disk {mb:6.0f} MB/s busy {d[9]/50:3.0f} %  disk/log {mb/(3*n*v/1e6):.2f}  cpu/w {r['cpu']['cpu_us_per_write']:.0f} us  rss {r['cpu'].get('resident_bytes_max',0)>>20} MiB")
PY
