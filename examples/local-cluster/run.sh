#!/usr/bin/env bash
# Starts a local cluster: 3 servers and 2 clients, each on a loopback address of its own
# (127.0.0.<BASE> to 127.0.0.<BASE+4>), with a CA and certificates made for them. The
# servers form one Raft cluster (--bootstrap-expect 3). Prints the members and the Raft
# peers once all five see each other and a leader is elected, writes a key through one
# client and reads it through the other, then runs until Ctrl-C, which stops them all.
#
#   examples/local-cluster/run.sh            # builds the agent if needed
#   AGENT=/path/to/agent BASE=11 examples/local-cluster/run.sh
set -euo pipefail

BASE=${BASE:-11}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ -z "${AGENT:-}" ]; then
  cargo build --release -p agent --manifest-path "$root/Cargo.toml" >&2
  AGENT="$root/target/release/agent"
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/local-cluster.XXXXXX")
pids=()

stop() {
  trap - EXIT INT TERM
  echo "Stopping the cluster..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
  echo "Stopped."
}
trap stop EXIT INT TERM

"$AGENT" tls ca create --dir "$work/certs" >/dev/null
seed="127.0.0.$BASE:8301"
nodes=(server-1 server-2 server-3 client-1 client-2)
for i in "${!nodes[@]}"; do
  node=${nodes[$i]}
  ip="127.0.0.$((BASE + i))"
  if [[ $node == server-* ]]; then role=(--server --bootstrap-expect 3); kind=--server; else role=(); kind=--client; fi
  "$AGENT" tls cert create "$kind" --dc dc1 --node "$node" --out "$node" --dir "$work/certs" >/dev/null
  join=()
  if [ "$i" -gt 0 ]; then join=(--join "$seed"); fi
  "$AGENT" run "${role[@]}" --node "$node" --data-dir "$work/$node" \
    --bind "$ip:8301" --http "$ip:8500" --dns "$ip:8600" "${join[@]}" \
    --ca-file "$work/certs/agent-ca.pem" \
    --cert-file "$work/certs/$node.pem" --key-file "$work/certs/$node-key.pem" \
    >"$work/$node.log" 2>&1 &
  pids+=($!)
  echo "started $node on $ip (log: $work/$node.log)"
done

export AGENT_HTTP_ADDR="127.0.0.$BASE:8500"
for _ in $(seq 1 300); do
  alive=$("$AGENT" members --status alive 2>/dev/null | tail -n +2 | wc -l || true)
  leaders=$("$AGENT" operator raft list-peers 2>/dev/null | grep -c " leader " || true)
  [ "$alive" -ge 5 ] && [ "$leaders" -eq 1 ] && break
  sleep 0.1
done
"$AGENT" members
echo
"$AGENT" operator raft list-peers
echo
client_1="127.0.0.$((BASE + 3)):8500"
client_2="127.0.0.$((BASE + 4)):8500"
AGENT_HTTP_ADDR=$client_1 "$AGENT" kv put greeting "hello from client-1"
echo "read through client-2: $(AGENT_HTTP_ADDR=$client_2 "$AGENT" kv get greeting)"
echo
echo "The cluster is running. Try: AGENT_HTTP_ADDR=$AGENT_HTTP_ADDR $AGENT members"
echo "Press Ctrl-C to stop it."
wait
