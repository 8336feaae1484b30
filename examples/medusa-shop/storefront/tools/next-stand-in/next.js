#!/usr/bin/env node
// Stands in for `next build` and `next start`: writes a .next tree (with a cache that deploys must
// leave out) and a page that shows the build-time environment it was given.
// KILN_FIXTURE_STOREFRONT_EXIT=N fails the build with exit code N;
// KILN_FIXTURE_STOREFRONT_OUTPUT_LINK=P makes .next a symlink to P.
// KILN_FIXTURE_STOREFRONT_SWAP=P waits (up to 60 s) for the backend's output to
// hold zzz/ready, then 2 s more (while the agent would be packing it), and swaps
// zzz for a symlink to P, as a pull request racing the packer would.
const fs = require("fs")
const path = require("path")

const [command] = process.argv.slice(2)
if (command === "start") {
  // `next start`: serves what the build wrote, on PORT, as Next.js does.
  const page = fs.readFileSync(path.join(".next", "server", "app", "index.html"))
  const server = require("http").createServer((request, response) => {
    const status = request.url === "/" ? 200 : 404
    response.writeHead(status, { "content-type": "text/html" })
    response.end(status === 200 ? page : "<!doctype html><p>404: This page could not be found.</p>\n")
    console.log(` ${request.method} ${request.url} ${status}`)
  })
  const port = Number(process.env.PORT || 3000)
  server.listen(port, () => console.log(`   ▲ Next.js 15 (stand-in)\n   - Local: http://localhost:${port}\n ✓ Ready`))
  process.on("SIGTERM", () => server.close(() => process.exit(0)))
  return
}
if (command !== "build") {
  console.error(`next stand-in: only "build" and "start" are supported, not ${JSON.stringify(command)}`)
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
if (process.env.KILN_FIXTURE_STOREFRONT_SWAP) {
  const zzz = path.join("..", ".medusa", "server", "zzz")
  const deadline = Date.now() + 60000
  const pause = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
  while (!fs.existsSync(path.join(zzz, "ready")) && Date.now() < deadline) pause(50)
  pause(2000)
  fs.renameSync(zzz, zzz + "-moved")
  fs.symlinkSync(process.env.KILN_FIXTURE_STOREFRONT_SWAP, zzz)
  console.log(`   swapped ${zzz} for a link to ${process.env.KILN_FIXTURE_STOREFRONT_SWAP}`)
}
console.log(" ✓ Compiled successfully")
