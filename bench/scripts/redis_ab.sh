#!/bin/bash
# One round of the RESP comparison in bench/RESULTS.md ("Again after batched pipelines"):
# usage: bench/scripts/redis_ab.sh PATH/TO/node   (needs redis-server and redis-tools)
# node dev cluster (leader's RESP port) vs redis-server appendfsync always; SET/INCR/GET, random and fixed keys.
NODE=$1; R=/tmp/rd; pkill -f "node dev --base-port 25100"; pkill -f "redis-server.*25500"; sleep 1
rm -rf $R && mkdir -p $R/redis
$NODE dev --base-port 25100 --data-root $R/node --log-level error > $R/dev.out 2>&1 &
DEV=$!
redis-server --port 25500 --appendonly yes --appendfsync always --save "" --dir $R/redis --daemonize yes > /dev/null
sleep 5
leader=""
for p in 25101 25103 25105; do
  if NODE_TOKEN=dev-cluster-token $NODE admin --addr 127.0.0.1:$p status 2>/dev/null | grep -q '"role": *"Leader"'; then leader=$p; fi
done
case $leader in 25101) rp=25200;; 25103) rp=25201;; 25105) rp=25202;; *) echo "no leader"; exit 1;; esac
for keys in "-r 100000" ""; do
  for sys in node redis; do
    if [ $sys = node ]; then port=$rp; auth="-a dev-cluster-token"; else port=25500; auth=""; fi
    redis-benchmark -h 127.0.0.1 -p $port $auth -t set,incr,get -c 50 -P 16 -d 256 -n 100000 $keys --csv 2>/dev/null | grep -v '^"test"' | sed "s/^/$sys,${keys:+random}${keys:-fixed},/"
  done
done
redis-cli -p 25500 shutdown nosave >/dev/null 2>&1; kill $DEV; wait $DEV 2>/dev/null
