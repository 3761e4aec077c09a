# shellcheck shell=bash
# What the end-to-end scripts share: counting checks, and the whole chain's
# conflist. Source it after sandbox.sh when the sandbox is used.

passed=0 failed=0
check() { # check NAME CMD...: runs CMD, counts and reports the result
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}
report() { # report: the counts; fails when a check did
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}

# wait_for SECONDS WHAT CMD...: runs CMD until it succeeds, for SECONDS at
# most (a busy machine is slow: give it time), and says what it waited for
# when it gives up.
wait_for() {
  local secs=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + secs))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "gave up after ${secs}s waiting for $what" >&2
      return 1
    fi
    sleep 0.2
  done
}

# matches PATTERN CMD...: CMD succeeds and its output matches PATTERN (grep
# -E). The output is read whole first: in a pipe, grep -q exits at the
# first match, and a writer that writes more afterwards (ip flushes per
# link) dies of SIGPIPE, which fails the pipeline under pipefail.
matches() {
  local pattern=$1 out
  shift
  out=$("$@") || return 1
  grep -qE -- "$pattern" <<<"$out"
}

# nothing_from CMD...: CMD succeeds and prints nothing; what it prints
# instead is named on stderr. A CMD that cannot read what it looks at fails:
# a "nothing left" check never passes by an error.
nothing_from() {
  local out
  out=$("$@") || return 1
  [ -z "$out" ] && return 0
  echo "left ($*): $out" >&2
  return 1
}

no_mention() { # no_mention PATTERN: neither the node's rules nor our routes mention PATTERN
  local out
  out=$(in_ns node iptables-save; in_ns node ip6tables-save; ip -n "$SB_NODE" route show proto 197; ip -n "$SB_NODE" -6 route show proto 197) || return 1
  ! grep -qE -- "$1" <<<"$out"
}

# machost_conflist IPV4 IPV6: the whole chain (macvlan + static-ipam ->
# macvlan-host-route -> portmap-lite) on eno1 with those pod addresses.
machost_conflist() {
  cat <<CONF
{"cniVersion":"1.0.0","name":"machost","plugins":[
 {"type":"macvlan","master":"eno1","mode":"bridge",
  "ipam":{"type":"static-ipam","addresses":[{"address":"$1/16","gateway":"192.168.0.1"},{"address":"$2/64","gateway":"fd00:c0a8::1"}],
          "routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}},
 {"type":"macvlan-host-route","master":"eno1","stateDir":"$SB_DIR/macvlan-host-route"},
 {"type":"portmap-lite","stateDir":"$SB_DIR/portmap-lite","capabilities":{"portMappings":true}}]}
CONF
}

# rm_standin DIR POD: the Dockin resource manager's stand-in, for busybox
# httpd -h DIR: its CGI answers the RM's answer of net.d/dockin.d (moved to
# 192.168.71/72.x) for the pod named POD only, and logs every query to
# DIR/queries. The answer is DIR/answer.json.
rm_standin() {
  mkdir -p "$1/cgi-bin"
  sed "s/192.168.1./192.168.71./; s/192.168.2./192.168.72./" net.d/dockin.d/rm-answer.json >"$1/answer.json"
  cat >"$1/cgi-bin/getPodMultiNetwork" <<EOF
#!/bin/sh
echo "\$QUERY_STRING" >> "$1/queries"
echo "Content-Type: application/json"
echo
case "\$QUERY_STRING" in
  *podName=$2\&*) cat "$1/answer.json" ;;
  *) echo '{"code":1,"message":"unknown pod"}' ;;
esac
EOF
  chmod +x "$1/cgi-bin/getPodMultiNetwork"
}
