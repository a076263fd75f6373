#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on the AMQP port the tests and the demo use.
# Order: already up -> start an installed rabbitmq-server -> install it (root + apt) -> explain.
set -euo pipefail

host="${RABBITMQ_HOST:-127.0.0.1}"
port="${RABBITMQ_PORT:-5672}"

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

if answers; then
    echo "rabbitmq: answering on ${host}:${port}"
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
else
    echo "rabbitmq: started but nothing answers on ${host}:${port} after 90 s" >&2
    exit 1
fi
