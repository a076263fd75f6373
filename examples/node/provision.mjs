// Ask the provisioner for a database cluster and follow the request to its end.
//
//   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ node examples/node/provision.mjs [FILE|-]
//
// FILE (or - for standard input) is a ProvisionDatabase command as JSON; without it a small
// PostgreSQL cluster is requested. A request_id is generated when the command has none.
// Each event of the request is printed as one JSON line on stdout; progress goes to stderr.
// Exit: 0 connection_ready, 3 rejected, 4 failed, 5 no end within TIMEOUT_S (default 600),
// 1 could not run (broker unreachable, exchanges missing, unreadable command).
// Passwords and URIs are printed as "***" unless SHOW_SECRETS=1.
//
// The command carries the AMQP user_id of the user in AMQP_URL (the service requires it and
// RabbitMQ checks it) and asks for its events through RabbitMQ's Direct Reply-to. With SEALED=1
// it makes an X25519 key pair, sends the public key as recipient_public_key, and opens the
// connection_ready's sealed_secrets with the private key (libsodium's crypto_box_seal_open):
// nobody else on the events exchange can read those credentials.

import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import process from 'node:process';

import amqp from 'amqplib';
import sodium from 'libsodium-wrappers';

const COMMANDS_EXCHANGE = 'provisioner.commands';
const COMMAND_ROUTING_KEY = 'database.cluster.create';
const EVENTS_EXCHANGE = 'provisioner.events';
const EXIT_CODES = {
  'database.cluster.connection_ready': 0,
  'database.cluster.rejected': 3,
  'database.cluster.failed': 4,
};
const EXIT_TIMEOUT = 5;
const SECRET_FIELDS = new Set(['password', 'uri', 'access_key']);
const DIRECT_REPLY_TO = 'amq.rabbitmq.reply-to';
const CONNECTIONS = [
  'connection',
  'private_connection',
  'standby_connection',
  'standby_private_connection',
  'ui_connection',
  'schema_registry_connection',
];

// The sealed box holds every secret at the path it has in `data` (users by index).
function openSealed(data, keyPair) {
  const box = sodium.from_base64(data.sealed_secrets, sodium.base64_variants.ORIGINAL);
  const plain = sodium.crypto_box_seal_open(box, keyPair.publicKey, keyPair.privateKey);
  const secrets = JSON.parse(sodium.to_string(plain));
  // The box names the event it was made for: one moved into another event is refused.
  if (secrets.request_id !== data.request_id || secrets.cluster_id !== data.cluster_id) {
    throw new Error('sealed_secrets belong to another request or cluster');
  }
  const opened = { ...data, secrets: 'included' };
  delete opened.sealed_secrets;
  for (const name of CONNECTIONS) {
    if (opened[name] && secrets[name]) opened[name] = { ...opened[name], ...secrets[name] };
  }
  opened.users = (data.users ?? []).map((user, i) =>
    secrets.users?.[i]?.name === user.name ? { ...user, ...secrets.users[i] } : user,
  );
  return opened;
}

function smallPostgres() {
  const suffix = randomUUID().slice(0, 8);
  return {
    cluster: {
      name: `example-${suffix}`,
      engine: 'pg',
      version: '17',
      region: 'nyc3',
      size: 'db-s-1vcpu-1gb',
      num_nodes: 1,
      users: [{ name: 'app' }],
      db_names: ['app'],
    },
    metadata: { example: 'node' },
  };
}

