#!/bin/bash
# How often must routers share their in-flight load? 3 nodes x 2 real-time replicas,
# one open-loop load generator per node; load sharing every 0 (off) / 1000 / 200 / 50 ms.
B="${SLUICE:-$(cd "$(dirname "$0")/.." && pwd)/target/release/sluice}"
WORK=$(mktemp -d); cd "$WORK"; echo "results in $WORK"
for LS in 0 1000 200 50; do
  rm -rf d1 d2 d3; pkill -f 'data-dir d[123]' ; sleep 1
  $B cluster init --data-dir d1 > /dev/null
  T=$(cat d1/tls/join-token)
  $B node start --data-dir d1 --listen 127.0.0.1:19001 --http 127.0.0.1:19101 --rack r1 --replicas 2 --load-share-ms $LS > n1.log 2>&1 &
  sleep 2
  $B node start --data-dir d2 --listen 127.0.0.1:19002 --http 127.0.0.1:19102 --rack r2 --replicas 2 --load-share-ms $LS --join 127.0.0.1:19001 --token $T > n2.log 2>&1 &
  sleep 2
  $B node start --data-dir d3 --listen 127.0.0.1:19003 --http 127.0.0.1:19103 --rack r3 --replicas 2 --load-share-ms $LS --join 127.0.0.1:19001 --token $T > n3.log 2>&1 &
  sleep 8
  for p in 1 2 3; do
    $B loadgen --url http://127.0.0.1:1910$p --rate 12 --duration 30 --warmup 5 --prompt-words 4000 --max-tokens 32 --ignore-eos --sessions 200 > lg_${LS}_$p.txt 2>&1 &
  done
  wait $(jobs -p | tail -3) 2>/dev/null
  sleep 37
  pkill -f 'data-dir d[123]'; sleep 2
done
echo done > DONE
