#!/usr/bin/env node
// Stands in for `next build`: writes a .next tree (with a cache that deploys must
// leave out) and a page that shows the build-time environment it was given.
// KILN_FIXTURE_STOREFRONT_EXIT=N fails the build with exit code N;
// KILN_FIXTURE_STOREFRONT_OUTPUT_LINK=P makes .next a symlink to P.
const fs = require("fs")
const path = require("path")

const [command] = process.argv.slice(2)
if (command !== "build") {
  console.error(`next stand-in: only "build" is supported, not ${JSON.stringify(command)}`)
  process.exit(1)
}
console.log("   ▲ Next.js 15 (stand-in)")
console.log("   Creating an optimized production build ...")
if (process.env.KILN_FIXTURE_STOREFRONT_EXIT) {
  console.error("Error: storefront build failed on purpose (KILN_FIXTURE_STOREFRONT_EXIT)")
  process.exit(Number(process.env.KILN_FIXTURE_STOREFRONT_EXIT))
}
// Next.js salts its webpack cache with its Server Actions key; the stand-in
// tells which key it got (and prints it whole, for the log to mask).
const key = process.env.NEXT_SERVER_ACTIONS_ENCRYPTION_KEY
if (key) {
  const fingerprint = require("crypto").createHash("sha256").update(key).digest("hex").slice(0, 12)
  console.log(`   Server Actions key ${fingerprint}: ${key}`)
} else {
  console.log("   Server Actions key: none given, so a new one for this build")
}
const out = ".next"
fs.rmSync(out, { recursive: true, force: true })
fs.mkdirSync(path.join(out, "server", "app"), { recursive: true })
fs.mkdirSync(path.join(out, "cache", "fetch-cache"), { recursive: true })
fs.writeFileSync(path.join(out, "BUILD_ID"), "kiln-stand-in\n")
const backend = process.env.NEXT_PUBLIC_MEDUSA_BACKEND_URL || "http://localhost:9000"
fs.writeFileSync(path.join(out, "server", "app", "index.html"), `<!doctype html><p>Store on ${backend}</p>\n`)
fs.writeFileSync(path.join(out, "cache", "fetch-cache", "regions"), "[]\n")
if (process.env.KILN_FIXTURE_STOREFRONT_OUTPUT_LINK) {
  fs.rmSync(out, { recursive: true, force: true })
  fs.symlinkSync(process.env.KILN_FIXTURE_STOREFRONT_OUTPUT_LINK, out)
}
console.log(" ✓ Compiled successfully")
