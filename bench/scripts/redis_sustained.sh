#!/bin/bash
# Sustained RESP comparison (issue 19): node dev's leader against redis-server
# (appendonly yes, appendfsync always) on the same disk, same client, same run.
# usage: bench/scripts/redis_sustained.sh PATH/TO/node [REQUESTS] [ROUNDS]
# Each round runs, for SET and INCR with random keys (-r 100000) and fixed keys,
# redis-benchmark -c 50 -P 16 -d 256 -n REQUESTS against the node leader's RESP
# port and against Redis in turn, and prints the CSV lines prefixed with
# round, system and key mode. REQUESTS defaults to 2,000,000 (about 7 s per
# test here): a run of 100,000 lasts a fraction of a second and measures
# mostly its start. Needs redis-server and redis-tools. RESULTS_DIR (default
# /tmp/redis-sustained) holds both systems' data: put it on the file system
# to compare on (bench/RESULTS.md compares a journaled ext4 with the root one).
NODE=${1:?usage: redis_sustained.sh NODE [REQUESTS] [ROUNDS]}; N=${2:-2000000}; ROUNDS=${3:-3}
R=${RESULTS_DIR:-/tmp/redis-sustained}; pkill -f "node dev --base-port 25100"; pkill -f "redis-server.*25500"; sleep 1
rm -rf "$R" && mkdir -p "$R/redis"
"$NODE" dev --base-port 25100 --data-root "$R/node" --log-level error > "$R/dev.out" 2>&1 &
DEV=$!
redis-server --port 25500 --appendonly yes --appendfsync always --save "" --dir "$R/redis" --daemonize yes > /dev/null
sleep 5
leader=""
for p in 25101 25103 25105; do
  if NODE_TOKEN=dev-cluster-token "$NODE" admin --addr 127.0.0.1:$p status 2>/dev/null | grep -q '"role": *"Leader"'; then leader=$p; fi
done
case $leader in 25101) rp=25200;; 25103) rp=25201;; 25105) rp=25202;; *) echo "no leader"; exit 1;; esac
echo "round,system,keys,test,rps,avg_ms,min_ms,p50_ms,p95_ms,p99_ms,max_ms"
for round in $(seq "$ROUNDS"); do
  for keys in "-r 100000" ""; do
    for test in set incr; do
      for sys in node redis; do
        if [ $sys = node ]; then port=$rp; auth="-a dev-cluster-token"; else port=25500; auth=""; fi
        redis-benchmark -h 127.0.0.1 -p $port $auth -t $test -c 50 -P 16 -d 256 -n "$N" $keys --csv 2>/dev/null \
          | grep -v '^"test"' | tr -d '"' | sed "s/^/$round,$sys,${keys:+random}${keys:-fixed},/"
      done
    done
  done
done
redis-cli -p 25500 shutdown nosave >/dev/null 2>&1; kill $DEV; wait $DEV 2>/dev/null
