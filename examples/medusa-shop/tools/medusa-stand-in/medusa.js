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
//   KILN_FIXTURE_FETCH=URL…  try to reach each URL (space-separated); exit 13 if
//                          none answers, 66 if one does
//   (`medusa start` tries the same two at start, given as runtime variables,
//   and exits 66 if anything got out)
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
// `medusa start` and `medusa db:migrate` behave like Medusa's for a deploy:
//   start       listens on PORT (9000): /health answers OK, /app the admin,
//               /store/products 400 without a publishable key, /version the
//               build's src/version.txt; one JSON line a request. With
//               MEDUSA_WORKER_MODE=worker it serves nothing and stays up. A file
//               src/exit-at-start makes it fail at once, as a broken release does.
//   db:migrate  records the migration in DATABASE_URL's PostgreSQL (table
//               kiln_fixture_migrations) over the wire protocol (trust, password
//               or md5 sign-in); src/migration-fails makes it fail.
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
  if (command === "start") return start()
  if (command === "db:migrate") return migrate()
  if (command !== "build") {
    console.error(`medusa stand-in: only "build", "start" and "db:migrate" are supported, not ${JSON.stringify(command)}`)
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
  if (env.KILN_FIXTURE_FETCH || env.KILN_FIXTURE_ESCAPE) {
    process.exit((await tryToEscape(env)) ? 66 : 13)
  }
  const out = path.join(".medusa", "server")
  fs.rmSync(out, { recursive: true, force: true })
  fs.mkdirSync(path.join(out, "public", "admin", "assets"), { recursive: true })
  fs.copyFileSync("medusa-config.js", path.join(out, "medusa-config.js"))
  const pkg = JSON.parse(fs.readFileSync("package.json", "utf8"))
  // As Medusa's: the project's dependencies and lockfile, for a production install.
  fs.writeFileSync(path.join(out, "package.json"), JSON.stringify({ name: pkg.name, version: pkg.version, scripts: { start: "medusa start" }, dependencies: pkg.dependencies || {} }, null, 2))
  if (fs.existsSync("package-lock.json")) fs.copyFileSync("package-lock.json", path.join(out, "package-lock.json"))
  // The stand-in is a `file:` dependency: the production install needs it there.
  if (fs.existsSync(path.join("tools", "medusa-stand-in"))) fs.cpSync(path.join("tools", "medusa-stand-in"), path.join(out, "tools", "medusa-stand-in"), { recursive: true })
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

// What a hostile build or release tries, each attempt on a line of its own:
// whether any of them got out.
async function tryToEscape(env) {
  let escaped = false
  if (env.KILN_FIXTURE_ESCAPE) {
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
    try {
      process.setuid(0)
      escaped = true
      console.log("escape: became root")
    } catch (error) {
      console.log(`escape: become root: refused (${error.code})`)
    }
  }
  for (const url of (env.KILN_FIXTURE_FETCH || "").split(" ").filter(Boolean)) {
    const reached = await new Promise((resolve) => {
      const request = require("http").get(url, { timeout: 3000 }, (response) => {
        console.log(`fetch: ${url} answered ${response.statusCode}`)
        resolve(true)
      })
      request.on("timeout", () => request.destroy(new Error("timed out")))
      request.on("error", (error) => {
        console.log(`fetch: ${url}: ${error.code || error.message}`)
        resolve(false)
      })
    })
    escaped = escaped || reached
  }
  return escaped
}

function log(level, message, extra) {
  console.log(JSON.stringify({ level, message, timestamp: new Date().toISOString(), ...extra }))
}

async function start() {
  // A hostile release: it tries to get out first, and serves only if nothing did.
  if ((process.env.KILN_FIXTURE_ESCAPE || process.env.KILN_FIXTURE_FETCH) && (await tryToEscape(process.env))) process.exit(66)
  if (fs.existsSync(path.join("src", "exit-at-start"))) {
    log("error", "Error starting server: cannot load src/exit-at-start (a release that cannot start)")
    process.exit(1)
  }
  if (process.env.MEDUSA_WORKER_MODE === "worker") {
    log("info", "Worker started: running scheduled jobs and subscribers")
    setInterval(() => {}, 1 << 30)
    return
  }
  const version = fs.existsSync(path.join("src", "version.txt")) ? fs.readFileSync(path.join("src", "version.txt"), "utf8").trim() : "none"
  const admin = path.join("public", "admin", "index.html")
  const server = require("http").createServer((request, response) => {
    const started = Date.now()
    const url = new URL(request.url, "http://localhost")
    const answer = (status, type, body) => {
      response.writeHead(status, { "content-type": type })
      response.end(body)
      log("http", `${request.method} ${url.pathname} ${status}`, { method: request.method, path: url.pathname, status, duration: Date.now() - started })
    }
    if (url.pathname === "/health") answer(200, "text/plain", "OK")
    else if (url.pathname === "/version") answer(200, "text/plain", version)
    else if (url.pathname === "/app" || url.pathname.startsWith("/app/")) answer(200, "text/html", fs.readFileSync(admin))
    else if (url.pathname.startsWith("/store/")) answer(400, "application/json", JSON.stringify({ type: "not_allowed", message: "Publishable API key required in the request header: x-publishable-api-key. You can manage your keys in settings in the dashboard." }))
    else answer(404, "application/json", JSON.stringify({ type: "not_found", message: `Cannot ${request.method} ${url.pathname}` }))
  })
  const port = Number(process.env.PORT || 9000)
  server.listen(port, () => log("info", `Server is ready on port: ${port} (worker mode: ${process.env.MEDUSA_WORKER_MODE || "shared"})`))
  process.on("SIGTERM", () => server.close(() => process.exit(0)))
}

async function migrate() {
  if (fs.existsSync(path.join("src", "migration-fails"))) {
    log("error", "Migration failed: relation \"product\" already exists")
    process.exit(1)
  }
  if (!process.env.DATABASE_URL) {
    log("error", "Environment variable for DATABASE_URL is not set")
    process.exit(1)
  }
  const version = fs.existsSync(path.join("src", "version.txt")) ? fs.readFileSync(path.join("src", "version.txt"), "utf8").trim() : "none"
  const quoted = version.replace(/'/g, "''")
  await query(process.env.DATABASE_URL, `CREATE TABLE IF NOT EXISTS kiln_fixture_migrations (release TEXT, applied_at TIMESTAMPTZ DEFAULT now()); INSERT INTO kiln_fixture_migrations (release) VALUES ('${quoted}')`)
  log("info", `Migrations applied (release ${version})`)
}

// Just enough of PostgreSQL's wire protocol for one simple query.
function query(databaseUrl, sql) {
  const url = new URL(databaseUrl)
  const user = decodeURIComponent(url.username || "postgres")
  const password = decodeURIComponent(url.password || "")
  const database = decodeURIComponent(url.pathname.slice(1) || user)
  const message = (type, body) => {
    const head = Buffer.alloc(type ? 5 : 4)
    if (type) head.write(type)
    head.writeInt32BE(body.length + 4, type ? 1 : 0)
    return Buffer.concat([head, body])
  }
  const cstring = (text) => Buffer.from(text + "\0")
  return new Promise((resolve, reject) => {
    const socket = require("net").connect(Number(url.port || 5432), url.hostname)
    let pending = Buffer.alloc(0)
    socket.on("error", (error) => reject(new Error(`cannot reach the database at ${url.hostname}:${url.port}: ${error.message}`)))
    socket.on("connect", () => {
      const version = Buffer.alloc(4)
      version.writeInt32BE(196608)
      socket.write(message("", Buffer.concat([version, cstring("user"), cstring(user), cstring("database"), cstring(database), Buffer.from([0])])))
    })
    socket.on("data", (data) => {
      pending = Buffer.concat([pending, data])
      while (pending.length >= 5 && pending.length >= 1 + pending.readInt32BE(1)) {
        const type = String.fromCharCode(pending[0])
        const body = pending.subarray(5, 1 + pending.readInt32BE(1))
        pending = pending.subarray(1 + pending.readInt32BE(1))
        if (type === "R") {
          const kind = body.readInt32BE(0)
          const md5 = (text) => crypto.createHash("md5").update(text).digest("hex")
          if (kind === 3) socket.write(message("p", cstring(password)))
          else if (kind === 5) socket.write(message("p", cstring("md5" + md5(md5(password + user) + body.subarray(4, 8).toString("binary")))))
          else if (kind !== 0) return reject(new Error(`the stand-in cannot sign in with method ${kind}; use trust, password or md5`))
        } else if (type === "E") {
          socket.end()
          return reject(new Error(body.toString().split("\0").find((field) => field.startsWith("M"))?.slice(1)))
        } else if (type === "Z") {
          if (sql === null) {
            socket.end(message("X", Buffer.alloc(0)))
            return resolve()
          }
          socket.write(message("Q", cstring(sql)))
          sql = null
        }
      }
    })
  })
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

main().catch((error) => {
  log("error", error.message)
  process.exit(1)
})
