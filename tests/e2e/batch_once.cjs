// One connect of the official socket.io-client (2.x as the original's users have, or 4.x), the
// way an app written against the original handles `_batch`: it acks the batch, then the test
// posts a marker to the user's room; live messages come after the batch, so once the marker
// is here every batch there was has arrived. Prints {"batches": [[...events], ...]}.
// Usage: node batch_once.cjs <service url> <v2|v4> <token> <deviceId> <user room>
const [base, version, token, deviceId, userRoom] = process.argv.slice(2);
const PACKAGES = { v2: "socket.io-client-v2", v4: "socket.io-client" };
const io = require(PACKAGES[version]);

const fail = (message) => { console.log(JSON.stringify({ error: message })); process.exit(1); };
const timer = setTimeout(() => fail("timed out"), 15000);

const socket = io(`${base}/shop?token=${token}&deviceId=${deviceId}`, {
  forceNew: true, reconnection: false, transports: ["websocket"],
});
const batches = [];
socket.on("_batch", (events, success) => { batches.push(events); success(); });
socket.on(version === "v4" ? "connect_error" : "error", (err) => fail(`refused: ${err && err.message || err}`));
socket.on("marker", (success) => {
  success();
  console.log(JSON.stringify({ batches }));
  clearTimeout(timer);
  socket.close();  // the process ends once the ack and the close are written
});
socket.on("_settings", async () => {
  const response = await fetch(`${base}/send?site=shop&apiKey=key`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ rooms: [userRoom], event: "marker", args: [] }),
  });
  if (response.status !== 200) fail(`marker answered ${response.status}`);
});
