#!/usr/bin/env node
// Stands in for `medusa build`: lays out .medusa/server the way the real CLI does
// (compiled config, package.json, src/**.js, public/admin) without its packages.
// Test knobs, read from the build environment:
//   KILN_FIXTURE_SLEEP=N   print a line a second for N seconds first
//   KILN_FIXTURE_EXIT=N    fail with exit code N
//   KILN_FIXTURE_OOM=1     allocate memory until the container's limit stops it
//   KILN_FIXTURE_LINK=P    put a symlink to P at .medusa/server/public/leak
//   KILN_FIXTURE_SERVER_LINK=P  put a symlink to P at .medusa/server/passwd
//   KILN_FIXTURE_FORK_BOMB=1  fork without end (a shell fork bomb)
//   KILN_FIXTURE_WRITE_MB=N  write an N MiB file into the workspace
//   KILN_FIXTURE_LOOP=1    spin forever
//   KILN_FIXTURE_ESCAPE=P1:P2:…  try to write outside the workspace and to see each
//                          path P (the Docker socket, the agent's token); exit 13
//                          if all were refused, 66 if any worked
//   KILN_FIXTURE_LEAK_ENV=NAME  inline env var NAME into the admin bundle, as a
//                          misconfigured Vite `define` would
//   KILN_FIXTURE_PRINT=S   print S (e.g. a secret, to test masking)
//   KILN_FIXTURE_PRINT_SPLIT=1  also print S in two writes 300 ms apart, and its base64
//   KILN_FIXTURE_LINES=N   print N numbered lines, KILN_FIXTURE_LINE_DELAY_MS apart
//   KILN_FIXTURE_FLOOD_MB=N  print N MiB of numbered lines as fast as possible
//   KILN_FIXTURE_SERVER_ROOT_LINK=P  end with .medusa/server itself a symlink to P
//   KILN_FIXTURE_FIFO=P    end with a FIFO at P (relative to the repository root)
//   KILN_FIXTURE_FETCH=URL  try to reach URL; exit 13 if it cannot, 66 if it can
//   KILN_FIXTURE_BIG_FIRST_MB=N  lead .medusa/server with an N MiB file of random
//                          bytes (slow to pack) and end it with a folder zzz/
//                          holding `ready`, for a racing storefront to swap
//   KILN_FIXTURE_FILES=N   first write N small files under node_modules/.fixture,
//                          as a large install leaves (slow to remove)
//   KILN_FIXTURE_NO_ADMIN=1  finish without public/admin/index.html, as
//                          medusajs/medusa#12245's builds did
//   KILN_FIXTURE_HOME_NPM_LINK=P  end with $HOME/.npm a symlink to P, as a build
//                          that wants the cache harvest to take a host folder
// A file `poison-node-modules` at the repository root makes the build try to
// write into its installed node_modules (as a hostile pull request would, to
// spoil a shared build cache) and print what happened.
// Numbered lines start with "fixture-line "; their sha256 is written to
// .medusa/server/printed.sha256, so tests can check the stored log against it.
const crypto = require("crypto")
const fs = require("fs")
const path = require("path")

const printed = crypto.createHash("sha256")

function line(i) {
  return `fixture-line ${String(i).padStart(9, "0")} abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-=+\n`
}

// Pipes take partial writes (or EAGAIN) under load: write until all is out.
function writeAll(text) {
  const bytes = Buffer.from(text)
  for (let done = 0; done < bytes.length; ) {
    try {
      done += fs.writeSync(1, bytes, done, bytes.length - done)
    } catch (error) {
      if (error.code !== "EAGAIN") throw error
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5)
    }
  }
}

function emit(text) {
  printed.update(text)
  writeAll(text)
}

