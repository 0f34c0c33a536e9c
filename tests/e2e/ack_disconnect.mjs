// Acks then disconnects at once, many times, with the official socket.io-client, while a shared
// room gets messages: a message the client acked must never come again in a later _batch
// (delivery invariant 5). Prints one JSON line: {rounds, received, acked, duplicates}.
// Usage: node ack_disconnect.mjs <service url> <clients> <rounds>
import { io } from "socket.io-client";

const [base, clientsArg, roundsArg] = process.argv.slice(2);
const CLIENTS = Number(clientsArg || 20);
const ROUNDS = Number(roundsArg || 10);
const SITE = "shop";
const timeout = (ms, what) => new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms));

async function send(rooms, event, args) {
  const response = await fetch(`${base}/send?site=${SITE}&apiKey=key`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ rooms, event, args }),
  });
  if (response.status !== 200) throw new Error(`send answered ${response.status}`);
}

let sent = 0;
let stopFlood = false;
async function flood() {
  while (!stopFlood) {
    await send(["staff"], "m", [++sent]);
    await new Promise((r) => setTimeout(r, 5));
  }
}

// One user: each round connects, takes what comes (a _batch, live messages), acks each at
// once, and disconnects right after acking a live message: ack, namespace disconnect and
// close leave together.
async function user(index) {
  const acked = new Set();
  let duplicates = 0;
  let received = 0;
  for (let round = 0; round < ROUNDS; round++) {
    await Promise.race([timeout(15000, `user ${index} round ${round}`), new Promise((resolve, reject) => {
      const socket = io(`${base}/${SITE}?token=t${index}&deviceId=d${index}`, {
        reconnection: false, forceNew: true, transports: round % 2 ? ["websocket"] : ["polling", "websocket"],
      });
      const seen = (n) => { received++; if (acked.has(n)) duplicates++; };
      socket.on("connect_error", reject);
      socket.on("_batch", (events, ack) => { for (const [, n] of events) seen(n); ack(); for (const [, n] of events) acked.add(n); });
      socket.on("m", (n, ack) => {
        seen(n);
        ack();
        acked.add(n);
        socket.disconnect();
        resolve();
      });
    })]);
  }
  return { duplicates, received, acked: acked.size };
}

const flooding = flood();
try {
  const results = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => user(i)));
  stopFlood = true;
  await flooding;
  const total = (key) => results.reduce((sum, r) => sum + r[key], 0);
  console.log(JSON.stringify({ rounds: ROUNDS * CLIENTS, sent, received: total("received"), acked: total("acked"), duplicates: total("duplicates") }));
  process.exit(0);
} catch (err) {
  stopFlood = true;
  console.log(JSON.stringify({ error: String(err && err.message || err) }));
  process.exit(1);
}
