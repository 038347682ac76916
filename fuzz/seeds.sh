#!/usr/bin/env bash
# Writes a few seed inputs for the `ring_ops` fuzz target into fuzz/corpus/ring_ops (generated,
# never committed: fuzz/corpus is ignored). Bytes, as `run_bytes` decodes them: one byte for
# the ring size and start mode, 8 for the first ticket, then (op, arg) pairs: op % 8 is
# Enqueue, Poll, Release, CheckHead, Step(1-4), Kill, Reuse, Step(255); arg % 5 the process.
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
echo "seeds: $(ls "$dir" | wc -l) files in $dir"
