// Preloaded into Medusa v1 (NODE_OPTIONS=--require=...) by tests/e2e/ctl.sh.
//
// 1. `medusa start` (v1) calls app.listen(port) with no host, which binds every interface. The
//    e2e suite may only ever listen on loopback, so force the host of every TCP listen() in
//    this process to E2E_LISTEN_HOST (default 127.0.0.1). Unix sockets are left alone.
// 2. Memory probe for the RSS scenario: RSS without a garbage collection swings by 100+ MB
//    with V8's heap sizing, which drowns what the scenario looks for. With --expose-gc,
//    SIGUSR2 runs a full collection and writes process.memoryUsage() (and VmRSS) to
//    E2E_MEMSTAT_FILE, so the driver compares retained memory, not garbage. It also reports
//    how many sessions express-session's MemoryStore holds: the thing that grows when a
//    client sends no cookie (one new session per request, kept 10 hours).
"use strict";
const fs = require("fs");
const net = require("net");

const HOST = process.env.E2E_LISTEN_HOST || "127.0.0.1";
const origListen = net.Server.prototype.listen;

function isPort(v) {
  return typeof v === "number" || (typeof v === "string" && /^\d+$/.test(v));
}

net.Server.prototype.listen = function listen(...args) {
  const a0 = args[0];
  if (args.length > 0 && isPort(a0)) {
    // listen(port[, host][, backlog][, cb])
    if (typeof args[1] === "string") {
      args[1] = HOST;
    } else {
      args.splice(1, 0, HOST);
    }
  } else if (a0 && typeof a0 === "object" && !a0._handle && !("fd" in a0) && !("path" in a0)) {
    args[0] = { ...a0, host: HOST };
  } else if (args.length === 0 || typeof a0 === "function" || a0 === undefined || a0 === null) {
    // listen() / listen(cb): an ephemeral port, on every interface otherwise
    args.splice(0, a0 === undefined || a0 === null ? 1 : 0, 0, HOST);
  }
  return origListen.apply(this, args);
};

// Track every MemoryStore instance (Medusa v1 creates one when there is no redis_url). The
// module is resolved from the working directory (the Medusa install), like Medusa does.
const stores = new Set();
try {
  const path = require.resolve("express-session/session/memory", { paths: [process.cwd()] });
  const MemoryStore = require(path);
  const origSet = MemoryStore.prototype.set;
  MemoryStore.prototype.set = function set(...args) {
    stores.add(this);
    return origSet.apply(this, args);
  };
} catch (_) {
  /* no express-session here: the probe reports sessions: null */
}

function sessionCount() {
  if (stores.size === 0) return null;
  let n = 0;
  for (const s of stores) n += Object.keys(s.sessions || {}).length;
  return n;
}

const statFile = process.env.E2E_MEMSTAT_FILE;
if (statFile && typeof global.gc === "function") {
  let seq = 0;
  process.on("SIGUSR2", () => {
    global.gc();
    global.gc();
    const m = process.memoryUsage();
    let vmrss = null;
    try {
      const s = fs.readFileSync("/proc/self/status", "utf8").match(/^VmRSS:\s+(\d+)/m);
      vmrss = s ? Number(s[1]) * 1024 : null;
    } catch (_) {
      /* not Linux */
    }
    seq += 1;
    const tmp = `${statFile}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify({ seq, pid: process.pid, vmrss, sessions: sessionCount(), ...m }));
    fs.renameSync(tmp, statFile);
  });
}
