#!/usr/bin/env bash
# Follow a lithoscope results stream with nothing but bash: ZMTP 3.0 spoken by hand
# over /dev/tcp, no ZeroMQ library. It is the check that docs/protocol.md is enough to
# write a client in another language; the bytes are explained there, step by step.
#
#   bash docs/examples/raw-subscriber.sh [HOST] [PORT] [TOPIC] [COUNT]
#   bash docs/examples/raw-subscriber.sh 127.0.0.1 5556 event 10
#
# Prints COUNT messages as "TOPIC<TAB>JSON-HEADER", one per line.
set -euo pipefail
host=${1:-127.0.0.1} port=${2:-5556} topic=${3:-heartbeat} count=${4:-1}

exec 3<>"/dev/tcp/$host/$port"

# Read exactly N bytes from the socket (dd bs=1 never reads ahead) ...
raw() { dd bs=1 count="$1" <&3 2>/dev/null; }
# ... or as decimal numbers, one per byte.
nums() { raw "$1" | od -An -tu1 -v | tr -s ' \n' ' '; }
zeros() { printf '\\0%.0s' $(seq "$1"); }   # N NUL escapes, for printf's format

# 1. Greeting, 64 bytes in one write: signature FF 00x8 7F, version 3.0, mechanism
#    "NULL" padded to 20 bytes, as-server 00, 31 bytes of filler.
printf "\\xff$(zeros 8)\\x7f\\x03\\x00NULL$(zeros 16)\\x00$(zeros 31)" >&3

# 2. The service's greeting (64 bytes; byte 10 is its major version, 3). Wait for it
#    before sending more: libzmq 4.3 drops a READY that arrives in the same read as the
#    end of the greeting (measured), and waiting costs one round trip.
greeting=($(nums 64))
if (( greeting[0] != 255 || greeting[10] != 3 )); then
    echo "not a ZMTP 3 peer at $host:$port" >&2; exit 1
fi

# 3. Our READY command: flags 04 (command), size 25, "\x05READY", property
#    "\x0bSocket-Type" with a 4-byte big-endian length and the value "SUB"; then the
#    subscription (ZMTP 3.0 style): a one-frame message, flags 00, size 1 + len(topic),
#    body 01 followed by the topic prefix.
printf "\\x04\\x19\\x05READY\\x0bSocket-Type\\x00\\x00\\x00\\x03SUB\\x00\\x$(printf '%02x' \
    $((1 + ${#topic})))\\x01%s" "$topic" >&3

frame() {  # one frame -> FLAGS (number) and BODY (bytes in the file $body)
    FLAGS=$(( $(nums 1) ))
    local size=0 b
    if (( FLAGS & 2 )); then          # long frame: 8-byte big-endian size
        for b in $(nums 8); do size=$(( size * 256 + b )); done
    else
        size=$(( $(nums 1) ))
    fi
    raw "$size" > "$body"
}

body=$(mktemp); trap 'rm -f "$body"' EXIT
frame                                   # the service's READY command (flags 04)
if (( ! (FLAGS & 4) )); then echo "expected the READY command" >&2; exit 1; fi

for (( n = 0; n < count; n++ )); do
    parts=()
    while :; do                         # a message: frames while the MORE flag (01) is set
        frame
        if (( FLAGS & 4 )); then continue; fi   # a command (e.g. PING): not data
        parts+=("$(cat "$body")")
        (( FLAGS & 1 )) || break
    done
    printf '%s\t%s\n' "${parts[0]}" "${parts[1]}"
done