async function readCommand(path) {
  if (path === undefined) return smallPostgres();
  const text = path === '-' ? await readStdin() : await readFile(path, 'utf8');
  return JSON.parse(text);
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

// Replaces secret fields at any depth, so a new connection kind cannot leak by omission.
function masked(value) {
  if (Array.isArray(value)) return value.map(masked);
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(
    Object.entries(value).map(([key, inner]) => [
      key,
      SECRET_FIELDS.has(key) && inner != null ? '***' : masked(inner),
    ]),
  );
}

async function main() {
  const url = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/';
  const timeoutS = Number(process.env.TIMEOUT_S ?? '600');
  const showSecrets = process.env.SHOW_SECRETS === '1';
  if (!(timeoutS > 0)) throw new Error('TIMEOUT_S must be a positive number of seconds');
  const command = await readCommand(process.argv[2]);
  command.request_id ??= randomUUID();
  const requestId = command.request_id;
  const correlationId = randomUUID();
  // The user this connection logs in as: RabbitMQ refuses any other user_id.
  const userId = decodeURIComponent(new URL(url).username) || 'guest';
  let keyPair = null;
  if (process.env.SEALED === '1') {
    await sodium.ready;
    keyPair = sodium.crypto_box_keypair();
    command.recipient_public_key = sodium.to_base64(
      keyPair.publicKey,
      sodium.base64_variants.ORIGINAL,
    );
  }

  const connection = await amqp.connect(url);
  try {
    const channel = await connection.createConfirmChannel();
    // A channel or connection the broker closes ends the wait for events with its error
    // (without a listener, Node would crash on the 'error' event instead).
    const broken = new Promise((_resolve, reject) => {
      channel.on('error', reject);
      connection.on('error', reject);
      connection.on('close', () => reject(new Error('the broker closed the connection')));
    });
    broken.catch(() => {}); // settled later than the outcome in a normal run
    // The service owns the exchanges: check they are there, never declare them.
    await channel.checkExchange(COMMANDS_EXCHANGE);
    await channel.checkExchange(EVENTS_EXCHANGE);

    // A subscriber queue of our own: server-named and exclusive, gone when we disconnect.
    const subscriber = await channel.assertQueue('', { exclusive: true });
    await channel.bindQueue(subscriber.queue, EVENTS_EXCHANGE, 'database.cluster.#');

    const seen = new Set();
    const show = (event) => {
      // The same event arrives on both queues, and again after any redelivery.
      const key = `${event.source}\u0000${event.id}`;
      if (seen.has(key)) return;
      seen.add(key);
      if (keyPair !== null && event.data?.sealed_secrets) {
        try {
          event = { ...event, data: openSealed(event.data, keyPair) };
        } catch (err) {
          console.error(`cannot open sealed_secrets of ${event.id}: ${err.message}`);
        }
      }
      console.log(JSON.stringify(showSecrets ? event : masked(event)));
    };
    // Anyone may publish on the events exchange: skip what is not JSON instead of crashing.
    const parse = (message) => {
      try {
        return JSON.parse(message.content.toString('utf8'));
      } catch {
        return null;
      }
    };

    // A plain subscriber: every cluster event of every producer; we pick out our request.
    // The exclusive queues die with the connection, so acknowledging buys nothing here.
    await channel.consume(
      subscriber.queue,
      (message) => {
        if (message === null) return; // the broker cancelled the consumer
        const event = parse(message);
        // A request is (producer, request_id): another producer may use the same id.
        if (event?.data?.request_id === requestId && event?.data?.producer === userId) {
          show(event);
        }
      },
      { noAck: true },
    );
    // The service sends each reply copy after the broadcast one, so ending on the reply
    // means the service is done with our reply queue before it disappears with us.
    let finish;
    const outcome = new Promise((resolve) => {
      finish = resolve;
    });
    // Direct Reply-to: consumed without acks on the channel that publishes, before it does.
    await channel.consume(
      DIRECT_REPLY_TO,
      (message) => {
        if (message === null || message.properties.correlationId !== correlationId) return;
        const event = parse(message);
        if (event === null) return;
        show(event);
        if (event.type in EXIT_CODES) finish(EXIT_CODES[event.type]);
      },
      { noAck: true },
    );
    setTimeout(() => finish(EXIT_TIMEOUT), timeoutS * 1000).unref();

    let returned = false;
    channel.on('return', () => {
      returned = true;
    });
    await new Promise((resolve, reject) => {
      channel.publish(
        COMMANDS_EXCHANGE,
        COMMAND_ROUTING_KEY,
        Buffer.from(JSON.stringify(command)),
        {
          contentType: 'application/json',
          persistent: true,
          mandatory: true,
          replyTo: DIRECT_REPLY_TO,
          correlationId,
          userId,
        },
        (err) => (err ? reject(err) : resolve()),
      );
    });
    // A mandatory message that no queue took comes back before its confirm.
    if (returned) throw new Error(`${COMMANDS_EXCHANGE} routed the command to no queue`);
    console.error(`published request ${requestId} to ${COMMANDS_EXCHANGE}`);

    const code = await Promise.race([outcome, broken]);
    if (code === EXIT_TIMEOUT) console.error(`no final event within ${timeoutS} s`);
    return code;
  } finally {
    // Fails only when the broker already closed it; the error that matters came first.
    await connection.close().catch(() => {});
  }
}

try {
  process.exitCode = await main();
} catch (err) {
  console.error(`provision: ${err.message}`);
  process.exitCode = 1;
}
