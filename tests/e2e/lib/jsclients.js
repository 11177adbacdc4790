#!/usr/bin/env node
// Medusa's official JS clients doing admin work through medusa-auth-proxy, for the
// `identities` scenario (driver.py runs this and checks what it prints).
//
//   node jsclients.js --client medusa-js|js-sdk --base URL --modules DIR --title T
//                     [--reader] [--proxy-key-env NAME] [--delete-id ID]
//
// --client medusa-js: @medusajs/medusa-js (Medusa v1's client, axios); js-sdk:
//   @medusajs/js-sdk (Medusa v2's client, fetch). Both are loaded from --modules (the Medusa
//   install's node_modules, where the lockfile in tests/e2e/v1 or v2 put them).
// Neither client is given a credential: no apiKey, no login, no token. Every request's header
// names are recorded (an axios interceptor / a wrapped fetch) so the driver can check that
// none carried one.
// Admin mode: who am I, list, create, retrieve, delete, retrieve again (404) a product titled T.
// --reader (js-sdk only): who am I and list must work; create (titled T) and delete (of
//   --delete-id, an existing product) must be refused; the client key for the proxy's main
//   listener is read from the variable named by --proxy-key-env and sent as
//   Proxy-Authorization (a key for the proxy, not a Medusa credential).
// Prints one `STEP {json}` line per call and a final `JSRESULT {json}`; exits 0 unless the
// script itself broke (the driver judges the steps).
"use strict";

const path = require("path");
const { createRequire } = require("module");

