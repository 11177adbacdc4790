// Medusa 2.21.2 configuration for the e2e suite. Everything that differs between runs
// (database, secrets, token lifetime) comes from the environment that
// tests/e2e/lib/common.sh sets, so a restart with another E2E_JWT_SECRET is just a restart.
import { defineConfig, loadEnv } from "@medusajs/framework/utils"

loadEnv(process.env.NODE_ENV || "development", process.cwd())

function need(name: string): string {
  const v = process.env[name]
  if (!v) {
    throw new Error(`medusa-config.ts: ${name} is not set (start Medusa via tests/e2e)`)
  }
  return v
}

module.exports = defineConfig({
  projectConfig: {
    databaseUrl: need("E2E_DATABASE_URL"),
    http: {
      jwtSecret: need("E2E_JWT_SECRET"),
      cookieSecret: need("E2E_COOKIE_SECRET"),
      // A few seconds in the refresh scenario, so two minutes span many token lifetimes.
      jwtExpiresIn: process.env.E2E_JWT_EXPIRES_IN || "1d",
      adminCors: "http://127.0.0.1",
      storeCors: "http://127.0.0.1",
      authCors: "http://127.0.0.1",
    },
  },
  // No dashboard build: the suite only talks to the admin API.
  admin: { disable: true },
})
