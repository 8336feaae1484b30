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
// Serves a built app from `root` as Next.js's servers do: the page at /,
// `.next/static` at /_next/static/, `public/` at the top. The standalone
// output's server.js is this function's own text.
function serve(root, host) {
  const fs = require("fs")
  const path = require("path")
  const server = require("http").createServer((request, response) => {
    const url = new URL(request.url, "http://localhost")
    const file = url.pathname === "/"
      ? path.join(root, ".next", "server", "app", "index.html")
      : url.pathname.startsWith("/_next/static/")
        ? path.join(root, ".next", "static", url.pathname.slice("/_next/static/".length))
        : path.join(root, "public", url.pathname)
    const found = !url.pathname.includes("..") && fs.existsSync(file) && fs.statSync(file).isFile()
    const status = found ? 200 : 404
    response.writeHead(status, { "content-type": file.endsWith(".js") ? "application/javascript" : "text/html" })
    response.end(found ? fs.readFileSync(file) : "<!doctype html><p>404: This page could not be found.</p>\n")
    console.log(` ${request.method} ${url.pathname} ${status}`)
  })
  const port = Number(process.env.PORT || 3000)
  server.listen(port, host, () => console.log(`   ▲ Next.js 15 (stand-in)\n   - Local: http://localhost:${port}\n ✓ Ready`))
  process.on("SIGTERM", () => server.close(() => process.exit(0)))
}

if (command === "start") {
  // `next start`: serves what the build wrote, on PORT.
  serve(process.cwd(), "0.0.0.0")
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
fs.mkdirSync(path.join(out, "static", "chunks"), { recursive: true })
fs.writeFileSync(path.join(out, "static", "chunks", "app.js"), "console.log('storefront')\n")
// `output: "standalone"`: a server.js with what it needs, as Next.js traces
// it; `.next/static` and `public/` are the deployment's to place beside it.
const config = ["next.config.js", "next.config.mjs"].find((name) => fs.existsSync(name))
if (config && fs.readFileSync(config, "utf8").includes("standalone")) {
  const standalone = path.join(out, "standalone")
  fs.mkdirSync(path.join(standalone, ".next", "server", "app"), { recursive: true })
  fs.copyFileSync(path.join(out, "server", "app", "index.html"), path.join(standalone, ".next", "server", "app", "index.html"))
  fs.writeFileSync(path.join(standalone, "server.js"), `${serve.toString()}\nserve(__dirname, process.env.HOSTNAME || "0.0.0.0")\n`)
  console.log("   Standalone output in .next/standalone")
}
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
