#!/bin/bash
# The supervisor of one lab program in the VM (`invoke lab.run`, `lab.verify`, `lab.trace`):
#   bash -c "WORKDIR=... NAME=... WATCH=line|kernel ATTACHED=<attached.py> DURATION=s ALLOWANCE=s
#            GRACE=s FACTS=0|1 BCC_VERSION=<python> CHECK=<shell> <answers.sh> <this script>" supervisor
#            PROGRAM [ARGS...]
# It holds the one-lab lock, takes the host's requests on stdin (stop, kill, duration,
# attached), stops the program however the host goes away, with FACTS=1 reports
# "@@bpflab-facts KERNEL BCC_VERSION" once the program is gone, and ends with the line
# "@@bpflab-stopped REASON STATUS LEAKED_PROBES EXIT_SECONDS" (how long the program took to
# exit once asked to stop, its own cleanup; "-" when it ended by itself). Runs as root.
# Builtins where a command would do, and commands at once where they can: each process
# costs about 0.1 s under emulation.
exec 9>/run/bpflab-lab.lock
flock -n 9 & locking=$!
eval "$CHECK"  # meanwhile: that the VM holds the run's files (it exits here when not)
if ! wait $locking; then
  echo "bpflab: another lab program is running in this VM: $(cat /run/bpflab-lab.owner 2>/dev/null)"
  echo "@@bpflab-stopped busy 75 0 -"; exit 75
fi
printf '%s (since %(%T)T)\n' "$NAME" -1 > /run/bpflab-lab.owner
echo $$ > /run/bpflab-lab.pid
# No line from before this run: empty the kernel's trace buffer (the trace pipe reads from it).
for tracing in /sys/kernel/tracing /sys/kernel/debug/tracing; do
  [ -e $tracing/trace ] && { : > $tracing/trace; break; }
done 2>/dev/null
# Waiting is `read -t` on a FIFO that never delivers: a sleep would start a process the
# learner's program might trace.
[ -p /run/bpflab-lab.wait ] || mkfifo -m 600 /run/bpflab-lab.wait
exec 3<>/run/bpflab-lab.wait
# Redirections once the program runs are to fd 6, a /dev/null opened now: `2>/dev/null` would be
# an openat, in the trace of a program that traces openat.
exec 6<>/dev/null
pause() { read -t "$1" -u 3 _ 2>&6; true; }
cd "$WORKDIR"
exec 4<&0  # the host's requests (stdin): a background job without job control gets /dev/null instead
set -m  # job control: the program gets its own process group and does not ignore SIGINT
PYTHONDONTWRITEBYTECODE=1 "$@" 3>&- 4<&- 6>&- 9>&- < /dev/null &
child=$!
set +m
reason=exited
finished=
asked=
stop() {
  [ "$reason" = exited ] && [ -z "$finished" ] || return 0
  reason=$1
  asked=${EPOCHREALTIME/./}
  kill -INT $child 2>&6
  ( for ((i = 0; i < GRACE * 10; i++)); do kill -0 $child 2>&6 || exit 0; pause 0.1; done
    kill -TERM $child 2>&6; pause $GRACE; kill -KILL $child 2>&6 ) 9>&- &
}
trap 'stop interrupted' INT
trap 'stop terminated' TERM
trap 'stop hangup' HUP
trap 'stop duration' USR1
trap 'stop never-attached' USR2
# The watcher learns that the program attached, then times --duration in the VM. Attached is what the
# program says, where it says so (WATCH=line: the host relays its line, and the watcher below waits
# for it), else what the kernel says (WATCH=kernel): attached.py asks with readlink and bpf() alone
# and times the duration in one sleep, so that nothing of it shows in what the program traces. It
# starts half a second after the program, which has the CPU to itself for its own start (a small
# program's first line comes sooner); its own start, which opens files, is over long before a BCC
# program has compiled and attached.
if [ "$WATCH" = kernel ]; then
  pause 0.5
  exec 5> >(exec python3 -c "$ATTACHED" $ALLOWANCE $DURATION $$ 3>&- 4<&- 6>&- 9>&- 2>/dev/null)
  watcher=$!
  trap '' PIPE; echo $child >&5; exec 5>&-; trap - PIPE
else
  ( told=
    trap 'told=1' USR1
    for ((i = 0; i < ALLOWANCE * 5; i++)); do
      kill -0 $child 2>&6 || exit 0
      [ -z "$told" ] || break
      pause 0.2
    done
    if [ -n "$told" ] || [ $i -lt $((ALLOWANCE * 5)) ]; then
      [ "$DURATION" = 0 ] && exit 0
      end=$(( ${EPOCHREALTIME/./} + DURATION * 1000000 ))  # a deadline: a late USR1 cuts a pause short
      while (( (left = end - ${EPOCHREALTIME/./}) > 0 )); do printf -v left %07d $left; pause ${left%??????}.${left: -6}; done
      kill -USR1 $$
    else
      echo "@@bpflab-never-attached"; kill -USR2 $$
    fi ) 9>&- <&6 2>&6 &
  watcher=$!
fi
# The host's requests arrive on stdin; its end means the host or the connection is gone.
( while read -r -u 4 request; do
    case "$request" in
      stop) kill -INT $$ ;;
      duration) kill -USR1 $$ ;;
      attached) kill -USR1 $watcher ;;
      kill) kill -KILL $child ;;
    esac
  done
  kill -HUP $$ ) 9>&- >&6 2>&6 &
requests=$!
# A trapped signal cuts `wait` short with 128+N; the program's own status is asked for once it is gone.
while kill -0 $child 2>&6; do wait $child; done
wait $child; status=$?
finished=1
exit_seconds=-
if [ -n "$asked" ]; then
  took=$(( ${EPOCHREALTIME/./} - asked ))
  printf -v exit_seconds '%d.%03d' $((took / 1000000)) $((took / 1000 % 1000))
fi
kill $requests $watcher 2>/dev/null
leaked=0
for events in /sys/kernel/tracing/kprobe_events /sys/kernel/tracing/uprobe_events; do
  while read -r line; do [[ $line == *bcc_$child* ]] && ((++leaked)); done < $events
done 2>/dev/null
: > /run/bpflab-lab.pid  # emptied: no program runs (`rm` would be a process)
if [ "$FACTS" = 1 ]; then  # the doctor's answer (answers.sh, before this), else after the program: a python start
  read -r kernel < /proc/sys/kernel/osrelease
  remembered bcc bcc || bcc=$(python3 -c "$BCC_VERSION" 2>/dev/null || echo none)
  echo "@@bpflab-facts $kernel $bcc"
fi
echo "@@bpflab-stopped $reason $status $leaked $exit_seconds"
exit $status
