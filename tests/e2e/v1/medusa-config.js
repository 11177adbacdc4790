// Medusa 1.20.11 configuration for the e2e suite. Everything that differs between runs
// (database, secrets, upload URL) comes from the environment that tests/e2e/lib/common.sh
// sets, so a restart with another E2E_JWT_SECRET is just a restart.
"use strict";

const need = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`medusa-config.js: ${name} is not set (start Medusa via tests/e2e)`);
  return v;
};

module.exports = {
  projectConfig: {
    database_url: need("E2E_DATABASE_URL"),
    database_type: "postgres",
    jwt_secret: need("E2E_JWT_SECRET"),
    cookie_secret: need("E2E_COOKIE_SECRET"),
    admin_cors: "http://127.0.0.1",
    store_cors: "http://127.0.0.1",
    // No redis_url: Medusa falls back to an in-memory session store, which is exactly
    // what makes cookie-less proxies leak memory (see the RSS scenario).
  },
  plugins: [
    "medusa-fulfillment-manual",
    "medusa-payment-manual",
    {
      resolve: "@medusajs/file-local",
      options: {
        upload_dir: "uploads",
        backend_url: process.env.E2E_BACKEND_URL || "http://127.0.0.1",
      },
    },
  ],
  modules: {
    eventBus: { resolve: "@medusajs/event-bus-local" },
    cacheService: { resolve: "@medusajs/cache-inmemory" },
  },
};
