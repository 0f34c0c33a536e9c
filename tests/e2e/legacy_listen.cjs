// One device with the original's client (socket.io-client 1.7 or 2.5): prints {"ready":true}
// once greeted, then one JSON line per event it gets (acking each), until it has <count>.
// Usage: node legacy_listen.cjs <service url> <v1|v2> <websocket|polling|upgrade> <token> <deviceId> <count> [site]
const [base, version, mode, token, deviceId, count, site = "shop"] = process.argv.slice(2);
const io = require(version === "v1" ? "socket.io-client-v1" : "socket.io-client-v2");
const transports = { websocket: ["websocket"], polling: ["polling"], upgrade: ["polling", "websocket"] }[mode];
const socket = io(`${base}/${site}?token=${token}&deviceId=${deviceId}`, { forceNew: true, reconnection: false, transports });
let left = Number(count);
const print = (line) => console.log(JSON.stringify(line));
socket.on("error", (reason) => { print({ error: String(reason) }); process.exit(1); });
socket.on("_settings", () => print({ ready: true }));
socket.on("_batch", (events, ack) => { ack(); for (const e of events) { print({ event: e[0], args: e.slice(1) }); left--; } if (left <= 0) process.exit(0); });
socket.on("n", (n, ack) => { if (ack) ack(); print({ event: "n", args: [n] }); if (--left <= 0) process.exit(0); });
setTimeout(() => { print({ error: "timed out" }); process.exit(1); }, 20000);
