#!/bin/bash
# What bounds a local three-node cluster's writes: the CPU (is some thread
# runnable all the time, on a CPU or waiting for one?) or the disk (busy,
# per-request time)? A `node dev` cluster under `bench run`, 1,000 keys;
# over 5 s inside the measured part: each thread's CPU share and run-queue
# wait share (/proc/PID/task/TID/schedstat), and the disk's requests,
# bytes, busy time and per-request write time (/proc/diskstats).
# usage: bench/scripts/threads_and_disk.sh VALUE_SIZE INFLIGHT OUT_DIR
# (WARMUP and DURATION in seconds, default 2 and 12; DISK, default vda;
# NODE_BIN and BENCH_BIN, default this checkout's production builds)
set -e
value=$1; inflight=$2; out=$3
here=$(dirname "$0")/../../target/production
node=$(realpath "${NODE_BIN:-$here/node}"); bench=$(realpath "${BENCH_BIN:-$here/bench}")
disk=${DISK:-vda}
rm -rf "$out"; mkdir -p "$out"
"$node" dev --no-resp --no-metrics --log-level warn --data-root "$out/data" > "$out/dev.log" 2>&1 &
dev=$!
sleep 4
"$bench" run --addr 127.0.0.1:7101,127.0.0.1:7103,127.0.0.1:7105 --inflight "$inflight" --value-size "$value" --keys 1000 --duration ${DURATION:-12}s --warmup ${WARMUP:-2}s --no-floor --quiet --out "$out/run.json" > "$out/run.log" 2>&1 &
run=$!
sleep $(( ${WARMUP:-2} + 5 ))
snap() { for p in $(pgrep -f "$node serve") $(pgrep -f "$bench run"); do for t in /proc/$p/task/*; do echo "$(cat $t/comm) $(cat $t/schedstat)"; done; done; awk -v d=$disk '$3==d' /proc/diskstats; }
snap > "$out/a"; sleep 5; snap > "$out/b"
wait $run; kill -INT $dev; wait $dev || true
python3 - "$out" <<'PY'
import sys,collections
out=sys.argv[1]
def load(f):
    th=collections.defaultdict(lambda:[0,0,0]); disk=None
    for l in open(f):
        p=l.split()
        if len(p)>10: disk=list(map(int,p[3:])); continue
        c=p[0]; th[c][0]+=int(p[1]); th[c][1]+=int(p[2]); th[c][2]+=int(p[3])
    return th,disk
a,da=load(out+'/a'); b,db=load(out+'/b')
print('thread: cpu share of 5 s, run-queue wait share, wait per switch (us)')
for c in sorted(b):
    cpu=(b[c][0]-a[c][0])/5e9; wait=(b[c][1]-a[c][1])/5e9; sw=b[c][2]-a[c][2]
    if cpu>0.01: print(f'  {c:20s} cpu {cpu*100:5.1f} %  waiting {wait*100:5.1f} %  {wait*5e6/max(1,sw):6.1f} us/slice')
d=[y-x for x,y in zip(da,db)]
w=d[4]
print(f'disk: {w/5:.0f} writes/s, {d[6]*512/5e6:.0f} MB/s, {d[6]*512/max(1,w)/1e3:.0f} KB each, {d[7]/max(1,w)*1000:.0f} us per write, busy {d[9]/50:.0f} %, flushes {d[-2]/5:.0f}/s at {d[-1]/max(1,d[-2])*1000:.0f} us')
PY
tail -4 "$out/run.log" | head -3
