// The official socket.io-client v4 against a running service: the calls a site's browser code
// makes, exactly as the original README shows them. Prints one JSON line per step; exits 1 on
// the first failure. Usage: node scenario.mjs <service url>
import { io } from "socket.io-client";

const base = process.argv[2];
const SITE = "shop";
const step = (name, detail = {}) => console.log(JSON.stringify({ step: name, ...detail }));
const fail = (message) => { console.log(JSON.stringify({ error: message })); process.exit(1); };
const timeout = (ms, what) => new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms));
const within = (promise, what, ms = 5000) => Promise.race([promise, timeout(ms, what)]);

async function send(rooms, event, args, resync = false) {
  const query = `site=${SITE}&apiKey=key${resync ? "&resync=true" : ""}`;
  const response = await fetch(`${base}/send?${query}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ rooms, event, args }),
  });
  if (response.status !== 200) fail(`send answered ${response.status} ${await response.text()}`);
}

// Connects like the original README's client, resolving once _settings has greeted it.
function connect(token, deviceId, handlers = {}) {
  return within(new Promise((resolve, reject) => {
    const socket = io(`${base}/${SITE}?token=${token}&deviceId=${deviceId}`, { reconnection: false });
    for (const [event, handler] of Object.entries(handlers)) socket.on(event, handler);
    socket.on("connect_error", (err) => reject(err));
    socket.on("_settings", (settings) => resolve({ socket, settings }));
  }), `connect ${token}`);
}

function nextEvent(socket, event) {
  return within(new Promise((resolve) => socket.once(event, (...args) => resolve(args))), event);
}

try {
  // 1. connect, greeting, a live message acked through its callback
  let { socket, settings } = await connect("t1", "js-device");
  step("settings", { settings });
  const live = nextEvent(socket, "update_store");
  await send(["user_1"], "update_store", ["user", { id: 1, age: 5 }]);
  const [entityType, entity, successCallback] = await live;
  if (typeof successCallback !== "function") fail("live message came without a callback");
  successCallback();
  step("live", { entityType, entity });
  socket.close();

  // 2. missed while away: one _batch, in order, with a single callback
  await send(["user_1"], "update_store", ["offer", { id: 2 }]);
  await send(["staff"], "notice", ["hello"]);
  let batched;
  const batch = new Promise((resolve) => { batched = resolve; });
  ({ socket } = await connect("t1", "js-device", { _batch: (events, success) => { success(); batched(events); } }));
  step("batch", { events: await within(batch, "_batch") });

  // 3. resync: acking a later message before an earlier one of the same event
  const resync = nextEvent(socket, "_resync");
  const callbacks = [];
  socket.on("sync", (n, success) => callbacks.push([n, success]));
  await send(["user_1"], "sync", [1], true);
  await send(["user_1"], "sync", [2], true);
  await within((async () => { while (callbacks.length < 2) await new Promise((r) => setTimeout(r, 10)); })(), "two sync messages");
  callbacks[1][1]();
  await resync;
  step("resync", { received: callbacks.map(([n]) => n) });
  socket.close();

  // 4. a refused connect carries the original's error text
  try {
    await connect("bad-token", "x");
    fail("bad token was accepted");
  } catch (err) {
    step("connect_error", { message: err.message });
  }
  process.exit(0);
} catch (err) {
  fail(String(err && err.message || err));
}
