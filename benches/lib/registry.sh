# Sourced by the benchmark scripts: a loopback docker-registry (Debian's
# docker-registry package) on 127.0.0.1 at a free port, with its storage in
# a directory the caller owns.
#
#   start_registry DIR    starts it with storage, config and log under DIR and
#                         sets REG (HOST:PORT) and REG_PID; fails with the
#                         registry's log if it exits or does not answer
#   stop_registry         stops it (safe to call twice, e.g. from a trap)

start_registry() {
  local dir=$1
  mkdir -p "$dir/storage"
  REG=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat > "$dir/config.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  redirect:
    disable: true
http:
  addr: $REG
YML
  docker-registry serve "$dir/config.yml" > "$dir/registry.log" 2>&1 &
  REG_PID=$!
  for _ in $(seq 1 500); do
    curl -s -o /dev/null "http://$REG/v2/" && return 0
    if ! kill -0 "$REG_PID" 2>/dev/null; then
      cat "$dir/registry.log" >&2
      echo "docker-registry exited before it answered on $REG" >&2
      return 1
    fi
    sleep 0.02
  done
  echo "docker-registry on $REG did not answer" >&2
  return 1
}

stop_registry() {
  if [ -n "${REG_PID:-}" ]; then
    kill "$REG_PID" 2>/dev/null || true
    wait "$REG_PID" 2>/dev/null || true
    REG_PID=
  fi
}
