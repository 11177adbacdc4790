// Preloaded into Medusa v1 (`node -r` via NODE_OPTIONS): `medusa start` calls
// app.listen(port) with no host, which binds every interface. The e2e suite may only ever
// listen on loopback, so force the host of every TCP listen in this process to
// E2E_LISTEN_HOST (default 127.0.0.1). Unix sockets and handles are left alone.
"use strict";
const net = require("net");

const HOST = process.env.E2E_LISTEN_HOST || "127.0.0.1";
const origListen = net.Server.prototype.listen;

function isPort(v) {
  return typeof v === "number" || (typeof v === "string" && /^\d+$/.test(v));
}

net.Server.prototype.listen = function listen(...args) {
  if (args.length > 0 && isPort(args[0])) {
    // listen(port[, host][, backlog][, cb])
    if (typeof args[1] === "string") {
      args[1] = HOST;
    } else {
      args.splice(1, 0, HOST);
    }
  } else if (args.length > 0 && args[0] && typeof args[0] === "object" && !args[0]._handle &&
             !("fd" in args[0]) && !("path" in args[0]) && !(args[0] instanceof net.Server)) {
    args[0] = { ...args[0], host: HOST };
  } else if (args.length === 0 || typeof args[0] === "function") {
    // listen() / listen(cb): an ephemeral port on every interface otherwise
    args.unshift(0, HOST);
  }
  return origListen.apply(this, args);
};
