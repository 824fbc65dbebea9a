#!/usr/bin/env bash
# NAT with examples/nat.toml: web1 (VLAN 10, 10.42.0.2) and web2 (VLAN 20, 10.42.1.2) serve
# HTTP on port 80; "client" (VLAN 10, 10.42.0.3) is another container; "outside" (VLAN 100,
# 10.200.0.254) stands for the world beyond the uplink and has no route to the containers.
# Shows masquerade (the outside sees only 10.200.0.1), the port forward 10.200.0.1:8080 ->
# web1:80, the Service 10.96.0.10:80 spreading over both, its NodePort, a backend drained
# and removed at runtime, and the conntrack table; removes everything on exit, Ctrl-C or
# failure. Needs root, python3 and curl. (The client shares VLAN 10 with web1: its connections
# to web1 through the Service are hairpinned, so web1 sees the router, 10.42.0.1.)
# Usage: examples/nat-services.sh [path/to/tapswitch]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/tapswitch}
[ -x "$bin" ] || cargo build --release --bin tapswitch
for t in python3 curl; do
  command -v "$t" >/dev/null || { echo "this example uses $t"; exit 1; }
done

. examples/lib.sh
tag="nat$$"
web1="${tag}w1"; web2="${tag}w2"; client="${tag}c"; outside="${tag}o"
sock=$(mktemp -u /tmp/tapswitch-"$tag"-XXXX.sock)
log=/tmp/tapswitch-"$tag".log
pids=() # the web servers
made=() # the namespaces this run created (and so removes)
cleanup() {
  for p in "${pids[@]}"; do if kill "$p" 2>/dev/null; then wait "$p" 2>/dev/null || true; fi; done
  ts_daemon_stop_all # stop --purge: its TAPs go first, then the namespaces
  for ns in "${made[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -f "$log"
}
ts_trap_cleanup cleanup
for ns in "$web1" "$web2" "$client" "$outside"; do
  ip netns add "$ns"; made+=("$ns"); ip -n "$ns" link set lo up
done

ts_daemon_start --config examples/nat.toml "$bin" "$sock" "$log"
ts() { "$bin" --socket "$sock" "$@"; }

add_container() { # ns vlan addr/len [gateway]
  ts port add "$1" --netns "$1" --vlan "$2" >/dev/null
  ip -n "$1" addr add "$3" dev "$1"
  [ -n "${4:-}" ] && ip -n "$1" route add default via "$4"
  true
}
add_container "$web1" 10 10.42.0.2/24 10.42.0.1
add_container "$web2" 20 10.42.1.2/24 10.42.1.1
add_container "$client" 10 10.42.0.3/24 10.42.0.1
add_container "$outside" 100 10.200.0.254/24

# Each web server answers with its name and the address it sees the client at.
serve() { # ns name addr
  ip netns exec "$1" python3 -c '
import http.server, socketserver, sys
name, addr = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{name} saw {self.client_address[0]}\n".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(http.server.ThreadingHTTPServer):
    server_bind = socketserver.TCPServer.server_bind  # no reverse DNS lookup of the address
S((addr, int(sys.argv[3])), H).serve_forever()
' "$2" "$3" "$4" &
  pids+=($!)
}
serve "$web1" web1 10.42.0.2 80
serve "$web2" web2 10.42.1.2 80
serve "$outside" outside 10.200.0.254 80
sleep 1

get() { ip netns exec "$1" curl -s --max-time 3 "http://$2/" || echo "(no answer)"; }
echo "== masquerade: containers reach the outside, which sees only the uplink address"
echo "client -> outside: $(get "$client" 10.200.0.254)"
echo "web2   -> outside: $(get "$web2" 10.200.0.254)"
echo
echo "== port forward 10.200.0.1:8080 -> web1:80 (web1 sees the real client)"
echo "outside -> 10.200.0.1:8080: $(get "$outside" 10.200.0.1:8080)"
echo
echo "== Service web 10.96.0.10:80 over web1 and web2 (maglev)"
for _ in $(seq 6); do echo "client -> 10.96.0.10: $(get "$client" 10.96.0.10)"; done
echo "outside -> NodePort 10.200.0.1:30080: $(get "$outside" 10.200.0.1:30080)"
echo
echo "== drain web1 (weight 0: no new connections), then remove it"
ts service set-backends web 10.42.0.2:80,drain 10.42.1.2:80
for _ in $(seq 3); do echo "client -> 10.96.0.10: $(get "$client" 10.96.0.10)"; done
ts service set-backends web 10.42.1.2:80
ts service list
echo
echo "== tapswitch conntrack show"; ts conntrack show | head -20
echo
echo "== tapswitch stats (the NAT line)"; ts stats | grep '^nat:' || true
