#!/bin/bash
# warmpool VM startup script (instance metadata key `startup-script`), for Container-Optimized
# OS or Debian with Docker. It runs as root at every boot and:
#
#   1. reads the agent's image from the metadata attribute `warmpool-agent-image`;
#   2. installs the iptables backstop: traffic from the sandbox uids to the metadata server is
#      rejected (the sandboxes have no network of their own; this holds if that ever breaks);
#   3. starts a systemd unit (`warmpool-agent`, running this script with `supervise`) that runs
#      the agent container with `--from-metadata` and supervises it: exit status 3 or 4 (the
#      agent retired or orphaned its VM, see agent/src/lifecycle.rs) powers the VM off, any
#      other restarts the agent (with backoff after a failure), and a crash loop that never
#      gets going powers the VM off too: no VM outlives its purpose.
#
# The script supervises the container itself instead of `docker run --restart`: Docker's
# restart policy would restart the agent after status 3 as after any failure, and the status
# is the agent's only way to ask for a poweroff from inside a container.
#
# Everything it prints goes to the serial console and the journal (google-startup-scripts).
set -uo pipefail

readonly MD=http://metadata.google.internal/computeMetadata/v1
readonly CONTAINER=warmpool-agent
# The agent's documented exit statuses (agent/src/lifecycle.rs, `Exit`).
readonly STATUS_POWER_OFF=3
readonly STATUS_DELETED=4
# The sandbox uids: WARMPOOL_SANDBOX_UID_BASE + slot, and slots never exceed 64 here.
readonly DEFAULT_UID_BASE=60000
readonly MAX_SLOTS=64
# The metadata server's link-local addresses (IPv4, and IPv6 on IPv6-enabled subnets).
readonly METADATA_V4=169.254.169.254
readonly METADATA_V6=fd20:ce::254
# Crash loop: this many failed starts in a row, none of which ran for RUN_OK_S, power off.
readonly MAX_FAILURES=10
readonly RUN_OK_S=600
# The supervisor's systemd unit, and where this script copies itself for it (COS: / is
# read-only, /var is not).
readonly UNIT=warmpool-agent
readonly STATE_DIR=/var/lib/warmpool

log() {
  echo "warmpool-startup: $*" >&2
}

power_off() {
  log "powering off: $*"
  sync
  if command -v systemctl >/dev/null 2>&1; then
    systemctl poweroff
  else
    poweroff
  fi
  exit 0
}

# One metadata value; retries while the metadata server is not up yet (connection refused,
# 5xx); a 404 fails at once.
metadata() {
  curl --fail --silent --show-error --max-time 10 \
    --retry 30 --retry-connrefused --retry-delay 2 \
    -H 'Metadata-Flavor: Google' "$MD/$1"
}

# The value of KEY in the `warmpool-agent-env` attribute (KEY=VALUE lines), if set there.
agent_env() {
  metadata instance/attributes/warmpool-agent-env 2>/dev/null \
    | sed -n "s/^[[:space:]]*$1=//p" | tail -n 1 | tr -d '\r'
}

# Rejects traffic from the sandbox uids to one address; idempotent (a reboot reruns the script,
# and iptables rules do not survive a reboot on COS anyway).
reject_from_sandboxes() {
  local tool=$1 address=$2 uids=$3
  local rule=(OUTPUT -d "$address" -m owner --uid-owner "$uids" -j REJECT)
  if ! "$tool" -w -C "${rule[@]}" 2>/dev/null; then
    "$tool" -w -I "${rule[@]:0:1}" 1 "${rule[@]:1}" || return 1
  fi
  log "$tool: sandbox uids $uids may not reach $address"
}

install_backstop() {
  local uid_base uids address
  uid_base=$(agent_env WARMPOOL_SANDBOX_UID_BASE)
  uid_base=${uid_base:-$DEFAULT_UID_BASE}
  if ! [[ $uid_base =~ ^[0-9]+$ ]]; then
    log "WARMPOOL_SANDBOX_UID_BASE=$uid_base in warmpool-agent-env is not a number"
    return 1
  fi
  uids="$uid_base-$((uid_base + MAX_SLOTS - 1))"

  local v4=("$METADATA_V4") v6=("$METADATA_V6")
  # Whatever metadata.google.internal resolves to here, in case it ever differs.
  while read -r address _; do
    v4+=("$address")
  done < <(getent ahostsv4 metadata.google.internal 2>/dev/null)
  while read -r address _; do
    [[ $address == ::ffff:* ]] || v6+=("$address")
  done < <(getent ahostsv6 metadata.google.internal 2>/dev/null)

  for address in $(printf '%s\n' "${v4[@]}" | sort -u); do
    reject_from_sandboxes iptables "$address" "$uids" || return 1
  done
  if command -v ip6tables >/dev/null 2>&1; then
    for address in $(printf '%s\n' "${v6[@]}" | sort -u); do
      reject_from_sandboxes ip6tables "$address" "$uids" || return 1
    done
  else
    log "ip6tables not found: no IPv6 backstop"
  fi
}

