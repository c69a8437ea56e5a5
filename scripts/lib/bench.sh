# Shared by the scripts/bench-*.sh harnesses (sourced, not run): how busy
# the machine is, and waiting for it to be quiet before a measurement;
# medians and ratios of results; free ports; stopping our own children.
# Needs `log` and QUIET_WAIT (seconds) from the caller.

# Busy share of the whole machine (0..1, both cores) over one second.
machine_busy() {
    local a b
    a=$(awk '/^cpu / { print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8 }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); d = y[2] - x[2]; printf "%.2f", (d > 0 ? (y[1] - x[1]) / d : 0) }'
}

# Waits (at most $QUIET_WAIT s) until other work uses under a quarter of
# the machine. Prints the last busy figure.
wait_quiet() {
    local deadline=$((SECONDS + QUIET_WAIT)) busy
    busy=$(machine_busy)
    while awk -v b="$busy" 'BEGIN { exit !(b > 0.25) }' && ((SECONDS < deadline)); do
        log "  machine $(awk -v b="$busy" 'BEGIN { printf "%.0f", b * 100 }')% busy with other work; waiting for quiet"
        busy=$(machine_busy)
    done
    printf '%s' "$busy"
}

# Only our own children, by pid (a pid that ended may have been reused).
ours() { [[ $(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ') == "$$" ]]; }

# Median of numbers on stdin.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# Range "min to max" of numbers on stdin.
range() { sort -g | awk 'NR == 1 { a = $1 } { b = $1 } END { if (NR) printf "%.0f to %.0f", a, b }'; }
# key=value field of a one-line result.
field() { tr ' ' '\n' <<<"$1" | awk -v k="$2=" 'index($0, k) == 1 && !done { print substr($0, length(k) + 1); done = 1 }'; }
# key=value lines to one line.
oneline() { tr '\n' ' ' | sed 's/ $//'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0 || a == "nan" || b == "nan") print "nan"; else printf "%.2f", a / b }'; }
fmt_int() { awk -v a="$1" 'BEGIN { if (a == "nan" || a == "") print "nan"; else printf "%\047.0f", a }'; }
load1() { cut -d ' ' -f 1 /proc/loadavg; }
loadavg() { cut -d ' ' -f 1-3 /proc/loadavg; }
# CPU seconds (user + system) of this shell's waited-for children so far.
children_cpu() { awk '{ sub(/.*\) /, ""); printf "%.2f", ($14 + $15) / 100 }' "/proc/$$/stat"; }
# CPU seconds (user + system) of a live process.
cpu_of() { awk '{ sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / 100 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null && return 0
    local p i
    for i in $(seq 50); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# TERM, then KILL after $2 seconds.
stop() {
    local pid=$1 wait_s=${2:-10} i
    ours "$pid" || return 0
    kill "$pid" 2>/dev/null || true
    for i in $(seq $((wait_s * 10))); do
        ours "$pid" || break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if ours "$pid" && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
}