function parseArgs(argv) {
  const out = { reader: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--reader") out.reader = true;
    else if (a.startsWith("--")) out[a.slice(2).replace(/-/g, "_")] = argv[++i];
    else throw new Error(`unexpected argument ${a}`);
  }
  for (const k of ["client", "base", "modules", "title"]) {
    if (!out[k]) throw new Error(`--${k} is required`);
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const u = new URL(args.base);
if (u.protocol !== "http:" || !["127.0.0.1", "localhost", "[::1]"].includes(u.hostname)) {
  throw new Error(`refusing ${args.base}: the suite only talks to http on loopback`);
}
const load = createRequire(path.join(path.resolve(args.modules), "..", "package.json"));

const steps = [];
const requests = []; // {method, url, headers: [names]}

function errorOf(e) {
  // axios (medusa-js): e.response; js-sdk: FetchError {status, statusText, message}
  if (e && e.response) {
    return { status: e.response.status, body: e.response.data };
  }
  if (e && typeof e.status === "number") {
    return { status: e.status, message: String(e.message || "") };
  }
  return { status: 0, message: String((e && e.stack) || e) };
}

async function step(name, fn) {
  const t0 = Date.now();
  let rec;
  try {
    const value = await fn();
    rec = { name, ok: true, value };
  } catch (e) {
    rec = { name, ok: false, error: errorOf(e) };
  }
  rec.ms = Date.now() - t0;
  steps.push(rec);
  console.log("STEP " + JSON.stringify(rec));
  return rec;
}

function version(pkg) {
  // Read the file: js-sdk's `exports` does not export ./package.json.
  try {
    const file = path.join(path.resolve(args.modules), pkg, "package.json");
    return JSON.parse(require("fs").readFileSync(file, "utf8")).version;
  } catch (_) {
    return "unknown";
  }
}

async function medusaJs() {
  const Medusa = load("@medusajs/medusa-js").default;
  // No apiKey, no publishableApiKey: the proxy holds the credential. No retries: a failure
  // must show, not be papered over.
  const medusa = new Medusa({ baseUrl: args.base, maxRetries: 0 });
  medusa.client.axiosClient.interceptors.request.use((config) => {
    requests.push({
      method: String(config.method || "").toUpperCase(),
      url: String(config.url || ""),
      headers: Object.keys(config.headers || {}).filter((h) => {
        const v = config.headers[h];
        return v !== undefined && v !== null && typeof v !== "object";
      }),
    });
    return config;
  });
  await step("me", async () => {
    const r = await medusa.admin.auth.getSession();
    return { email: r.user.email };
  });
  await step("list", async () => {
    const r = await medusa.admin.products.list({ limit: 5 });
    return { count: r.count, returned: r.products.length };
  });
  const created = await step("create", async () => {
    const r = await medusa.admin.products.create({
      title: args.title,
      description: "made by medusa-js through medusa-auth-proxy",
      is_giftcard: false,
      discountable: true,
    });
    return { id: r.product.id, title: r.product.title };
  });
  if (!created.ok) return;
  const id = created.value.id;
  await step("retrieve", async () => {
    const r = await medusa.admin.products.retrieve(id);
    return { id: r.product.id, title: r.product.title };
  });
  await step("list-created", async () => {
    const r = await medusa.admin.products.list({ q: args.title });
    return { count: r.count };
  });
  await step("delete", async () => {
    const r = await medusa.admin.products.delete(id);
    return { id: r.id, deleted: r.deleted };
  });
  await step("retrieve-deleted", async () => {
    const r = await medusa.admin.products.retrieve(id);
    return { id: r.product.id };
  });
}

async function jsSdk() {
  const realFetch = globalThis.fetch;
  globalThis.fetch = (input, init) => {
    const h = new Headers((init && init.headers) || {});
    requests.push({
      method: String((init && init.method) || "GET").toUpperCase(),
      url: String(input),
      headers: [...h.keys()],
    });
    return realFetch(input, init);
  };
  const Medusa = load("@medusajs/js-sdk").default;
  const config = { baseUrl: args.base };
  if (args.reader) {
    const key = process.env[args.proxy_key_env || ""];
    if (!key) throw new Error(`--reader needs the client key in $${args.proxy_key_env}`);
    config.globalHeaders = { "Proxy-Authorization": `Bearer ${key}` };
  }
  // No auth config, no sdk.auth.login(): no token in the client.
  const sdk = new Medusa(config);
  await step("me", async () => {
    const r = await sdk.admin.user.me();
    return { email: r.user.email };
  });
  await step("list", async () => {
    const r = await sdk.admin.product.list({ limit: 5 });
    return { count: r.count, returned: r.products.length };
  });
  const body = {
    title: args.title,
    description: "made by js-sdk through medusa-auth-proxy",
    options: [{ title: "Size", values: ["One"] }],
  };
  if (args.reader) {
    await step("create", async () => {
      const r = await sdk.admin.product.create(body);
      return { id: r.product.id };
    });
    if (args.delete_id) {
      await step("delete", async () => {
        const r = await sdk.admin.product.delete(args.delete_id);
        return { id: r.id, deleted: r.deleted };
      });
    }
    return;
  }
  const created = await step("create", async () => {
    const r = await sdk.admin.product.create(body);
    return { id: r.product.id, title: r.product.title };
  });
  if (!created.ok) return;
  const id = created.value.id;
  await step("retrieve", async () => {
    const r = await sdk.admin.product.retrieve(id);
    return { id: r.product.id, title: r.product.title };
  });
  await step("list-created", async () => {
    const r = await sdk.admin.product.list({ q: args.title });
    return { count: r.count };
  });
  await step("delete", async () => {
    const r = await sdk.admin.product.delete(id);
    return { id: r.id, deleted: r.deleted };
  });
  await step("retrieve-deleted", async () => {
    const r = await sdk.admin.product.retrieve(id);
    return { id: r.product.id };
  });
}

async function main() {
  let pkg;
  if (args.client === "medusa-js") {
    pkg = "@medusajs/medusa-js";
    await medusaJs();
  } else if (args.client === "js-sdk") {
    pkg = "@medusajs/js-sdk";
    await jsSdk();
  } else {
    throw new Error(`--client medusa-js or js-sdk, not ${args.client}`);
  }
  console.log(
    "JSRESULT " +
      JSON.stringify({ client: args.client, package: pkg, version: version(pkg), steps, requests }),
  );
}

main().catch((e) => {
  console.error(`jsclients.js: ${(e && e.stack) || e}`);
  process.exit(2);
});
