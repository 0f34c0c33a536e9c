// The official socket.io-client, every version a site's pages and apps may run: 1.7 and 2.5
// (Engine.IO v3, what the original served) and 4.8, used the way code written against the
// original uses them: a query in the URL, forceNew, callbacks as acks, and a refused connect
// read from "error" (1.x/2.x) or "connect_error" (3.x/4.x) with the original's text.
// Prints one JSON line per step; exits 1 on the first failure.
// Usage: node scenario.cjs <service url> <v1|v2|v4> <websocket|polling|upgrade> [send url]
// (the send url: another node of the same service, where the site posts its /send)
const [base, version, mode, sendBase = base] = process.argv.slice(2);
const PACKAGES = { v1: "socket.io-client-v1", v2: "socket.io-client-v2", v4: "socket.io-client" };
const io = require(PACKAGES[version]);
const SITE = "shop";
const TRANSPORTS = { websocket: ["websocket"], polling: ["polling"], upgrade: ["polling", "websocket"] }[mode];

const step = (name, detail = {}) => console.log(JSON.stringify({ step: name, ...detail }));
const fail = (message) => { console.log(JSON.stringify({ error: message })); process.exit(1); };
const within = (promise, what, ms = 8000) =>
  Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms))]);

async function send(rooms, event, args, resync = false) {
  const query = `site=${SITE}&apiKey=key${resync ? "&resync=true" : ""}`;
  const response = await fetch(`${sendBase}/send?${query}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ rooms, event, args }),
  });
  if (response.status !== 200) fail(`send answered ${response.status} ${await response.text()}`);
}

// As a real client of the original connects: the query in the URL, forceNew, autoConnect off.
function connect(token, deviceId, handlers = {}) {
  return within(new Promise((resolve, reject) => {
    const url = `${base}/${SITE}?token=${token}&deviceId=${deviceId}&meta=appName:stock`;
    const socket = io(url, { autoConnect: false, forceNew: true, reconnection: false, transports: TRANSPORTS });
    for (const [event, handler] of Object.entries(handlers)) socket.on(event, handler);
    const refused = (reason) => reject(Object.assign(new Error(String(reason)), { reason, socket }));
    if (version === "v4") socket.on("connect_error", (err) => refused(err.message));
    else socket.on("error", refused);
    socket.on("connect_error", (err) => reject(new Error(`connect_error: ${err && err.message || err}`)));
    socket.on("_settings", (settings) => resolve({ socket, settings }));
    if (typeof socket.open === "function") socket.open(); else socket.connect();
  }), `connect ${token}`);
}

const nextEvent = (socket, event) =>
  within(new Promise((resolve) => socket.once(event, (...args) => resolve(args))), event);

(async () => {
  // 1. greeting, then a live message acked through its callback
  let { socket, settings } = await connect("t1", `legacy-${version}-${mode}`);
  step("settings", { settings });
  if (mode === "upgrade") {
    await within(new Promise((resolve) => {
      const engine = socket.io.engine;
      if (engine.transport.name === "websocket") resolve(); else engine.once("upgrade", resolve);
    }), "upgrade to websocket");
  }
  step("transport", { name: socket.io.engine.transport.name });
  const live = nextEvent(socket, "update_store");
  await send(["user_1"], "update_store", ["user", { id: 1, age: 5, name: "Zoë 🚀" }]);
  const [entityType, entity, successCallback] = await live;
  if (typeof successCallback !== "function") fail("live message came without a callback");
  successCallback();
  step("live", { entityType, entity });
  socket.close();

  // 2. missed while away: one _batch, in send order, one callback for all
  await send(["user_1"], "update_store", ["offer", { id: 2 }]);
  await send(["staff"], "notice", ["hello"]);
  let batched;
  const batch = new Promise((resolve) => { batched = resolve; });
  ({ socket } = await connect("t1", `legacy-${version}-${mode}`, {
    _batch: (events, success) => { success(); batched(events); },
  }));
  step("batch", { events: await within(batch, "_batch") });

  // 3. resync: acking a later message of an event before an earlier one
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

  // 4. a refused connect: the "error" event with the original's text, as real clients read it
  try {
    await connect("bad-token", "x");
    fail("bad token was accepted");
  } catch (err) {
    if (err.socket) err.socket.close();
    const reason = err.reason === undefined ? err.message : err.reason;
    step("error", { reason, goToLogin: String(reason).indexOf("Auth") === 0 });
  }
  process.exit(0);
})().catch((err) => fail(String(err && err.message || err)));