# Artifact Registry / Container Registry images pull with the VM's service account.
configure_registry() {
  local registry=${1%%/*}
  case $registry in
    *-docker.pkg.dev | *gcr.io) ;;
    *) return 0 ;;
  esac
  if command -v docker-credential-gcr >/dev/null 2>&1; then
    # docker-credential-gcr writes $HOME/.docker/config.json; on COS / is read-only.
    export HOME=$STATE_DIR
    mkdir -p "$HOME"
    docker-credential-gcr configure-docker --registries="$registry" >/dev/null \
      || log "docker-credential-gcr could not configure $registry; the pull may fail"
  elif command -v gcloud >/dev/null 2>&1; then
    gcloud auth configure-docker "$registry" --quiet >/dev/null 2>&1 \
      || log "gcloud could not configure $registry; the pull may fail"
  fi
}

wait_for_docker() {
  local i
  for i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    [[ $i == 1 ]] && log "waiting for the Docker daemon"
    sleep 2
  done
  return 1
}

# Why --privileged: bubblewrap inside a container needs (1) to create user, mount, pid and
# network namespaces, which Docker's default seccomp profile and capability set forbid;
# (2) to mount a fresh /proc for the sandbox's pid namespace, which the kernel refuses while
# Docker's masked /proc paths (read-only overmounts of /proc/kcore etc.) make /proc not fully
# visible; and (3) the agent writes per-execution cgroups, and Docker mounts /sys/fs/cgroup
# read-only unless the container is privileged. The narrower set (--cap-add SYS_ADMIN,
# --security-opt seccomp=unconfined,apparmor=unconfined,systempaths=unconfined and a writable
# cgroup mount) grants nearly the same power to the agent, with more ways to get it wrong.
# The container is not the boundary: the agent is trusted code on a single-purpose VM, and
# untrusted code runs in bwrap as an unprivileged uid with every capability dropped.
#
# --cgroupns=private: the agent sees its own cgroup as the root and makes the executions'
# cgroups under it. --network host: the agent dials Redis and the metadata server, and the
# iptables backstop (host OUTPUT chain) sees the sandbox uids. No --init: on cgroup v2 the
# agent must be alone in its cgroup to move itself into a leaf. --stop-timeout: longer than
# WARMPOOL_AGENT_GRACE_S (30 s), so a `docker stop` lets running executions finish.
#
# WARMPOOL_AGENT_ON_EXIT and WARMPOOL_AGENT_POWEROFF_CMD are defaults: `warmpool-agent-env`
# overrides them. The poweroff command is `true` because a container cannot power the host off;
# status 3 asks this script to.
run_agent() {
  docker rm --force "$CONTAINER" >/dev/null 2>&1
  docker run --name "$CONTAINER" --rm \
    --privileged --cgroupns=private \
    --network host \
    --stop-timeout 40 \
    --env WARMPOOL_AGENT_ON_EXIT=delete-instance \
    --env WARMPOOL_AGENT_POWEROFF_CMD=true \
    "$1" --from-metadata
}

# Runs the agent until it asks for a poweroff; restarts it otherwise.
supervise() {
  local image=$1 failures=0 delay=5 started status
  configure_registry "$image"
  while true; do
    log "starting $image"
    started=$SECONDS
    run_agent "$image"
    status=$?
    case $status in
      "$STATUS_POWER_OFF")
        power_off "the agent asked for it (status $status: retired or orphaned)"
        ;;
      "$STATUS_DELETED")
        power_off "the agent had this instance deleted (status $status)"
        ;;
      0)
        # Stopped by a signal that did not come from stopping this unit (which would have
        # ended this loop too): a Docker daemon restart, or `docker stop`. The VM keeps its
        # purpose, so the agent comes back. To stop it for good: systemctl stop warmpool-agent.
        log "the agent stopped (status 0); starting it again"
        failures=0
        delay=5
        sleep 5
        continue
        ;;
    esac
    if ((SECONDS - started >= RUN_OK_S)); then
      failures=0
      delay=5
    fi
    failures=$((failures + 1))
    if ((failures >= MAX_FAILURES)); then
      power_off "the agent failed $failures times in a row (last status $status)"
    fi
    log "the agent exited with status $status (failure $failures of $MAX_FAILURES); restarting in $delay s"
    sleep "$delay"
    delay=$((delay * 2 > 60 ? 60 : delay * 2))
  done
}

main() {
  if [[ ${1:-} == supervise ]]; then
    supervise "$2"
    return
  fi
  local image
  if ! image=$(metadata instance/attributes/warmpool-agent-image) || [[ -z $image ]]; then
    power_off "metadata attribute warmpool-agent-image is missing: nothing to run"
  fi
  install_backstop || power_off "could not install the iptables backstop; not running untrusted code without it"
  wait_for_docker || power_off "the Docker daemon did not start"

  # A startup script should end (google-startup-scripts.service is a oneshot, and the boot
  # waits for it): the supervision loop goes to a unit of its own, which the shutdown stops.
  if ! command -v systemd-run >/dev/null 2>&1; then
    supervise "$image"
    return
  fi
  if systemctl is-active --quiet "$UNIT"; then
    log "$UNIT is already running"
    return
  fi
  mkdir -p "$STATE_DIR"
  cp -- "$0" "$STATE_DIR/startup.sh"
  systemd-run --unit="$UNIT" --collect --description="warmpool agent supervisor" \
    /bin/bash "$STATE_DIR/startup.sh" supervise "$image" \
    || power_off "could not start $UNIT"
  log "the agent runs under $UNIT (journalctl -u $UNIT)"
}

main "$@"
