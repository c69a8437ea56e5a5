#!/usr/bin/env bash
# How long `dab run` takes to restore the state of a window with N open
# groups (issue 13: 1,000,000 groups in under 2 s), end to end: fjall
# reads, the engine rebuilt, the seen UIDs loaded.
#
#   scripts/bench-window-restore.sh            # N=1000000, a release build
#   N=200000 DAB_BIN=path/to/dab scripts/bench-window-restore.sh
#
# A generator feeds a tumbling hour window grouped by offset (every event
# its own group) until N groups are open; SIGTERM checkpoints them; a
# second `dab run` on the same --state-dir logs "window state restored"
# with the seconds it took. The ceiling printed beside it is reading the
# state directory's files once with cat (page cache warm, as for the
# restore).
set -euo pipefail
N=${N:-1000000}
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
if [[ -z "${DAB_BIN:-}" ]]; then
  (cd "$root" && cargo build --release -q -p dab-cli)
  DAB_BIN=$target/release/dab
fi
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/t.dab" <<EOF
w.NewPipeline().In(Gen).Window(tumbling = 1h, max_groups = $N).Aggregate(by = [offset], as = "S", n = Count()).Out(Blackhole)
EOF
cat > "$dir/dab.yaml" <<'EOF'
sources:
  Gen: { kind: generator, count: 0, types: [A], payload_bytes: 10 }
EOF
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cd "$dir"
"$DAB_BIN" run t.dab --state-dir state --metrics "127.0.0.1:$port" 2> fill.log &
pid=$!
for _ in $(seq 600); do
  open=$(curl -s "127.0.0.1:$port/metrics" | awk '/^dab_window_open_groups/ {print $2}')
  [[ -n "$open" && "${open%.*}" -ge "$N" ]] && break
  sleep 0.1
done
kill -TERM "$pid"
wait "$pid" || true
"$DAB_BIN" run t.dab --state-dir state --log-format json 2> restore.log &
pid=$!
for _ in $(seq 600); do
  grep -q "window state restored" restore.log && break
  sleep 0.1
done
kill -TERM "$pid"
wait "$pid" || true
line=$(grep "window state restored" restore.log | head -1)
[[ -n "$line" ]] || { echo "no restore logged"; cat restore.log; exit 1; }
secs=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["fields"]["seconds"])' "$line")
groups=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["fields"]["groups"])' "$line")
uids=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["fields"]["uids"])' "$line")
bytes=$(du -sb state | cut -f1)
t0=$(date +%s.%N); find state -type f -exec cat {} + > /dev/null; t1=$(date +%s.%N)
ceiling=$(python3 -c "print(round($t1 - $t0, 3))")
echo "restore: $groups groups, $uids UIDs, state $((bytes / 1048576)) MiB: $secs s (reading the files once: $ceiling s)"