async function main() {
  const [command] = process.argv.slice(2)
  if (command !== "build") {
    console.error(`medusa stand-in: only "build" is supported, not ${JSON.stringify(command)}`)
    process.exit(1)
  }
  const env = process.env
  console.log(`info:    Starting build on Node ${process.version}...`)
  if (fs.existsSync("poison-node-modules")) {
    const target = path.join("node_modules", ".package-lock.json")
    try {
      fs.appendFileSync(target, "\n// poisoned by a pull request\n")
      console.log(`poison: wrote ${target}`)
    } catch (error) {
      console.log(`poison: refused (${error.code})`)
    }
  }
  if (env.KILN_FIXTURE_PRINT) {
    const secret = env.KILN_FIXTURE_PRINT
    writeAll(`whole: ${secret}\n`)
    if (env.KILN_FIXTURE_PRINT_SPLIT) {
      const half = Math.floor(secret.length / 2)
      writeAll(`split: ${secret.slice(0, half)}`)
      await new Promise((resolve) => setTimeout(resolve, 300))
      writeAll(`${secret.slice(half)} :split\n`)
      writeAll(`base64: ${Buffer.from(secret).toString("base64")}\n`)
    }
  }
  if (env.KILN_FIXTURE_FILES) {
    const dir = path.join("node_modules", ".fixture")
    for (let i = 0; i < Number(env.KILN_FIXTURE_FILES); i++) {
      if (i % 1000 === 0) fs.mkdirSync(path.join(dir, String(i / 1000)), { recursive: true })
      fs.writeFileSync(path.join(dir, String(Math.floor(i / 1000)), `f${i}.js`), "module.exports = 1\n")
    }
    console.log(`info:    wrote ${env.KILN_FIXTURE_FILES} files`)
  }
  const delay = Number(env.KILN_FIXTURE_LINE_DELAY_MS || 0)
  for (let i = 0; i < Number(env.KILN_FIXTURE_LINES || 0); i++) {
    emit(line(i))
    if (delay) await new Promise((resolve) => setTimeout(resolve, delay))
  }
  if (env.KILN_FIXTURE_FLOOD_MB) {
    const perLine = line(0).length
    const total = Math.floor((Number(env.KILN_FIXTURE_FLOOD_MB) << 20) / perLine)
    // Through process.stdout, as build tools print: Node makes a pipe blocking,
    // so the flood goes as fast as its reader takes it, with no backoff sleeps.
    for (let i = 0; i < total; ) {
      let batch = ""
      for (let j = 0; j < 8192 && i < total; j++, i++) batch += line(i)
      printed.update(batch)
      process.stdout.write(batch)
    }
  }
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
  if (env.KILN_FIXTURE_FORK_BOMB) {
    console.log("info:    forking without end")
    require("child_process").spawnSync("sh", ["-c", "b() { b | b & }; b; sleep 3600"], { stdio: "inherit" })
  }
  if (env.KILN_FIXTURE_WRITE_MB) {
    const chunk = Buffer.alloc(1 << 20, 7)
    const fd = fs.openSync("big.bin", "w")
    for (let i = 0; i < Number(env.KILN_FIXTURE_WRITE_MB); i++) fs.writeSync(fd, chunk)
    fs.closeSync(fd)
  }
  if (env.KILN_FIXTURE_LOOP) {
    console.log("info:    spinning")
    for (;;) {}
  }
  if (env.KILN_FIXTURE_FETCH) {
    const reached = await new Promise((resolve) => {
      const request = require("http").get(env.KILN_FIXTURE_FETCH, { timeout: 3000 }, (response) => {
        console.log(`fetch: ${env.KILN_FIXTURE_FETCH} answered ${response.statusCode}`)
        resolve(true)
      })
      request.on("timeout", () => request.destroy(new Error("timed out")))
      request.on("error", (error) => {
        console.log(`fetch: ${env.KILN_FIXTURE_FETCH}: ${error.code || error.message}`)
        resolve(false)
      })
    })
    process.exit(reached ? 66 : 13)
  }
  if (env.KILN_FIXTURE_ESCAPE) {
    let escaped = false
    for (const target of ["/kiln-escape", "/etc/kiln-escape", "/usr/local/bin/kiln-escape", "/kiln/../kiln-escape"]) {
      try {
        fs.writeFileSync(target, "escaped\n")
        escaped = true
        console.log(`escape: wrote ${target}`)
      } catch (error) {
        console.log(`escape: write ${target}: refused (${error.code})`)
      }
    }
    for (const target of env.KILN_FIXTURE_ESCAPE.split(":")) {
      // Merely seeing the Docker socket or the token would be a leak.
      try {
        fs.statSync(target)
        escaped = true
        console.log(`escape: ${target} is visible`)
      } catch (error) {
        console.log(`escape: ${target}: not visible (${error.code})`)
      }
    }
    process.exit(escaped ? 66 : 13)
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
  if (!env.KILN_FIXTURE_NO_ADMIN) fs.writeFileSync(path.join(out, "public", "admin", "index.html"), "<!doctype html><div id=medusa></div><script src=assets/index.js></script>\n")
  fs.writeFileSync(path.join(out, "public", "admin", "assets", "index.js"), "console.log('admin')\n")
  if (env.KILN_FIXTURE_LEAK_ENV) {
    const value = JSON.stringify(env[env.KILN_FIXTURE_LEAK_ENV] || "")
    fs.writeFileSync(path.join(out, "public", "admin", "assets", "config.js"), `window.__MEDUSA__={backendUrl:"/",key:${value}};\n`)
  }
  if (env.KILN_FIXTURE_SERVER_LINK) fs.symlinkSync(env.KILN_FIXTURE_SERVER_LINK, path.join(out, "passwd"))
  if (env.KILN_FIXTURE_LINK) fs.symlinkSync(env.KILN_FIXTURE_LINK, path.join(out, "public", "leak"))
  fs.writeFileSync(path.join(out, "printed.sha256"), printed.digest("hex") + "\n")
  if (env.KILN_FIXTURE_BIG_FIRST_MB) {
    const fd = fs.openSync(path.join(out, "aaa-big.bin"), "w")
    for (let i = 0; i < Number(env.KILN_FIXTURE_BIG_FIRST_MB); i++) fs.writeSync(fd, crypto.randomBytes(1 << 20))
    fs.closeSync(fd)
    fs.mkdirSync(path.join(out, "zzz"))
    fs.writeFileSync(path.join(out, "zzz", "ready"), "ready\n")
  }
  if (env.KILN_FIXTURE_HOME_NPM_LINK) {
    const npm = path.join(env.HOME, ".npm")
    fs.rmSync(npm, { recursive: true, force: true })
    fs.symlinkSync(env.KILN_FIXTURE_HOME_NPM_LINK, npm)
  }
  if (env.KILN_FIXTURE_SERVER_ROOT_LINK) {
    fs.rmSync(out, { recursive: true, force: true })
    fs.symlinkSync(env.KILN_FIXTURE_SERVER_ROOT_LINK, out)
  }
  if (env.KILN_FIXTURE_FIFO) {
    const fifo = path.join(repositoryRoot(), env.KILN_FIXTURE_FIFO)
    fs.rmSync(fifo, { force: true })
    require("child_process").execFileSync("mkfifo", [fifo])
  }
  console.log("info:    Backend build completed successfully")
  console.log("info:    Frontend build completed successfully")
}

// The build runs in the backend's directory; the checkout is the nearest parent
// with a .git.
function repositoryRoot() {
  let dir = process.cwd()
  while (!fs.existsSync(path.join(dir, ".git")) && path.dirname(dir) !== dir) dir = path.dirname(dir)
  return dir
}

function* walk(dir) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name)
    if (entry.isDirectory()) yield* walk(full)
    else yield full
  }
}

main()
