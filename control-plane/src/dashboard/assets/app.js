// Kiln's dashboard script: the log viewer (a window of lines over a log of any
// size, live over Server-Sent Events), live statuses, and live tables. Pages read
// without it; this only adds. No dependencies, no build step.
"use strict";

(() => {
  // ---------------------------------------------------------------- helpers

  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  function element(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (value === false || value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  async function getJson(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } });
    if (response.redirected && new URL(response.url).pathname === "/login") {
      // The session ended: sign in again and come back here.
      location.assign(response.url);
      throw new Error("signed out");
    }
    if (!response.ok) throw new Error(`${url}: ${response.status}`);
    return response.json();
  }

  const utf8 = new TextEncoder();
  const byteLength = (text) => utf8.encode(text).length;

  function formatDuration(ms) {
    if (ms === null || ms === undefined) return "";
    const seconds = Math.max(0, Math.round(ms / 1000));
    if (seconds < 60) return `${seconds}s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${seconds % 60}s`;
    return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
  }

  function formatTime(ms) {
    if (!ms) return "";
    const at = new Date(ms);
    return at.toISOString().slice(11, 23);
  }

  // ---------------------------------------------------------------- ANSI

  const SGR_COLOURS = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];

  function xterm256(n) {
    if (n < 16) return null;
    if (n >= 232) {
      const level = 8 + (n - 232) * 10;
      return `rgb(${level},${level},${level})`;
    }
    const cube = n - 16;
    const step = (v) => (v === 0 ? 0 : 55 + v * 40);
    return `rgb(${step(Math.floor(cube / 36))},${step(Math.floor(cube / 6) % 6)},${step(cube % 6)})`;
  }

  // Applies one SGR sequence's parameters to `style`.
  function applySgr(style, parameters) {
    const codes = parameters === "" ? [0] : parameters.split(/[;:]/).map((p) => Number(p) || 0);
    for (let i = 0; i < codes.length; i++) {
      const code = codes[i];
      if (code === 0) Object.assign(style, { fg: null, bg: null, fgRgb: null, bgRgb: null, bold: false, dim: false, italic: false, underline: false });
      else if (code === 1) style.bold = true;
      else if (code === 2) style.dim = true;
      else if (code === 3) style.italic = true;
      else if (code === 4) style.underline = true;
      else if (code === 22) style.bold = style.dim = false;
      else if (code === 23) style.italic = false;
      else if (code === 24) style.underline = false;
      else if (code >= 30 && code <= 37) { style.fg = SGR_COLOURS[code - 30]; style.fgRgb = null; }
      else if (code >= 90 && code <= 97) { style.fg = `bright-${SGR_COLOURS[code - 90]}`; style.fgRgb = null; }
      else if (code >= 40 && code <= 47) { style.bg = SGR_COLOURS[code - 40]; style.bgRgb = null; }
      else if (code >= 100 && code <= 107) { style.bg = `bright-${SGR_COLOURS[code - 100]}`; style.bgRgb = null; }
      else if (code === 39) style.fg = style.fgRgb = null;
      else if (code === 49) style.bg = style.bgRgb = null;
      else if (code === 38 || code === 48) {
        let colour = null;
        let name = null;
        if (codes[i + 1] === 5) {
          const n = codes[i + 2] ?? 0;
          if (n < 8) name = SGR_COLOURS[n];
          else if (n < 16) name = `bright-${SGR_COLOURS[n - 8]}`;
          else colour = xterm256(n);
          i += 2;
        } else if (codes[i + 1] === 2) {
          colour = `rgb(${codes[i + 2] ?? 0},${codes[i + 3] ?? 0},${codes[i + 4] ?? 0})`;
          i += 4;
        }
        if (code === 38) { style.fg = name; style.fgRgb = colour; } else { style.bg = name; style.bgRgb = colour; }
      }
    }
  }

  // What a terminal would show of a line: the text after its last carriage
  // return (progress bars), with escape sequences other than colours removed.
  // Returns runs of [text, style].
  function ansiRuns(line) {
    const lastReturn = line.lastIndexOf("\r", line.length - 2);
    if (lastReturn >= 0) line = line.slice(lastReturn + 1);
    const runs = [];
    const style = { fg: null, bg: null, fgRgb: null, bgRgb: null, bold: false, dim: false, italic: false, underline: false };
    // CSI sequences (colours and cursor moves), OSC (titles, hyperlinks), and lone escapes.
    const pattern = /\x1b\[([0-9;:?]*)([A-Za-z])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?/g;
    let at = 0;
    let match;
    while ((match = pattern.exec(line)) !== null) {
      if (match.index > at) runs.push([line.slice(at, match.index), { ...style }]);
      if (match[2] === "m") applySgr(style, match[1]);
      at = pattern.lastIndex;
    }
    if (at < line.length) runs.push([line.slice(at), { ...style }]);
    return runs;
  }

  // The text of a line as shown, for search highlighting and tests.
  const plainText = (line) => ansiRuns(line).map(([text]) => text).join("");

  function renderRuns(target, line, highlight) {
    const runs = ansiRuns(line);
    for (const [text, style] of runs) {
      const classes = [];
      if (style.fg) classes.push(`fg-${style.fg}`);
      if (style.bg) classes.push(`bg-${style.bg}`);
      if (style.bold) classes.push("b");
      if (style.dim) classes.push("dim");
      if (style.italic) classes.push("i");
      if (style.underline) classes.push("u");
      const plain = !classes.length && !style.fgRgb && !style.bgRgb;
      const span = plain ? null : element("span", { class: classes.join(" ") || null });
      if (span && style.fgRgb) span.style.color = style.fgRgb;
      if (span && style.bgRgb) span.style.backgroundColor = style.bgRgb;
      appendHighlighted(span || target, text, highlight);
      if (span) target.append(span);
    }
  }

  function appendHighlighted(target, text, needle) {
    if (!needle) {
      target.append(text);
      return;
    }
    const lower = text.toLowerCase();
    let at = 0;
    for (;;) {
      const found = lower.indexOf(needle, at);
      if (found < 0) break;
      if (found > at) target.append(text.slice(at, found));
      target.append(element("mark", {}, text.slice(found, found + needle.length)));
      at = found + needle.length;
    }
    if (at < text.length) target.append(text.slice(at));
  }

  // ---------------------------------------------------------------- the log viewer

  const CHUNK = 500; // lines per fetch
  const KEEP_CHUNKS = 400; // chunks cached before the least recently used go
  const OVERSCAN = 40; // rows rendered beyond each edge of the viewport
  const MAX_SCROLL_PX = 8_000_000; // below every browser's element height limit
  const ANCHOR = /^#(system|backend|storefront|deploy|runtime)-L(\d+)(?:-L?(\d+))?$/;

  class LogViewer {
    constructor(section) {
      this.section = section;
      this.deployment = section.dataset.deployment;
      this.stream = section.dataset.stream;
      this.base = `/deployments/${this.deployment}/logs/${this.stream}`;
      this.total = 0; // lines, the partial last one counted
      this.size = 0; // bytes held up to
      this.partial = false;
      this.ended = false;
      this.chunks = new Map(); // chunk index -> { lines: [], times: [] }
      this.pending = new Set();
      this.sections = [];
      this.collapsed = new Set(); // section start lines
      this.following = true;
      this.newLines = 0;
      this.matches = [];
      this.match = -1;
      this.needle = "";
      this.selection = null; // [first, last] line numbers, 0-based
      this.rowHeight = 20;
      this.build();
    }

    build() {
      const raw = $("p.raw-links", this.section);
      this.followButton = element("button", { type: "button", class: "follow", "aria-pressed": "true", onclick: () => this.setFollowing(!this.following) }, "Pause");
      this.newButton = element("button", { type: "button", class: "new-lines", hidden: true, onclick: () => { this.setFollowing(true); } }, "");
      this.timesBox = element("input", { type: "checkbox", id: `${this.stream}-times`, onchange: () => this.render() });
      this.wrapBox = element("input", { type: "checkbox", id: `${this.stream}-wrap`, onchange: () => { this.viewport.classList.toggle("wrap", this.wrapBox.checked); this.render(); } });
      this.searchBox = element("input", { type: "search", id: `${this.stream}-search`, placeholder: "Search the whole log", autocomplete: "off" });
      this.searchStatus = element("span", { class: "search-status", role: "status", "aria-live": "polite" });
      const searchForm = element("form", { class: "search", role: "search", onsubmit: (event) => { event.preventDefault(); this.search(this.searchBox.value, event.submitter?.value === "prev" ? -1 : 1); } },
        element("label", { for: this.searchBox.id, class: "visually-hidden" }, `Search the ${this.stream} log`),
        this.searchBox,
        element("button", { type: "submit", value: "prev", title: "Previous match (Shift+Enter)" }, "↑ Prev"),
        element("button", { type: "submit", value: "next", title: "Next match (Enter)" }, "↓ Next"),
        this.searchStatus);
      // Enter goes to the next match and Shift+Enter to the previous (a form's
      // own Enter would press its first button, Prev).
      this.searchBox.addEventListener("keydown", (event) => {
        if (event.key !== "Enter") return;
        event.preventDefault();
        this.search(this.searchBox.value, event.shiftKey ? -1 : 1);
      });
      this.stateLabel = element("span", { class: "log-state", role: "status" }, "Loading…");
      const toolbar = element("div", { class: "toolbar" },
        this.followButton, this.newButton,
        element("label", {}, this.timesBox, " Times"),
        element("label", {}, this.wrapBox, " Wrap"),
        searchForm, this.stateLabel);
      if (raw) toolbar.append(...[...raw.querySelectorAll("a")].map((link) => link.cloneNode(true)));
      this.outline = element("nav", { class: "outline", "aria-label": `Steps of the ${this.stream} log` });
      this.sizer = element("div", { class: "sizer" });
      this.block = element("div", { class: "block" });
      this.viewport = element("div", { class: "viewport", tabindex: "0", role: "log", "aria-label": `${this.stream} log lines` }, this.sizer, this.block);
      this.viewport.addEventListener("scroll", () => this.onScroll(), { passive: true });
      this.viewport.addEventListener("keydown", (event) => this.onKey(event));
      raw?.remove();
      this.section.append(toolbar, this.outline, this.viewport);
      if (this.stream === "runtime") this.section.insertBefore(runtimeFilters(this), toolbar.nextSibling);
      this.section.classList.add("live");
    }

    // ------------------------------------------------------------ data

    async open() {
      const tail = await getJson(`${this.base}/lines?tail=${CHUNK}`);
      this.accept(tail);
      this.ended = tail.ended;
      if (tail.reused_from) this.showReused(tail.reused_from);
      await this.loadOutline();
      const anchor = ANCHOR.exec(location.hash);
      if (anchor && anchor[1] === this.stream) {
        this.goToAnchor(anchor);
      } else {
        this.scrollToEnd();
      }
      this.updateState();
      if (!this.ended) this.follow();
    }

    accept(window) {
      const stale = window.size < this.size;
      if (!stale) {
        this.total = window.total;
        this.size = window.size;
        this.partial = window.partial;
      }
      window.lines.forEach((line, i) => {
        const number = window.first + i;
        // An older window's unfinished last line is shorter than the one held.
        if (stale && window.partial && number === window.total - 1 && this.line(number)) return;
        this.store(number, line, window.times[i] ?? null);
      });
      this.section.dataset.total = String(this.total);
      this.section.dataset.size = String(this.size);
    }

    forget(number) {
      const chunk = this.chunks.get(Math.floor(number / CHUNK));
      if (chunk) delete chunk.lines[number % CHUNK];
    }

    store(number, line, time) {
      const index = Math.floor(number / CHUNK);
      let chunk = this.chunks.get(index);
      if (!chunk) {
        chunk = { lines: [], times: [] };
        this.chunks.set(index, chunk);
        if (this.chunks.size > KEEP_CHUNKS) {
          const oldest = this.chunks.keys().next().value;
          if (oldest !== index) this.chunks.delete(oldest);
        }
      } else {
        // Most recently used last.
        this.chunks.delete(index);
        this.chunks.set(index, chunk);
      }
      chunk.lines[number % CHUNK] = line;
      chunk.times[number % CHUNK] = time;
    }

    line(number) {
      const chunk = this.chunks.get(Math.floor(number / CHUNK));
      const offset = number % CHUNK;
      return chunk && chunk.lines[offset] !== undefined ? [chunk.lines[offset], chunk.times[offset]] : null;
    }

    async fetchChunk(index) {
      if (this.pending.has(index)) return;
      this.pending.add(index);
      try {
        // A window of long lines comes short (the server bounds its bytes):
        // ask from the first line of the chunk not held yet.
        let from = index * CHUNK;
        const end = Math.min((index + 1) * CHUNK, Math.max(this.total, from + 1));
        while (from < end && this.line(from)) from++;
        if (from >= end) return;
        const window = await getJson(`${this.base}/lines?from=${from}&count=${end - from}`);
        this.accept(window);
        this.render();
      } catch (error) {
        this.stateLabel.textContent = `Could not load lines: ${error.message}`;
      } finally {
        this.pending.delete(index);
      }
    }

    async loadOutline() {
      try {
        const outline = await getJson(`${this.base}/outline`);
        const fresh = JSON.stringify(outline.sections);
        if (fresh === this.outlineJson) return;
        this.outlineJson = fresh;
        const first = this.sections.length === 0;
        this.sections = outline.sections;
        if (first && this.ended && this.sections.some((s) => s.failed)) {
          // A failed build opens at its failing step; the others fold away.
          for (const s of this.sections) if (!s.failed && !this.sections.some((f) => f.failed && f.start >= s.start && f.end <= s.end)) this.collapsed.add(s.start);
        }
        this.drawOutline();
        this.render();
      } catch (error) {
        this.outline.textContent = "";
      }
    }

    drawOutline() {
      this.outline.textContent = "";
      if (!this.sections.length) return;
      const list = element("ol");
      for (const s of this.sections) {
        const open = !this.collapsed.has(s.start);
        const item = element("li", { class: s.failed ? "failed" : null },
          element("button", { type: "button", class: "fold", "aria-expanded": String(open), onclick: () => this.toggle(s.start) },
            element("span", { "aria-hidden": "true" }, open ? "▾ " : "▸ "), s.title),
          " ",
          element("a", { href: `#${this.stream}-L${s.start + 1}`, class: "at" }, `L${s.start + 1}`),
          s.duration_ms !== null && s.duration_ms !== undefined ? element("span", { class: "duration" }, ` ${formatDuration(s.duration_ms)}`) : null,
          s.failed ? element("span", { class: "badge small bad" }, "✕ failed") : null);
        list.append(item);
      }
      this.outline.append(element("h4", {}, "Steps"), list);
    }

    // Folds or unfolds the section at `start`, keeping its first row in view.
    toggle(start) {
      if (this.collapsed.has(start)) this.collapsed.delete(start);
      else this.collapsed.add(start);
      this.drawOutline();
      if (!this.ended) this.setFollowing(false);
      const geometry = this.geometry();
      this.sizer.style.height = `${geometry.height}px`;
      this.scrollToRow(this.rowOf(start, geometry.folds), geometry);
      this.render();
    }

    follow() {
      if (this.events) return;
      // The browser reconnects by itself and sends Last-Event-ID, the byte
      // offset it holds up to; the server goes on from there.
      this.events = new EventSource(`${this.base}/events?from=${this.size}`);
      this.events.onmessage = (message) => this.append(JSON.parse(message.data));
      // Steps begin and end while the build runs.
      this.outlineTimer = setInterval(() => this.loadOutline(), 5000);
      this.events.addEventListener("end", () => {
        this.events.close();
        this.events = null;
        clearInterval(this.outlineTimer);
        this.ended = true;
        this.updateState();
        this.loadOutline();
        refreshSummary();
      });
      this.events.onerror = () => {
        this.stateLabel.textContent = "Reconnecting…";
      };
    }

    append({ offset, text }) {
      if (offset > this.size) {
        // A gap (should not happen): take the tail afresh.
        this.reloadTail();
        return;
      }
      if (offset < this.size) {
        // Bytes we hold already: skip them.
        const bytes = utf8.encode(text).slice(this.size - offset);
        text = new TextDecoder().decode(bytes);
      }
      if (!text) return;
      this.size += byteLength(text);
      const now = Date.now();
      const before = this.total;
      const complete = text.split("\n");
      const trailing = complete.pop(); // after the last line break: a line still being written
      const joins = this.partial && this.total > 0;
      const start = joins ? this.total - 1 : this.total;
      const held = joins ? this.line(start) : null;
      const withHeld = (piece, time) => {
        if (!joins) return [piece, time];
        return held ? [held[0] + piece, held[1] ?? time] : null; // not held: fetched again when shown
      };
      complete.forEach((piece, i) => {
        const joined = i === 0 ? withHeld(piece, now) : [piece, now];
        if (joined) this.store(start + i, joined[0], joined[1]);
        else this.forget(start + i);
      });
      const next = start + complete.length;
      if (trailing !== "") {
        const joined = complete.length === 0 ? withHeld(trailing, now) : [trailing, now];
        if (joined) this.store(next, joined[0], joined[1]);
        else this.forget(next);
        this.total = next + 1;
        this.partial = true;
      } else {
        this.total = next;
        this.partial = false;
      }
      this.section.dataset.total = String(this.total);
      this.section.dataset.size = String(this.size);
      const added = this.total - before;
      if (this.following) {
        this.scrollToEnd();
      } else if (added > 0) {
        this.newLines += added;
        this.newButton.hidden = false;
        this.newButton.textContent = `${this.newLines} new line${this.newLines === 1 ? "" : "s"} ↓`;
        this.render();
      }
      this.updateState();
    }

    async reloadTail() {
      this.chunks.clear();
      const tail = await getJson(`${this.base}/lines?tail=${CHUNK}`);
      this.size = 0;
      this.total = 0;
      this.accept(tail);
      this.render();
    }

    setFollowing(on) {
      this.following = on;
      this.followButton.textContent = on ? "Pause" : "Follow";
      this.followButton.setAttribute("aria-pressed", String(on));
      this.section.dataset.following = String(on);
      if (on) {
        this.newLines = 0;
        this.newButton.hidden = true;
        this.scrollToEnd();
      }
    }

    // Nothing was built, so there is no output: say whose output it is instead
    // of an empty box.
    showReused(deployment) {
      const link = element("a", { href: `/deployments/${encodeURIComponent(deployment)}` }, deployment);
      this.viewport.hidden = true;
      this.viewport.before(element("p", { class: "reused" },
        `Not built: its inputs are unchanged since deployment `, link, `, so that build's output was reused.`));
    }

    updateState() {
      this.section.dataset.ended = String(this.ended);
      const lines = `${this.total.toLocaleString()} line${this.total === 1 ? "" : "s"}`;
      this.stateLabel.textContent = this.ended ? `${lines} · finished` : `${lines} · live`;
      this.followButton.hidden = this.ended;
      if (this.ended) this.newButton.hidden = true;
    }

    // ------------------------------------------------------------ rows

    // Folded sections, outermost first, none inside another.
    folds() {
      const folds = this.sections
        .filter((s) => this.collapsed.has(s.start) && s.end - s.start > 1)
        .sort((a, b) => a.start - b.start || b.end - a.end);
      const kept = [];
      for (const s of folds) {
        const previous = kept[kept.length - 1];
        if (previous && s.start < previous.end) continue;
        kept.push(s);
      }
      return kept;
    }

    rowCount(folds) {
      return folds.reduce((rows, s) => rows - (Math.min(s.end, this.total) - s.start - 1), this.total);
    }

    // What row `row` shows: a line, or a folded section.
    rowAt(row, folds) {
      let shift = 0;
      for (const s of folds) {
        const rowStart = s.start - shift;
        if (row < rowStart) break;
        if (row === rowStart) return { fold: s };
        shift += Math.min(s.end, this.total) - s.start - 1;
      }
      return { line: row + shift };
    }

    rowOf(line, folds) {
      let shift = 0;
      for (const s of folds) {
        if (line < s.start) break;
        if (line < s.end) return s.start - shift;
        shift += Math.min(s.end, this.total) - s.start - 1;
      }
      return line - shift;
    }

    // Unfolds whatever hides `line`.
    reveal(line) {
      let changed = false;
      for (const s of this.sections) {
        if (this.collapsed.has(s.start) && line > s.start && line < s.end) {
          this.collapsed.delete(s.start);
          changed = true;
        }
      }
      if (changed) this.drawOutline();
    }

    geometry() {
      const folds = this.folds();
      const rows = this.rowCount(folds);
      const full = rows * this.rowHeight;
      const height = Math.min(full, MAX_SCROLL_PX);
      return { folds, rows, full, height };
    }

    // The row at the viewport's top and how far into it, from the scroll position.
    topRow(geometry) {
      const viewportHeight = this.viewport.clientHeight;
      const scrollMax = Math.max(0, geometry.height - viewportHeight);
      const virtualMax = Math.max(0, geometry.full - viewportHeight);
      const scrolled = Math.min(this.viewport.scrollTop, scrollMax);
      const virtual = scrollMax > 0 ? (scrolled / scrollMax) * virtualMax : 0;
      const row = Math.floor(virtual / this.rowHeight);
      return { row, fraction: virtual / this.rowHeight - row, atEnd: scrollMax - this.viewport.scrollTop < 2 };
    }

    scrollToRow(row, geometry) {
      const viewportHeight = this.viewport.clientHeight;
      const scrollMax = Math.max(0, geometry.height - viewportHeight);
      const virtualMax = Math.max(1, geometry.full - viewportHeight);
      const virtual = Math.max(0, row * this.rowHeight - viewportHeight / 3);
      this.viewport.scrollTop = Math.min(scrollMax, (virtual / virtualMax) * scrollMax);
    }

    scrollToEnd() {
      const geometry = this.geometry();
      this.sizer.style.height = `${geometry.height}px`;
      this.viewport.scrollTop = this.viewport.scrollHeight;
      this.render();
    }

    onScroll() {
      if (this.rendering) return;
      const geometry = this.geometry();
      const { atEnd } = this.topRow(geometry);
      if (!this.ended && this.following !== atEnd) {
        // Scrolling up pauses; scrolling back to the end follows again.
        this.setFollowing(atEnd);
      }
      this.render();
    }

    onKey(event) {
      const page = Math.max(1, this.viewport.clientHeight - this.rowHeight * 2);
      const moves = { ArrowDown: this.rowHeight, ArrowUp: -this.rowHeight, PageDown: page, PageUp: -page, " ": page };
      if (event.key === "Home") this.viewport.scrollTop = 0;
      else if (event.key === "End") this.viewport.scrollTop = this.viewport.scrollHeight;
      else if (event.key in moves) this.viewport.scrollTop += moves[event.key];
      else return;
      event.preventDefault();
    }

    render() {
      if (this.frame) return;
      this.frame = requestAnimationFrame(() => {
        this.frame = null;
        this.draw();
      });
    }

    draw() {
      this.rendering = true;
      const geometry = this.geometry();
      this.sizer.style.height = `${geometry.height}px`;
      // A short log takes the room it needs; a long one 70% of the window.
      const wanted = Math.max(6 * this.rowHeight, Math.min(geometry.height + 2, Math.round(window.innerHeight * 0.7)));
      if (this.viewport.style.height !== `${wanted}px`) this.viewport.style.height = `${wanted}px`;
      const viewportHeight = this.viewport.clientHeight || 600;
      const { row: top, fraction, atEnd } = this.topRow(geometry);
      const visible = Math.ceil(viewportHeight / this.rowHeight) + 1;
      const first = Math.max(0, top - OVERSCAN);
      const last = Math.min(geometry.rows, top + visible + OVERSCAN);
      const times = this.timesBox.checked;
      const [selectFirst, selectLast] = this.selection ?? [-1, -2];
      const current = this.match >= 0 ? this.matches[this.match] : -1;
      const missing = new Set();
      const rows = document.createDocumentFragment();
      let anchorRow = null;
      for (let row = first; row < last; row++) {
        const at = this.rowAt(row, geometry.folds);
        let node;
        if (at.fold) {
          const s = at.fold;
          node = element("div", { class: "row folded" },
            element("span", { class: "n" }, String(s.start + 1)),
            element("button", { type: "button", class: "unfold", "aria-expanded": "false", onclick: () => this.toggle(s.start) },
              `▸ ${s.title} — ${Math.min(s.end, this.total) - s.start} lines`,
              s.duration_ms !== null && s.duration_ms !== undefined ? ` · ${formatDuration(s.duration_ms)}` : "",
              s.failed ? " · failed" : ""));
        } else {
          const number = at.line;
          const held = this.line(number);
          if (!held) missing.add(Math.floor(number / CHUNK));
          const section = this.sections.find((s) => s.start === number && s.end - s.start > 1);
          const classes = ["row"];
          if (number >= selectFirst && number <= selectLast) classes.push("selected");
          if (number === current) classes.push("current");
          else if (this.needle && this.matchSet?.has(number)) classes.push("match");
          node = element("div", { class: classes.join(" "), "data-line": String(number + 1) },
            element("a", { class: "n", href: `#${this.stream}-L${number + 1}`, onclick: (event) => this.onLineLink(event, number), "aria-label": `Line ${number + 1}` }, String(number + 1)));
          if (section) {
            node.append(element("button", { type: "button", class: "fold-here", "aria-expanded": "true", title: `Fold ${section.title}`, onclick: () => this.toggle(section.start) }, "▾"));
          }
          if (times) node.append(element("span", { class: "t" }, held ? formatTime(held[1]) : ""));
          const text = element("span", { class: "text" });
          if (held) renderRuns(text, held[0], this.needle);
          else text.append(element("span", { class: "loading" }, "…"));
          node.append(text);
        }
        if (row === top) anchorRow = node;
        rows.append(node);
      }
      this.block.replaceChildren(rows);
      // Place the block so the top row sits where the scroll position says,
      // however tall wrapped rows are.
      const scrollTop = this.viewport.scrollTop;
      if (atEnd && geometry.rows > 0 && this.block.lastElementChild) {
        const blockHeight = this.block.offsetHeight;
        this.block.style.top = `${Math.max(0, geometry.height - blockHeight)}px`;
        if (blockHeight > geometry.height) this.sizer.style.height = `${blockHeight}px`;
        this.viewport.scrollTop = this.viewport.scrollHeight;
      } else {
        const offset = anchorRow ? anchorRow.offsetTop + fraction * anchorRow.offsetHeight : 0;
        this.block.style.top = `${Math.max(0, scrollTop - offset)}px`;
      }
      for (const index of missing) this.fetchChunk(index);
      this.section.dataset.rendered = String(this.block.childElementCount);
      this.rendering = false;
    }

    // ------------------------------------------------------------ anchors

    onLineLink(event, number) {
      event.preventDefault();
      if (event.shiftKey && this.selection) {
        const from = this.selection[0];
        this.selection = [Math.min(from, number), Math.max(from, number)];
      } else {
        this.selection = [number, number];
      }
      const [a, b] = this.selection;
      const hash = a === b ? `#${this.stream}-L${a + 1}` : `#${this.stream}-L${a + 1}-${b + 1}`;
      history.replaceState(null, "", hash);
      this.render();
    }

    goToAnchor(anchor) {
      const a = Number(anchor[2]) - 1;
      const b = anchor[3] ? Number(anchor[3]) - 1 : a;
      this.selection = [Math.min(a, b), Math.max(a, b)];
      this.goToLine(this.selection[0]);
      // The page too: no element has the anchor's id for the browser to find.
      this.section.scrollIntoView({ block: "start" });
    }

    goToLine(line) {
      if (!this.ended) this.setFollowing(false);
      this.reveal(line);
      const geometry = this.geometry();
      this.sizer.style.height = `${geometry.height}px`;
      this.scrollToRow(this.rowOf(line, geometry.folds), geometry);
      this.render();
    }

    // ------------------------------------------------------------ search

    async search(text, direction) {
      const needle = text.trim().toLowerCase();
      if (!needle) {
        this.needle = "";
        this.matches = [];
        this.matchSet = null;
        this.match = -1;
        this.searchStatus.textContent = "";
        this.render();
        return;
      }
      if (needle !== this.needle || this.searchedAt !== this.size) {
        this.searchStatus.textContent = "Searching…";
        try {
          const found = await getJson(`${this.base}/search?q=${encodeURIComponent(text.trim())}`);
          this.needle = needle;
          this.searchedAt = this.size;
          this.matches = found.matches;
          this.matchSet = new Set(found.matches);
          this.truncated = found.truncated;
          this.match = -1;
        } catch (error) {
          this.searchStatus.textContent = `Search failed: ${error.message}`;
          return;
        }
      }
      if (!this.matches.length) {
        this.searchStatus.textContent = "No matches";
        this.render();
        return;
      }
      this.match = this.match < 0
        ? (direction > 0 ? 0 : this.matches.length - 1)
        : (this.match + direction + this.matches.length) % this.matches.length;
      const more = this.truncated ? "+" : "";
      this.searchStatus.textContent = `${this.match + 1} of ${this.matches.length}${more} · line ${this.matches[this.match] + 1}`;
      this.section.dataset.match = String(this.matches[this.match] + 1);
      this.goToLine(this.matches[this.match]);
    }
  }

  // ---------------------------------------------------------------- the deployment page

  const viewers = new Map();

  // ---------------------------------------------------------------- runtime filters

  // The Runtime tab's filters: by service, level, time and text, read on the
  // server; the matches replace the viewer until cleared.
  function runtimeFilters(viewer) {
    const base = `/deployments/${viewer.deployment}/logs/runtime/filter`;
    const boxes = (name, values) => values.map((value) =>
      element("label", {}, element("input", { type: "checkbox", name, value }), ` ${value}`));
    const since = element("input", { type: "datetime-local", name: "since", step: "1" });
    const until = element("input", { type: "datetime-local", name: "until", step: "1" });
    const text = element("input", { type: "search", name: "q", placeholder: "text" });
    const status = element("span", { class: "filter-status", role: "status", "aria-live": "polite" });
    const download = element("a", { class: "download", hidden: true }, "Download these lines");
    const results = element("ol", { class: "filtered", hidden: true });
    const form = element("form", { class: "runtime-filters", role: "search" },
      element("fieldset", {}, element("legend", {}, "Service"), ...boxes("services", ["server", "worker", "migrations", "storefront"])),
      element("fieldset", {}, element("legend", {}, "Level"), ...boxes("levels", ["error", "warn", "info", "debug"])),
      element("label", {}, "From ", since),
      element("label", {}, "To ", until),
      element("label", {}, "Text ", text),
      element("button", { type: "submit" }, "Filter"),
      element("button", { type: "button", class: "clear", onclick: () => clear() }, "Clear"),
      status, download);
    const query = () => {
      const params = new URLSearchParams();
      for (const name of ["services", "levels"]) {
        const picked = [...form.querySelectorAll(`input[name=${name}]:checked`)].map((box) => box.value);
        if (picked.length) params.set(name, picked.join(","));
      }
      // datetime-local is the browser's own time zone.
      if (since.value) params.set("since", String(new Date(since.value).getTime()));
      if (until.value) params.set("until", String(new Date(until.value).getTime()));
      if (text.value.trim()) params.set("q", text.value.trim());
      return params;
    };
    const clear = () => {
      form.reset();
      results.hidden = true;
      download.hidden = true;
      status.textContent = "";
      viewer.viewport.hidden = false;
      viewer.render();
    };
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const params = query();
      status.textContent = "Filtering…";
      try {
        const found = await getJson(`${base}?${params}`);
        results.replaceChildren(...found.lines.map((line) => element("li", { class: line.level ? `level-${line.level}` : "" },
          element("a", { class: "n", href: `#${line.stream}-L${line.line}` }, line.at ? new Date(line.at).toLocaleTimeString() : `L${line.line}`),
          line.service ? element("span", { class: "service" }, line.service) : null,
          line.level ? element("span", { class: "level" }, line.level) : null,
          element("span", { class: "text" }, stripAnsi(line.text)))));
        const shown = found.truncated ? `the newest ${found.lines.length} of ${found.matched}` : `${found.matched}`;
        status.textContent = `${shown} matching line${found.matched === 1 ? "" : "s"}`;
        params.set("format", "text");
        download.href = `${base}?${params}`;
        download.hidden = found.matched === 0;
        results.hidden = false;
        viewer.viewport.hidden = true;
      } catch (error) {
        status.textContent = `Could not filter: ${error.message}`;
      }
    });
    return element("div", { class: "runtime" }, form, results);
  }

  function stripAnsi(text) {
    // eslint-disable-next-line no-control-regex
    return text.replace(/\x1b\[[0-9;?]*[ -/]*[@-~]/g, "");
  }

  function showStream(stream) {
    const sections = $$("section.logview");
    if (!sections.length) return;
    const target = sections.find((s) => s.dataset.stream === stream) ?? sections[0];
    for (const s of sections) s.hidden = s !== target;
    for (const tab of $$("nav.streams a")) {
      if (tab.dataset.stream === target.dataset.stream) tab.setAttribute("aria-current", "true");
      else tab.removeAttribute("aria-current");
    }
    let viewer = viewers.get(target.dataset.stream);
    if (!viewer) {
      viewer = new LogViewer(target);
      viewers.set(target.dataset.stream, viewer);
      viewer.open().catch((error) => { viewer.stateLabel.textContent = `Could not open the log: ${error.message}`; });
    } else {
      viewer.render();
    }
    return viewer;
  }

  function streamFromHash() {
    const hash = location.hash.slice(1);
    const anchor = ANCHOR.exec(location.hash);
    if (anchor) return anchor[1];
    if ($$("nav.streams a").some((tab) => tab.dataset.stream === hash)) return hash;
    return null;
  }

  function defaultStream() {
    const status = $("#deployment-status");
    // A failed component's log first; otherwise the backend's.
    const failed = $$(".components .badge.bad, dl.meta .badge.bad").map((badge) => badge.textContent.toLowerCase());
    if (failed.some((text) => text.startsWith("storefront"))) return "storefront";
    if (failed.some((text) => text.startsWith("backend"))) return "backend";
    return status ? "backend" : null;
  }

  // "Build time" counts on while the deployment builds. The server's clock
  // decides: the page says its time when it was made.
  function tickBuildTime() {
    setInterval(() => {
      for (const dd of $$("dd.build-time[data-started]")) {
        if (dd.dataset.skew === undefined) dd.dataset.skew = String(Number(dd.dataset.now) - Date.now());
        const now = Date.now() + Number(dd.dataset.skew);
        dd.textContent = formatDuration(now - Number(dd.dataset.started));
      }
    }, 1000);
  }

  async function refreshSummary() {
    const summary = $("#summary");
    if (!summary) return;
    try {
      const response = await fetch(location.pathname, { credentials: "same-origin" });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = $("#summary", page);
      if (fresh) summary.replaceWith(document.adoptNode(fresh));
    } catch (_) {
      // The next poll tries again.
    }
  }

  function watchStatus() {
    const badge = $("#deployment-status");
    if (!badge) return;
    const id = badge.dataset.deployment;
    let last = $(".badge", badge)?.dataset.status;
    const final = new Set(["live", "ready", "build_failed", "build_canceled", "deploy_failed", "awaiting_deployment"]);
    let polls = 0;
    const poll = async () => {
      try {
        const status = await getJson(`/deployments/${id}/status`);
        polls += 1;
        // While queued, why it waits follows the fleet (an agent comes back,
        // is paused, frees up) without a change of status.
        if (status.status !== last || (status.status === "queued" && polls % 3 === 0)) {
          last = status.status;
          await refreshSummary();
        }
        if (final.has(status.status) && ![...viewers.values()].some((v) => !v.ended)) return;
      } catch (_) {
        // Try again on the next tick.
      }
      setTimeout(poll, 2000);
    };
    setTimeout(poll, 2000);
  }

  function deploymentPage() {
    if (!$("section.logview")) return;
    const tabs = $$("nav.streams a");
    for (const tab of tabs) {
      tab.addEventListener("click", (event) => {
        event.preventDefault();
        history.replaceState(null, "", `#${tab.dataset.stream}`);
        showStream(tab.dataset.stream);
      });
    }
    showStream(streamFromHash() ?? defaultStream());
    window.addEventListener("hashchange", () => {
      const stream = streamFromHash();
      if (!stream) return;
      const viewer = showStream(stream);
      const anchor = ANCHOR.exec(location.hash);
      if (anchor && viewer && viewer.total > 0) viewer.goToAnchor(anchor);
    });
    watchStatus();
  }

  // ---------------------------------------------------------------- live tables

  // A table with builds in progress refreshes itself until they end.
  function liveTables() {
    const table = $("table.deployments");
    if (!table) return;
    const tick = async () => {
      if (!$(".badge.busy", table)) return;
      try {
        const response = await fetch(location.href, { credentials: "same-origin" });
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = $("table.deployments tbody", page);
        const current = $("tbody", table);
        if (fresh && current) current.replaceWith(document.adoptNode(fresh));
      } catch (_) {
        // Try again on the next tick.
      }
      setTimeout(tick, 5000);
    };
    setTimeout(tick, 5000);
  }

  // A .env file chosen on the variables page is read into the import box.
  function importFile() {
    const input = $("#import-file");
    const box = $("#import-text");
    if (!input || !box) return;
    input.addEventListener("change", async () => {
      const file = input.files[0];
      if (file) box.value = await file.text();
    });
  }

  function start() {
    document.documentElement.classList.add("js");
    importFile();
    deploymentPage();
    tickBuildTime();
    liveTables();
    window.kiln = { viewers, plainText };
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
