// N official socket.io-client sockets for `python -m bench --client node4|node2`, driven over
// stdin/stdout, one JSON object a line. In: {"open": [i, ...]}, {"close": [i, ...]}.
// Out: {"c": i} greeted (_settings), {"e": i, "why": text} refused, {"r": i, "m": id, "b": 0|1}
// a message received (b: in a _batch), {"x": i} disconnected. Every message is acked as it
// arrives, as the original README's clients do. The clients come from tests/e2e/node_modules.
// Transports: "websocket" (only), or "polling,websocket" (socket.io-client's default: start on
// long-polling, then upgrade).
"use strict";
const path = require("path");
const readline = require("readline");

const [url, site, tokenPrefix, count, version, transports] = process.argv.slice(2);
const modules = path.join(__dirname, "..", "..", "tests", "e2e", "node_modules");
const io = require(path.join(modules, version === "2" ? "socket.io-client-v2" : "socket.io-client"));
const sockets = new Array(Number(count)).fill(null);

let pending = [];
function out(event) {
  if (pending.length === 0) setImmediate(flush);
  pending.push(JSON.stringify(event));
}
function flush() {
  process.stdout.write(pending.join("\n") + "\n");
  pending = [];
}

function open(i) {
  const query = `token=${tokenPrefix}${i}&deviceId=d`;
  const socket = io(`${url}/${site}?${query}`, {
    forceNew: true,
    transports: (transports || "websocket").split(","),
    reconnection: false,
  });
  sockets[i] = socket;
  socket.on("_settings", () => out({ c: i }));
  socket.on("m", (id, ack) => {
    out({ r: i, m: id, b: 0 });
    if (typeof ack === "function") ack();
  });
  socket.on("_batch", (events, ack) => {
    for (const [event, id] of events) if (event === "m") out({ r: i, m: id, b: 1 });
    if (typeof ack === "function") ack();
  });
  const refused = (error) => out({ e: i, why: String((error && error.message) || error) });
  socket.on("connect_error", refused);
  socket.on("error", refused); // 2.x reports a refused namespace here
  socket.on("disconnect", () => out({ x: i }));
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  for (const i of command.open || []) open(i);
  for (const i of command.close || []) {
    if (sockets[i]) sockets[i].disconnect();
  }
});
process.stdin.on("end", () => process.exit(0));
out({ ready: true });
