#!/bin/sh
# A one-node Slurm on this machine, for tests/test_slurm.py: installs Debian's
# slurm-wlm and munge when missing, writes a minimal slurm.conf, starts munged,
# slurmctld and slurmd (no systemd: each daemonises), and waits until the node is idle.
# Idempotent: when `sinfo` already shows the node up it does nothing. Needs root.
# Exit 0: Slurm is usable. Otherwise the last line of stderr says why (the test skips
# with it). Usage: scripts/slurm_local.sh [stop]
set -eu

host=$(hostname -s)
conf=/etc/slurm/slurm.conf
log=/var/log/hcomm-slurm
say() { echo "slurm_local: $*" >&2; }

node_ready() {
    command -v sinfo >/dev/null 2>&1 || return 1
    state=$(timeout 5 sinfo -h -n "$host" -o %t 2>/dev/null | head -n1)
    case "$state" in idle*|mix*|alloc*) return 0 ;; *) return 1 ;; esac
}

if [ "${1:-}" = stop ]; then
    # Only the daemons this script started (their pid files), never by name.
    for f in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    exit 0
fi

[ "$(id -u)" = 0 ] || { say "needs root to install and start the daemons"; exit 1; }
node_ready && exit 0

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >"$log.apt" 2>&1 ||
        { apt-get update -q >>"$log.apt" 2>&1 && apt-get install -y -q slurm-wlm munge >>"$log.apt" 2>&1; } ||
        { tail -n 3 "$log.apt" >&2; say "apt-get install slurm-wlm munge failed (see $log.apt)"; exit 1; }
fi

# munge: a 1024-byte key readable by the munge user only.
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    head -c 1024 /dev/urandom >/etc/munge/munge.key
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 400 /etc/munge/munge.key
if ! munge -n >/dev/null 2>&1; then
    su -s /bin/sh munge -c /usr/sbin/munged || { say "munged did not start"; exit 1; }
    sleep 1
fi
munge -n >/dev/null 2>&1 || { say "munge cannot encode a credential (munged not running?)"; exit 1; }

cpus=$(nproc)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat >"$conf" <<EOF
# Written by hcomm scripts/slurm_local.sh: one node, for tests.
ClusterName=hcomm
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF

[ -f /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null || slurmctld ||
    { say "slurmctld did not start (see /var/log/slurm/slurmctld.log)"; exit 1; }
[ -f /run/slurmd.pid ] && kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null || slurmd ||
    { say "slurmd did not start (see /var/log/slurm/slurmd.log)"; exit 1; }

i=0
until node_ready; do
    i=$((i + 1))
    if [ $i -gt 30 ]; then
        say "node $host not idle after 30 s: $(sinfo -h -n "$host" -o '%t %E' 2>&1 | head -n1)"
        exit 1
    fi
    # A node that came back after a restart can be down until told otherwise.
    [ $i = 5 ] && scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sleep 1
done
