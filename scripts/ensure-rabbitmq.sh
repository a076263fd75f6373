#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on the AMQP port the tests and the demo use.
# Order: already up -> start an installed rabbitmq-server -> install it (root + apt) -> explain.
set -euo pipefail

host="${RABBITMQ_HOST:-127.0.0.1}"
port="${RABBITMQ_PORT:-5672}"
# The largest message a broker this script starts accepts. RabbitMQ's default (128 MiB) lets
# one producer hand every consumer megabytes per message; docs/security.md recommends a few
# times PROVISIONER_MAX_MESSAGE_BYTES (1 MiB by default). Set at run time with
# `rabbitmqctl eval` (no configuration file is written; a restart forgets it), and only on a
# broker this script started: a broker that was already running, perhaps shared, is left as
# it is and its value is only reported.
max_message_size="${RABBITMQ_MAX_MESSAGE_SIZE:-8388608}"

answers() { (exec 3<>"/dev/tcp/${host}/${port}") 2>/dev/null; }

wait_for_broker() {
    for _ in $(seq 1 90); do
        if answers && rabbitmq_ready; then return 0; fi
        sleep 1
    done
    return 1
}

rabbitmq_ready() {
    # The port opens before the broker accepts work; ask the node when we can.
    if command -v rabbitmqctl >/dev/null 2>&1; then
        rabbitmqctl -q await_startup >/dev/null 2>&1 || return 1
    fi
    return 0
}

current_max_message_size() {
    command -v rabbitmqctl >/dev/null 2>&1 || return 0
    rabbitmqctl -q eval 'application:get_env(rabbit, max_message_size).' 2>/dev/null | tr -dc '0-9'
}

report_max_message_size() {
    local current
    current="$(current_max_message_size)"
    [ -n "${current}" ] || return 0
    if [ "${current}" -gt "${max_message_size}" ]; then
        echo "rabbitmq: max_message_size is ${current} bytes; ${max_message_size} or less is" \
            "recommended (docs/security.md); left as it is on a broker this script did not start"
    else
        echo "rabbitmq: max_message_size is ${current} bytes"
    fi
}

if answers; then
    echo "rabbitmq: answering on ${host}:${port}"
    report_max_message_size
    exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "rabbitmq: not installed; installing rabbitmq-server with apt-get"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
    else
        echo "rabbitmq: no broker on ${host}:${port} and rabbitmq-server is not installed." >&2
        echo "Install it with:  sudo apt-get install -y rabbitmq-server" >&2
        echo "or run one with:  docker run -d -p 5672:5672 rabbitmq:3.13" >&2
        exit 1
    fi
fi

echo "rabbitmq: starting rabbitmq-server"
rabbitmq-server -detached
if wait_for_broker; then
    echo "rabbitmq: answering on ${host}:${port}"
    if command -v rabbitmqctl >/dev/null 2>&1; then
        rabbitmqctl -q eval "application:set_env(rabbit, max_message_size, ${max_message_size})." \
            >/dev/null
    fi
    report_max_message_size
else
    echo "rabbitmq: started but nothing answers on ${host}:${port} after 90 s" >&2
    exit 1
fi
