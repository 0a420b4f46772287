#!/usr/bin/env bash
# Stop the single-node test cluster that tests/slurm/start_cluster.sh started: cancels the jobs
# still queued or running on it, then stops slurmd, slurmctld and munged by the pids recorded in
# $SLURM_TEST_DIR/run (default /tmp/stardist-hpc-slurm) and waits for them to exit.
# Idempotent: a daemon that is not running is skipped. Configuration, state and logs are kept.
set -euo pipefail

RUN_DIR="${SLURM_TEST_DIR:-/tmp/stardist-hpc-slurm}"
export SLURM_CONF="$RUN_DIR/slurm.conf"
export PATH="$PATH:/usr/sbin:/sbin"

log() { echo "stop_cluster: $*" >&2; }

[ -d "$RUN_DIR/run" ] || { log "nothing to stop in $RUN_DIR"; exit 0; }
exec 9>"$RUN_DIR/.lock"
flock -w 300 9 || { log "ERROR: another start/stop of $RUN_DIR did not finish within 300 s"; exit 1; }

pid_of() {  # pid_of NAME: the recorded pid of a running daemon, or nothing
    local f="$RUN_DIR/run/$1.pid" pid
    [ -s "$f" ] || return 0
    pid="$(cat "$f" 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

# jobs first, while slurmctld and slurmd still run: their processes would outlive slurmd
if [ -n "$(pid_of slurmctld)" ] && [ -n "$(pid_of slurmd)" ]; then
    jobs="$(squeue -h -o %i 2>/dev/null || true)"
    if [ -n "$jobs" ]; then
        log "cancelling jobs: ${jobs//$'\n'/ }"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 30); do
            [ -z "$(squeue -h -o %i 2>/dev/null || true)" ] && break
            sleep 1
        done
    fi
fi

stop() {  # stop NAME: SIGTERM, wait up to 30 s, then SIGKILL
    local name="$1" pid
    pid="$(pid_of "$name")"
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || { log "stopped $name ($pid)"; rm -f "$RUN_DIR/run/$name.pid"; return 0; }
        sleep 0.1
    done
    log "$name ($pid) ignored SIGTERM for 30 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$RUN_DIR/run/$name.pid"
}

stop slurmd
stop slurmctld
stop munged
