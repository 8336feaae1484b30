#!/usr/bin/env node
// Stands in for `medusa build`: lays out .medusa/server the way the real CLI does
// (compiled config, package.json, src/**.js, public/admin) without its packages.
// Test knobs, read from the build environment:
//   KILN_FIXTURE_SLEEP=N   print a line a second for N seconds first
//   KILN_FIXTURE_EXIT=N    fail with exit code N
//   KILN_FIXTURE_OOM=1     allocate memory until the container's limit stops it
//   KILN_FIXTURE_LINK=P    put a symlink to P at .medusa/server/public/leak
//   KILN_FIXTURE_PRINT=S   print S (e.g. a secret, to test masking)
const fs = require("fs")
const path = require("path")

async function main() {
  const [command] = process.argv.slice(2)
  if (command !== "build") {
    console.error(`medusa stand-in: only "build" is supported, not ${JSON.stringify(command)}`)
    process.exit(1)
  }
  const env = process.env
  console.log("info:    Starting build...")
  if (env.KILN_FIXTURE_PRINT) console.log(env.KILN_FIXTURE_PRINT)
  for (let i = 1; i <= Number(env.KILN_FIXTURE_SLEEP || 0); i++) {
    console.log(`info:    still compiling (${i}s)`)
    await new Promise((resolve) => setTimeout(resolve, 1000))
  }
  if (env.KILN_FIXTURE_EXIT) {
    console.error("error:   Build failed on purpose (KILN_FIXTURE_EXIT)")
    process.exit(Number(env.KILN_FIXTURE_EXIT))
  }
  if (env.KILN_FIXTURE_OOM) {
    const hog = []
    for (;;) hog.push(Buffer.alloc(16 << 20, 1))
  }
  const out = path.join(".medusa", "server")
  fs.rmSync(out, { recursive: true, force: true })
  fs.mkdirSync(path.join(out, "public", "admin", "assets"), { recursive: true })
  fs.copyFileSync("medusa-config.js", path.join(out, "medusa-config.js"))
  const pkg = JSON.parse(fs.readFileSync("package.json", "utf8"))
  fs.writeFileSync(path.join(out, "package.json"), JSON.stringify({ name: pkg.name, version: pkg.version, scripts: { start: "medusa start" } }, null, 2))
  for (const file of walk("src")) {
    fs.mkdirSync(path.join(out, path.dirname(file)), { recursive: true })
    fs.copyFileSync(file, path.join(out, file))
  }
  fs.writeFileSync(path.join(out, "public", "admin", "index.html"), "<!doctype html><div id=medusa></div><script src=assets/index.js></script>\n")
  fs.writeFileSync(path.join(out, "public", "admin", "assets", "index.js"), "console.log('admin')\n")
  if (env.KILN_FIXTURE_LINK) fs.symlinkSync(env.KILN_FIXTURE_LINK, path.join(out, "public", "leak"))
  console.log("info:    Backend build completed successfully")
  console.log("info:    Frontend build completed successfully")
}

function* walk(dir) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name)
    if (entry.isDirectory()) yield* walk(full)
    else yield full
  }
}

main()
