// The reference for plain sites: socket.io 4 on Node with no store, the same contract as the
// service's plain sites. Clients connect to /<site>?token=T; the site's authUrl answers their
// rooms. POST /send?site=S&apiKey=K with {rooms, event, args} emits event(...args) to the rooms.
// Environment: PORT, AUTH_URL, API_KEY, SITES (comma-separated site names).
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.env.PORT || 1338);
const authUrl = process.env.AUTH_URL;
const apiKey = process.env.API_KEY || "key";
const sites = (process.env.SITES || "news").split(",");

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://localhost");
  if (req.method === "GET" && url.pathname === "/healthcheck") {
    res.end("ok");
    return;
  }
  if (req.method !== "POST" || url.pathname !== "/send") {
    res.writeHead(404).end();
    return;
  }
  const site = url.searchParams.get("site");
  if (!sites.includes(site) || url.searchParams.get("apiKey") !== apiKey) {
    res.writeHead(401).end("ApiKey invalid.");
    return;
  }
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString());
    } catch (error) {
      res.writeHead(400).end("Body is not valid JSON");
      return;
    }
    const rooms = Array.isArray(body.rooms) ? body.rooms : [body.rooms];
    io.of("/" + site).to(rooms).emit(body.event, ...(body.args || []));
    res.end("OK");
  });
});

const io = new Server(server, { cors: { origin: "*" }, serveClient: false });
for (const site of sites) {
  io.of("/" + site).use(async (socket, next) => {
    const token = socket.handshake.query.token || (socket.handshake.auth || {}).token || "";
    try {
      const answer = await fetch(authUrl, { headers: { Authorization: "Bearer " + token } });
      if (answer.status !== 200) return next(new Error("Authentication failed"));
      socket.data.rooms = await answer.json();
      next();
    } catch (error) {
      next(new Error("Auth error: " + error.message));
    }
  });
  io.of("/" + site).on("connection", (socket) => {
    socket.join(socket.data.rooms);
    socket.emit("_settings", { device_ttl: 0 });
  });
}
server.listen(port, "127.0.0.1", () => console.log(`reference listening on ${port}`));
