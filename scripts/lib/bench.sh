# Shared by the scripts/bench-*.sh harnesses (sourced, not run): how busy
# the machine is, and waiting for it to be quiet before a measurement.
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
