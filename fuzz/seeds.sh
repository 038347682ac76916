#!/usr/bin/env bash
# Writes a few seed inputs for the `ring_ops` fuzz target into fuzz/corpus/ring_ops (generated,
# never committed: fuzz/corpus is ignored). Bytes, as `run_bytes` decodes them: one byte for
# the ring size and start mode, 8 for the first ticket, then (op, arg) pairs: op % 9 is
# Enqueue, Poll, Release, CheckHead, Step(1-4), Kill, Reuse, Step(255), Repair; arg % 5 the
# process. A first byte with bit 5 set makes a bounded ring, whose ops are op % 11: the same
# first eight, then Bypass (8), Park (9) and Repair (10).
set -euo pipefail
dir="$(dirname "$0")/corpus/ring_ops"
mkdir -p "$dir"
hex() { printf '%b' "$(printf '\\x%02x' "$@")"; }
ring4() { hex 1 0 0 0 0 0 0 0 0; }            # 4 slots, first ticket 0
whole() { hex "$1" "$2" 7 "$2"; }              # start an operation, run it to its end
lap() { # process $1 takes and releases the token once
  whole 0 "$1"; whole 1 "$1"; whole 3 "$1"; whole 1 "$1"; whole 2 "$1"
}
# Issue 9: A stalls one step into its exclusive release while B goes round the ring 3 times.
{ ring4; whole 0 0; whole 1 0; hex 2 0 4 0; for _ in $(seq 12); do lap 1; done; hex 7 0; } \
  >"$dir/stalled-releaser"
# The same, but A is killed there.
{ ring4; whole 0 0; whole 1 0; hex 2 0 4 0 5 0; for _ in $(seq 12); do lap 1; done; } \
  >"$dir/killed-releaser"
# Shared holders and an exclusive waiter, one shared releaser stalled.
{ ring4; whole 0 128; whole 1 128; whole 0 129; whole 1 129; whole 0 2; hex 2 0;
  for _ in $(seq 6); do whole 1 2; hex 3 3; done; whole 2 1; hex 7 0; whole 1 2; } \
  >"$dir/shared-then-exclusive"
 # Bounded: A holds, B queues and sleeps, A releases (B's turn, asleep), C goes ahead of B,
# B polls (must wait), C is killed inside, B polls again (reclaims, enters), then laps.
bounded4() { hex 33 0 0 0 0 0 0 0 0; }       # 4 slots, bounded, first ticket 0
{ bounded4; whole 0 0; whole 1 0; whole 0 1; whole 9 1; whole 2 0; whole 8 2; hex 1 1 7 1;
  hex 5 2; whole 1 1; whole 3 1; whole 1 1; whole 2 1; for _ in $(seq 6); do lap 3; done; } \
  >"$dir/bounded-bypass-killed"
# Bounded: a bypasser stalled between its CAS and its second look while the head enters.
{ bounded4; whole 0 0; whole 1 0; whole 0 1; whole 9 1; whole 2 0; hex 8 2 4 2; whole 1 1;
  hex 7 2; whole 1 1; whole 2 1; for _ in $(seq 6); do lap 2; done; } >"$dir/bounded-stalled-bypasser"
echo "seeds: $(ls "$dir" | wc -l) files in $dir"
