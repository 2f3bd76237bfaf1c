/**
 * The bare baseline: a node:http server with nothing else loaded. It reads the request body, parses
 * it, and answers a JSON object shaped and sized like the agent's command result (~150 bytes), with
 * the same headers. Any path answers 200, so it also serves as the `GET /v1/status` baseline for the
 * launch and memory figures.
 *
 * It runs as plain `node -e SOURCE PORT` in its own process — no tsx loader, no TypeScript — so its
 * start-up time and RSS are those of bare Node; hence the source is kept here as a string.
 */
import type { Served } from "./lib.js";
import { spawnServed } from "./lib.js";

export const ECHO_SERVER_SOURCE = `
"use strict";
const http = require("node:http");
const { randomUUID } = require("node:crypto");
const port = Number(process.argv[1]);
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    let name = "status";
    if (chunks.length > 0) {
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        if (typeof body.name === "string") name = body.name.slice(body.name.indexOf(".") + 1);
      } catch {}
    }
    const text = JSON.stringify({ id: randomUUID(), command_name: name, command_status: "SUCCEEDED", command_error: null, command_result: {} });
    res.writeHead(200, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
    res.end(text);
  });
});
server.keepAliveTimeout = 65000;
server.listen(port, "127.0.0.1");
process.on("SIGTERM", () => { server.close(() => process.exit(0)); server.closeAllConnections(); });
`;

export function spawnEcho(pollMs = 5): Promise<Served> {
  return spawnServed({ name: "echo", args: ["-e", ECHO_SERVER_SOURCE, "{PORT}"], readyPath: "/v1/status", pollMs });
}
