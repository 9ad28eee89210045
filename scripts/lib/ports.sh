# Loopback ports for the servers a script starts (sourced, not run).

# Whether something accepts TCP connections on 127.0.0.1:$1.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port nothing listens on (TCP), below the kernel's ephemeral range so no
# outgoing connection holds it. Whoever binds it still checks "in use".
ephemeral_low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
    local port
    while :; do
        port=$((10000 + RANDOM % (ephemeral_low - 10000)))
        port_busy "$port" || break
    done
    echo "$port"
}
