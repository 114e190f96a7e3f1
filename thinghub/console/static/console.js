/* ThingHub console: the page's views, drawn from /console/api/... (thinghub/console).
 *
 * Plain browser JavaScript, no framework and no build step. Every view is a function that
 * fills <main> from the API; the address bar's hash says which view (#/devices?name=x), so
 * the back button, reloads and links work. Data from the hub is only ever put in the page
 * as text (textContent), never as HTML. Requests that change something carry the session's
 * CSRF token in X-CSRF-Token (guard.py); the live tail offers it as a WebSocket subprotocol.
 */
"use strict";

(() => {
  const API = "/console/api";
  const state = { csrf: null, who: null, cleanups: [], stacks: {} };
  const main = document.getElementById("main");

  // ------------------------------------------------------------------ helpers

  /** An element: h("a", {href: "#/x", class: "y"}, "text", child, ...). */
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "class") node.className = value;
      else if (value === true) node.setAttribute(key, "");
      else node.setAttribute(key, String(value));
    }
    append(node, children);
    return node;
  }

  /** Append a child, or a (nested) list of them; null, undefined and false are skipped. */
  function append(node, children) {
    for (const child of [children].flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const fmt = new Intl.NumberFormat();
  const num = (n) => (n === null || n === undefined ? "—" : fmt.format(n));
  const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const when = (ms) => (ms ? dateFmt.format(new Date(ms)) : "—");

  function bytes(n) {
    if (n < 1024) return `${fmt.format(n)} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }

  function duration(s) {
    if (s === 0xffffffff) return "never expires";
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${Math.round(s / 3600)} h`;
    return `${Math.round(s / 86400)} days`;
  }

  const pill = (text, kind) => h("span", { class: `pill ${kind || text}` }, text.replace(/_/g, " "));

  function toast(text) {
    const box = document.getElementById("toast");
    box.textContent = text;
    toast.shown = Date.now();
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.textContent = ""; }, 4000);
  }

  /** A toast outlives the view change its action makes, not the next one. */
  function expireToast() {
    if (toast.shown && Date.now() - toast.shown > 1000) document.getElementById("toast").textContent = "";
  }

  function facts(rows) {
    return h("dl", { class: "facts" }, rows.filter(Boolean).map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
  }

  /** A table; one of more than three columns becomes labelled cards on a phone (class rt,
   *  console.css), a narrower one stays a table. */
  function table(columns, rows, empty) {
    columns = columns.filter(Boolean); // a column that does not apply is null
    if (!rows.length) return h("p", { class: "empty" }, empty);
    return h("div", { class: "table-wrap" }, h("table", { class: columns.length > 3 ? "rt" : null },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, columns.map((c, i) =>
        h("td", { "data-label": c.label, class: [i === 0 ? "first" : "", c.num ? "num" : ""].join(" ").trim() || null }, c.cell(row))))))));
  }

  function field(label, input, hint) {
    if (!input.id) input.id = `f-${Math.random().toString(36).slice(2, 9)}`;
    return h("div", { class: "field" }, h("label", { for: input.id }, label), input, hint ? h("span", { class: "hint" }, hint) : null);
  }

  function select(name, options, value) {
    return h("select", { name }, options.map(([v, label]) => h("option", { value: v, selected: v === value }, label)));
  }

  function alertBox() {
    return h("div", { class: "alert", role: "alert" });
  }

  function showError(box, error) {
    box.textContent = error && error.message ? error.message : String(error);
  }

  function hashOf(path, params) {
    const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v !== null && v !== undefined));
    const text = query.toString();
    return `#${path}${text ? `?${text}` : ""}`;
  }

  function go(path, params = {}) {
    const target = hashOf(path, params);
    if (location.hash === target) render();
    else location.hash = target;
  }

  // ------------------------------------------------------------------ the API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
    let response;
    try {
      response = await fetch(API + path, {
        method, headers, credentials: "same-origin", cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new ApiError(0, "Network", "The hub cannot be reached.");
    }
    let data = null;
    try { data = await response.json(); } catch (error) { data = null; }
    if (!response.ok) {
      const err = (data && data.error) || {};
      if (response.status === 401 && path !== "/session") signedOut(err.message);
      throw new ApiError(response.status, err.code || "Error", err.message || `The hub answered ${response.status}.`);
    }
    return data;
  }

  // ------------------------------------------------------------------ routing

  const routes = [
    [/^\/overview$/, "overview", overview],
    [/^\/devices$/, "devices", devices],
    [/^\/devices\/([^/]+)$/, "devices", devicePage],
    [/^\/products$/, "products", products],
    [/^\/products\/([^/]+)$/, "products", productPage],
    [/^\/retained$/, "retained", retained],
    [/^\/retained\/view$/, "retained", retainedView],
    [/^\/publish$/, "publish", publish],
    [/^\/tail$/, "tail", tail],
    [/^\/trace$/, "trace", trace],
    [/^\/trace\/([^/]+)$/, "trace", trace],
  ];

  function cleanup() {
    for (const undo of state.cleanups.splice(0)) undo();
  }

  async function render() {
    cleanup();
    expireToast();
    if (!state.csrf) return signIn();
    const raw = location.hash.replace(/^#/, "") || "/overview";
    const [path, query] = raw.split("?");
    const params = new URLSearchParams(query || "");
    const route = routes.find(([pattern]) => pattern.test(path));
    if (!route) return go("/overview");
    const [pattern, section, view] = route;
    const args = path.match(pattern).slice(1).map(decodeURIComponent);
    for (const link of document.querySelectorAll("#nav a")) {
      if (link.dataset.section === section) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    document.getElementById("top").hidden = false;
    main.replaceChildren();
    // A new view: reading starts at its top (a view may then focus its first field).
    window.scrollTo(0, 0);
    main.focus({ preventScroll: true });
    try {
      await view(params, ...args);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return;
      const box = alertBox();
      showError(box, error);
      main.prepend(box);
    }
  }

  function page(title, ...rest) {
    document.title = `${title} · ThingHub console`;
    main.replaceChildren(h("div", { class: "head" }, h("h1", {}, title), ...rest));
    return main;
  }

  function signedOut(message) {
    state.csrf = null;
    cleanup();
    signIn(message);
  }

  // ------------------------------------------------------------------ sign-in

  /** The sign-in page; ``message``: why it is shown (an error unless ``calm``). */
  function signIn(message, calm) {
    document.title = "Sign in · ThingHub console";
    document.getElementById("top").hidden = true;
    const box = alertBox();
    const note = calm && message ? h("p", { class: "notice", role: "status" }, message) : null;
    if (message && !calm) box.textContent = message;
    const id = h("input", { type: "text", name: "accessKeyId", autocomplete: "username", required: true, spellcheck: "false", autocapitalize: "off" });
    const secret = h("input", { type: "password", name: "accessKeySecret", autocomplete: "current-password", required: true });
    const button = h("button", { type: "submit" }, "Sign in");
    const form = h("form", {
      novalidate: true,
      onsubmit: async (event) => {
        event.preventDefault();
        if (!id.value || !secret.value) return showError(box, "Enter the AccessKeyId and the AccessKeySecret.");
        button.disabled = true;
        box.textContent = "";
        try {
          const who = await api("POST", "/session", { accessKeyId: id.value.trim(), accessKeySecret: secret.value });
          secret.value = "";
          signedIn(who);
          render();
        } catch (error) {
          showError(box, error);
          button.disabled = false;
        }
      },
    },
    field("AccessKeyId", id),
    field("AccessKeySecret", secret),
    button);
    main.replaceChildren(h("div", { class: "signin" },
      h("div", { class: "brand" }, h("img", { src: "/console/static/icon.svg", alt: "", width: 32, height: 32 }), "ThingHub console"),
      h("div", { class: "card" },
        h("h1", {}, "Sign in"),
        h("p", { class: "muted" }, "Use an access key of your account. You see that account's devices, messages and settings only."),
        note, box, form)));
    id.focus();
  }

  function signedIn(who) {
    state.csrf = who.csrfToken;
    state.who = who;
    document.getElementById("who").textContent = `${who.accountName || who.accountId} · ${who.accessKeyId}`;
  }

  document.getElementById("signout").addEventListener("click", async () => {
    try { await api("DELETE", "/session"); } catch (error) { /* signed out either way */ }
    state.csrf = null;
    cleanup();
    signIn("You are signed out.", true);
  });

  // ------------------------------------------------------------------ overview

  const DROP_NAMES = {
    queue_full: "Session queue full",
    slow_consumer: "Slow consumer (QoS 0)",
    expired: "Expired",
    too_large: "Larger than the client accepts",
    offline_qos0: "QoS 0 to an offline session",
    retained_full: "Retained limit reached",
    not_authorized: "Not authorised",
  };

  async function overview() {
    page("Overview");
    const box = alertBox();
    const stats = h("div", { class: "stats" });
    const canvas = h("canvas", { class: "chart", role: "img", "aria-label": "Message rates: waiting for data" });
    const rateText = h("span", { class: "muted" }, "Measuring…");
    const drops = h("div");
    const health = h("div");
    const account = h("div");
    append(main, [box, stats,
      h("section", { class: "card", "aria-labelledby": "rates-h" },
        h("div", { class: "chart-head" }, h("h2", { id: "rates-h" }, "Messages per second"),
          h("div", { class: "legend" }, h("span", {}, h("i", { class: "in" }), "in"), h("span", {}, h("i", { class: "out" }), "out"))),
        canvas, h("p", { class: "hint" }, rateText)),
      h("div", { class: "columns" },
        h("section", { class: "card", "aria-labelledby": "drops-h" }, h("h2", { id: "drops-h" }, "Dropped messages, by reason"), drops),
        h("div", {},
          h("section", { class: "card", "aria-labelledby": "store-h" }, h("h2", { id: "store-h" }, "Store and writers"), health),
          h("section", { class: "card", "aria-labelledby": "acct-h" }, h("h2", { id: "acct-h" }, "Your account"), account)))]);
    const samples = [];
    let stopped = false;
    let timer = null;
    state.cleanups.push(() => { stopped = true; clearTimeout(timer); });
    const tick = async () => {
      if (stopped) return;
      try {
        const o = await api("GET", "/overview");
        if (stopped) return;
        box.textContent = "";
        samples.push({ at: o.at, received: o.received, delivered: o.delivered });
        if (samples.length > 91) samples.shift();
        drawOverview(o, samples, stats, canvas, rateText, drops, health, account);
      } catch (error) {
        if (!stopped) showError(box, error);
      }
      if (!stopped) timer = setTimeout(tick, 2000);
    };
    await tick();
    const redraw = () => drawChart(canvas, samples, rateText);
    window.addEventListener("resize", redraw);
    state.cleanups.push(() => window.removeEventListener("resize", redraw));
  }

  function stat(label, value, note) {
    return h("div", { class: "stat" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value), note ? h("div", { class: "note" }, note) : null);
  }

  function rates(samples) {
    const out = [];
    for (let i = 1; i < samples.length; i++) {
      const dt = samples[i].at - samples[i - 1].at;
      if (dt <= 0) continue;
      out.push({
        in: Math.max(0, (samples[i].received - samples[i - 1].received) / dt),
        out: Math.max(0, (samples[i].delivered - samples[i - 1].delivered) / dt),
      });
    }
    return out;
  }

  function drawOverview(o, samples, stats, canvas, rateText, drops, health, account) {
    const series = rates(samples);
    const last = series[series.length - 1];
    stats.replaceChildren(
      stat("Connections", num(o.connections), `${num(o.connectionsTotal)} accepted since start`),
      stat("Sessions", num(o.sessions)),
      stat("Subscriptions", num(o.subscriptions)),
      stat("Retained messages", num(o.retained)),
      stat("In, msg/s", last ? last.in.toFixed(1) : "…", `${num(o.received)} in all`),
      stat("Out, msg/s", last ? last.out.toFixed(1) : "…", `${num(o.delivered)} in all`));
    drawChart(canvas, samples, rateText);
    const reasons = Object.entries(o.drops).map(([reason, count]) => ({ reason, count }));
    reasons.push({ reason: "store_refused", count: o.refusedStoreUnavailable });
    drops.replaceChildren(table([
      { label: "Reason", cell: (r) => DROP_NAMES[r.reason] || (r.reason === "store_refused" ? "QoS 1/2 refused: store not accepting" : r.reason) },
      { label: "Messages", num: true, cell: (r) => num(r.count) },
    ], reasons, "Nothing dropped."));
    const hs = o.health;
    const rows = Object.keys(hs.failures).sort().map((name) => ({
      name,
      state: hs.failed[name] ? "failed" : hs.degraded[name] ? "degraded" : "ok",
      why: hs.failed[name] || hs.degraded[name] || "",
      failures: hs.failures[name],
    }));
    for (const name of Object.keys(hs.degraded)) {
      if (!(name in hs.failures)) rows.push({ name, state: "degraded", why: hs.degraded[name], failures: 0 });
    }
    const columns = [
      { label: "Component", cell: (r) => h("span", { class: "mono" }, r.name) },
      { label: "State", cell: (r) => pill(r.state) },
      { label: "Failures", num: true, cell: (r) => num(r.failures) },
    ];
    if (rows.some((r) => r.why)) columns.push({ label: "Why", cell: (r) => r.why || "—" });
    health.replaceChildren(h("p", {}, "Hub status ", pill(hs.status)), table(columns, rows, "No writer threads reported."));
    const name = state.who.accountName;
    account.replaceChildren(facts([
      ["Account", name && name !== o.account.id ? `${name} (${o.account.id})` : o.account.id],
      ["Retained", num(o.account.retained)],
      ["Subscriptions", num(o.account.subscriptions)],
      ["Delivery trace", o.trace ? "on" : "off ([trace] enabled = true turns it on)"],
    ]));
  }

  function drawChart(canvas, samples, rateText) {
    const series = rates(samples);
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const top = Math.max(1, ...series.map((p) => Math.max(p.in, p.out)));
    const scale = niceCeiling(top);
    const left = 44, right = 8, up = 8, down = 20;
    const plotW = width - left - right, plotH = height - up - down;
    g.font = "12px system-ui, sans-serif";
    g.fillStyle = "#5b6877";
    g.strokeStyle = "#e2e6ec";
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = up + plotH - (plotH * i) / 4;
      g.beginPath(); g.moveTo(left, Math.round(y) + 0.5); g.lineTo(width - right, Math.round(y) + 0.5); g.stroke();
      const label = (scale * i) / 4;
      g.textAlign = "right"; g.textBaseline = "middle";
      g.fillText(label >= 10 ? fmt.format(Math.round(label)) : String(Number(label.toFixed(2))), left - 6, y);
    }
    const points = 90;
    g.textAlign = "left"; g.textBaseline = "alphabetic";
    g.fillText("3 min ago", left, height - 4);
    g.textAlign = "right";
    g.fillText("now", width - right, height - 4);
    for (const [key, color] of [["in", "#2557d6"], ["out", "#12805c"]]) {
      g.strokeStyle = color; g.lineWidth = 2; g.lineJoin = "round";
      g.beginPath();
      series.forEach((p, i) => {
        const x = left + plotW * (1 - (series.length - 1 - i) / (points - 1));
        const y = up + plotH - (plotH * p[key]) / scale;
        if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    }
    const last = series[series.length - 1];
    const text = last ? `Now ${last.in.toFixed(1)} messages per second in, ${last.out.toFixed(1)} out; rates from the hub's counters every 2 s.` : "Measuring: rates appear after the second reading.";
    rateText.textContent = text;
    canvas.setAttribute("aria-label", `Message rates over the last 3 minutes. ${text}`);
  }

  function niceCeiling(value) {
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  }

  // ------------------------------------------------------------------ devices

  const STATUSES = [["", "Any status"], ["ONLINE", "Online"], ["OFFLINE", "Offline"], ["UNACTIVE", "Never signed in"], ["DISABLE", "Disabled"]];

  async function productOptions() {
    const { products: list } = await api("GET", "/products");
    return list;
  }

  async function devices(params) {
    page("Devices");
    const box = alertBox();
    const current = Object.fromEntries(params);
    const list = await productOptions();
    const product = select("product", [["", "All products"], ...list.map((p) => [p.productKey, `${p.name} (${p.productKey})`])], current.product || "");
    const name = h("input", { type: "search", name: "name", value: current.name || "", placeholder: "Device name", spellcheck: "false", autocapitalize: "off" });
    const match = select("match", [["substring", "contains"], ["prefix", "starts with"]], current.match || "substring");
    const status = select("status", STATUSES, current.status || "");
    const form = h("form", {
      class: "search card", role: "search",
      onsubmit: (event) => {
        event.preventDefault();
        go("/devices", { product: product.value, name: name.value.trim(), match: match.value, status: status.value });
      },
    }, field("Product", product), field("Name", name), field("Match", match), field("Status", status), h("div", { class: "field" }, h("button", { type: "submit" }, "Search")));
    const results = h("section", { class: "card", "aria-label": "Devices found" }, h("p", { class: "muted" }, "Searching…"));
    append(main, [box, form, results]);
    const query = { product: current.product || "", name: current.name || "", match: current.match || "", status: current.status || "" };
    // Keyset paging: the cursor ("before") of every page seen of this search, by page number,
    // so Newer and the browser's back button both land on the right page.
    const key = JSON.stringify(query);
    const cursors = state.stacks[key] || (state.stacks = { [key]: { 1: "" } })[key];
    const before = current.before || "";
    const number = before ? Math.max(2, parseInt(current.page, 10) || 2) : 1;
    cursors[number] = before;
    const started = performance.now();
    const found = await api("GET", `/devices?${new URLSearchParams({ ...query, before, limit: "50" })}`);
    const took = Math.round(performance.now() - started);
    const first = (number - 1) * 50 + 1;
    const shown = found.devices.length;
    const total = `${num(found.total)}${found.totalCapped ? "+" : ""}`;
    results.replaceChildren(
      table([
        { label: "Device", cell: (d) => h("a", { href: `#/devices/${encodeURIComponent(d.iotId)}` }, d.deviceName) },
        { label: "Product", cell: (d) => d.productName },
        { label: "Status", cell: (d) => pill(d.status) },
        { label: "Last sign-in", cell: (d) => when(d.lastOnlineAt) },
        { label: "Address", cell: (d) => d.ipAddress || "—" },
      ], found.devices, "No device matches."),
      h("div", { class: "pager" },
        h("span", { class: "muted", role: "status" }, shown ? `${num(first)}–${num(first + shown - 1)} of ${total} · ${took} ms` : `${total} found`),
        h("div", { class: "actions" },
          h("button", { type: "button", class: "secondary", disabled: !before, onclick: () => {
            const previous = cursors[number - 1];
            if (previous) go("/devices", { ...query, before: previous, page: number - 1 });
            else go("/devices", query);
          } }, "Newer"),
          h("button", { type: "button", class: "secondary", disabled: !found.next, onclick: () => {
            go("/devices", { ...query, before: found.next, page: number + 1 });
          } }, "Older"))));
  }

  async function devicePage(params, iotId) {
    const box = alertBox();
    const data = await api("GET", `/devices/${encodeURIComponent(iotId)}`);
    const d = data.device;
    const s = data.session;
    const connected = s && s.connected;
    const act = (action, question) => async () => {
      if (question && !window.confirm(question)) return;
      try {
        await api("POST", `/devices/${encodeURIComponent(iotId)}/${action}`, {});
        toast({ disable: "Device disabled.", enable: "Device enabled.", disconnect: "Connection closed." }[action]);
        render();
      } catch (error) {
        showError(box, error);
      }
    };
    const topic = `/${d.productKey}/${d.deviceName}/user/get`;
    page(d.deviceName, pill(d.status));
    append(main, [
      h("p", { class: "sub" }, h("a", { href: `#/products/${encodeURIComponent(d.productKey)}` }, d.productName), " · ", h("span", { class: "mono" }, d.iotId)),
      box,
      h("div", { class: "actions card" },
        d.status === "DISABLE"
          ? h("button", { type: "button", onclick: act("enable") }, "Enable")
          : h("button", { type: "button", class: "danger secondary", onclick: act("disable", `Disable ${d.deviceName}? It is disconnected and cannot sign in until enabled.`) }, "Disable"),
        h("button", { type: "button", class: "secondary", disabled: !connected, onclick: act("disconnect", `Close ${d.deviceName}'s connection? It may connect again.`) }, "Disconnect"),
        h("button", { type: "button", class: "secondary", onclick: () => go("/publish", { topic }) }, "Publish to it"),
        h("button", { type: "button", class: "ghost", onclick: () => render() }, "Refresh")),
      h("div", { class: "columns" },
        h("section", { class: "card", "aria-labelledby": "det-h" }, h("h2", { id: "det-h" }, "Device"), facts([
          ["Product", `${d.productName} (${d.productKey})`],
          ["IotId", h("span", { class: "mono" }, d.iotId)],
          d.nickname ? ["Nickname", d.nickname] : null,
          d.instanceId ? ["Instance", d.instanceId] : null,
          ["Status", [pill(d.status), ` since ${when(d.statusChangedAt)}`]],
          ["Registered", when(d.createdAt)],
          ["First sign-in", when(d.activatedAt)],
          ["Last sign-in", when(d.lastOnlineAt)],
          ["From", d.ipAddress || "—"],
        ])),
        h("section", { class: "card", "aria-labelledby": "ses-h" }, h("h2", { id: "ses-h" }, "Session"), sessionFacts(s, data.clientId, data.sessionUnknown))),
      h("section", { class: "card", "aria-labelledby": "sub-h" }, h("h2", { id: "sub-h" }, "Subscriptions"),
        table([
          { label: "Topic filter", cell: (e) => h("span", { class: "mono" }, e.filter) },
          { label: "QoS", num: true, cell: (e) => e.qos },
          { label: "Options", cell: (e) => [e.noLocal ? "No Local" : "", e.retainAsPublished ? "Retain As Published" : "", e.subscriptionId ? `id ${e.subscriptionId}` : ""].filter(Boolean).join(", ") || "—" },
          { label: "Since", cell: (e) => when(e.subscribedAt) },
        ], s ? s.subscriptions : [], "No subscriptions.")),
      h("div", { class: "columns" },
        h("section", { class: "card", "aria-labelledby": "sha-h" }, h("h2", { id: "sha-h" }, "Shadow"), shadowView(data.shadow, d.deviceName)),
        h("section", { class: "card", "aria-labelledby": "del-h" }, h("h2", { id: "del-h" }, "Recent deliveries"),
          data.trace
            ? table([
              { label: "Message", cell: (m) => h("a", { href: `#/trace/${m.messageId}`, class: "mono id" }, m.messageId) },
              { label: "Topic", cell: (m) => h("span", { class: "mono" }, m.topic) },
              { label: "QoS", num: true, cell: (m) => m.qos },
              { label: "Fate", cell: (m) => (m.fate ? pill(m.fate) : "—") },
            ], data.deliveries, "No traced message reached this device lately.")
            : h("p", { class: "empty" }, "The delivery trace is off on this hub ([trace] enabled = true)."))),
    ]);
  }

  function sessionFacts(s, clientId, unknown) {
    if (unknown) return h("p", { class: "empty" }, `The session of ${clientId} cannot be read now: ${unknown}`);
    if (!s) return h("p", { class: "empty" }, `No session for ${clientId}: the device has not connected, or its session ended.`);
    const c = s.connection;
    return facts([
      ["State", s.connected ? pill("ONLINE", "ONLINE") : pill("offline", "OFFLINE")],
      ["Client id", h("span", { class: "mono" }, s.clientId)],
      s.node ? ["Node", s.node] : null,
      ["Kind", s.persistent ? `persistent, expires ${duration(s.expiryInterval)} after it disconnects` : "clean: ends with its connection"],
      c ? ["Protocol", `MQTT ${c.protocol}`] : null,
      c ? ["Address", c.address] : null,
      c ? ["Connected", when(c.connectedAt)] : null,
      c ? ["Keep alive", c.keepAlive ? `${c.keepAlive} s` : "off"] : null,
      ["Queued", `${num(s.queued)} messages (${bytes(s.queuedBytes)})`],
      ["In flight", num(s.inFlight)],
    ]);
  }

  function shadowView(shadow, name) {
    if (!shadow) return h("p", { class: "empty" }, `No shadow: no thing named ${name} has a classic shadow.`);
    if (shadow.error) return h("p", { class: "empty" }, shadow.error);
    const doc = shadow.document;
    return [
      facts([["Version", num(doc.version)]]),
      h("pre", { class: "spaced" }, JSON.stringify(doc.state || {}, null, 2)),
    ];
  }

  // ------------------------------------------------------------------ products

  const OPERATIONS = { PUB: "Devices publish", SUB: "Devices subscribe", ALL: "Publish and subscribe" };

  async function products() {
    page("Products");
    const { products: list } = await api("GET", "/products");
    append(main, h("section", { class: "card" }, table([
      { label: "Product", cell: (p) => h("a", { href: `#/products/${encodeURIComponent(p.productKey)}` }, p.name) },
      { label: "ProductKey", cell: (p) => h("span", { class: "mono" }, p.productKey) },
      { label: "Node type", cell: (p) => p.nodeType.toLowerCase() },
      { label: "Devices", num: true, cell: (p) => h("a", { href: hashOf("/devices", { product: p.productKey }) }, num(p.devices)) },
      { label: "Created", cell: (p) => when(p.createdAt) },
    ], list, "This account has no products yet.")));
  }

  async function productPage(params, key) {
    const { product: p } = await api("GET", `/products/${encodeURIComponent(key)}`);
    page(p.name);
    append(main, [
      h("p", { class: "sub mono" }, p.productKey),
      h("div", { class: "columns" },
        h("section", { class: "card", "aria-labelledby": "pd-h" }, h("h2", { id: "pd-h" }, "Product"), facts([
          ["ProductKey", h("span", { class: "mono" }, p.productKey)],
          ["Node type", p.nodeType.toLowerCase()],
          ["Data format", p.dataFormat === "ALINK_JSON" ? "Alink JSON" : "custom"],
          ["Authentication", p.authType],
          p.instanceId ? ["Instance", p.instanceId] : null,
          ["Description", p.description || "—"],
          ["Created", when(p.createdAt)],
          ["Devices", h("a", { href: hashOf("/devices", { product: p.productKey }) }, num(p.devices))],
        ]))),
      h("section", { class: "card", "aria-labelledby": "pc-h" }, h("h2", { id: "pc-h" }, "Topic categories"),
        h("p", { class: "hint" }, "Which topics the product's devices may publish and subscribe to; ${deviceName} stands for each device's name."),
        table([
          { label: "Topic", cell: (c) => h("span", { class: "mono" }, c.topic) },
          { label: "Permission", cell: (c) => OPERATIONS[c.operation] || c.operation },
          { label: "Description", cell: (c) => c.description || "—" },
        ], p.categories, "No topic categories.")),
    ]);
  }

  // ------------------------------------------------------------------ retained messages

  async function retained(params) {
    page("Retained messages");
    const filterValue = params.get("filter") || "#";
    const after = params.get("after") || "";
    const input = h("input", { type: "text", name: "filter", value: filterValue, spellcheck: "false", autocapitalize: "off" });
    append(main, h("form", {
      class: "search card", role: "search",
      onsubmit: (event) => { event.preventDefault(); go("/retained", { filter: input.value.trim() || "#" }); },
    }, field("Topic filter", input, "MQTT wildcards: + one level, # all levels below."), h("div", { class: "field" }, h("button", { type: "submit" }, "Show"))));
    const found = await api("GET", `/retained?${new URLSearchParams({ filter: filterValue, after, limit: "50" })}`);
    append(main, h("section", { class: "card", "aria-label": "Retained messages found" },
      table([
        { label: "Topic", cell: (m) => h("a", { href: hashOf("/retained/view", { topic: m.topic }), class: "mono" }, m.topic) },
        { label: "Size", num: true, cell: (m) => bytes(m.bytes) },
        { label: "QoS", num: true, cell: (m) => m.qos },
        { label: "Stored", cell: (m) => when(m.storedAt) },
      ], found.messages, "No retained message matches."),
      h("div", { class: "pager" },
        h("span", { class: "muted" }, `${num(found.total)} retained messages match`),
        h("div", { class: "actions" },
          h("button", { type: "button", class: "secondary", disabled: !after, onclick: () => go("/retained", { filter: filterValue }) }, "First page"),
          h("button", { type: "button", class: "secondary", disabled: !found.next, onclick: () => go("/retained", { filter: filterValue, after: found.next }) }, "Next")))));
  }

  function payloadBlock(p) {
    return [
      h("p", { class: "hint" }, p.encoding === "utf8" ? `${bytes(p.bytes)}, UTF-8 text` : `${bytes(p.bytes)}, binary: shown as base64`),
      h("pre", {}, prettyPayload(p)),
    ];
  }

  function prettyPayload(p) {
    if (p.encoding !== "utf8") return p.payload;
    try {
      const text = p.payload.trim();
      if (text.startsWith("{") || text.startsWith("[")) return JSON.stringify(JSON.parse(text), null, 2);
    } catch (error) { /* shown as it is */ }
    return p.payload;
  }

  async function retainedView(params) {
    const topic = params.get("topic") || "";
    const box = alertBox();
    const { message: m } = await api("GET", `/retained/message?${new URLSearchParams({ topic })}`);
    page("Retained message");
    const props = m.properties;
    append(main, [
      h("p", { class: "sub mono" }, m.topic),
      box,
      h("div", { class: "actions card" },
        h("button", { type: "button", class: "danger", onclick: async () => {
          if (!window.confirm(`Delete the retained message on ${m.topic}? Subscribers get an empty retained message, MQTT's way of deleting it.`)) return;
          try {
            await api("DELETE", `/retained/message?${new URLSearchParams({ topic: m.topic })}`);
            toast("Retained message deleted.");
            go("/retained", {});
          } catch (error) {
            showError(box, error);
          }
        } }, "Delete"),
        h("button", { type: "button", class: "secondary", onclick: () => go("/publish", { topic: m.topic, retain: "1" }) }, "Replace…"),
        h("button", { type: "button", class: "ghost", onclick: () => history.back() }, "Back")),
      h("div", { class: "columns" },
        h("section", { class: "card", "aria-labelledby": "rm-h" }, h("h2", { id: "rm-h" }, "Message"), facts([
          ["QoS", m.qos],
          ["Stored", when(m.storedAt)],
          ["MessageId", m.messageId ? h("a", { href: `#/trace/${m.messageId}`, class: "mono id" }, m.messageId) : "—"],
          ["From", m.origin || "—"],
          ["Expires", m.expiresIn === null ? "never" : `in ${duration(m.expiresIn)}`],
          props.contentType ? ["Content type", props.contentType] : null,
          props.responseTopic ? ["Response topic", h("span", { class: "mono" }, props.responseTopic)] : null,
          props.correlationData ? ["Correlation data", props.correlationData.payload] : null,
          props.userProperties ? ["User properties", props.userProperties.map(([k, v]) => `${k}=${v}`).join(", ")] : null,
        ])),
        h("section", { class: "card", "aria-labelledby": "rp-h" }, h("h2", { id: "rp-h" }, "Payload"), payloadBlock(m))),
    ]);
  }

  // ------------------------------------------------------------------ publish

  async function publish(params) {
    page("Publish");
    const box = alertBox();
    const result = h("div", { "aria-live": "polite" });
    const topic = h("input", { type: "text", name: "topic", required: true, value: params.get("topic") || "", spellcheck: "false", autocapitalize: "off", placeholder: "/ProductKey/DeviceName/user/get" });
    const payload = h("textarea", { name: "payload", spellcheck: "false" });
    const encoding = select("encoding", [["utf8", "Text (UTF-8)"], ["base64", "Base64 (binary)"]], "utf8");
    const qos = select("qos", [["0", "0: at most once"], ["1", "1: at least once"], ["2", "2: exactly once"]], "1");
    const retain = h("input", { type: "checkbox", name: "retain", id: "retain", checked: params.get("retain") === "1" });
    const contentType = h("input", { type: "text", name: "contentType", placeholder: "application/json" });
    const responseTopic = h("input", { type: "text", name: "responseTopic", spellcheck: "false", autocapitalize: "off" });
    const correlation = h("input", { type: "text", name: "correlationData", spellcheck: "false" });
    const expiry = h("input", { type: "number", name: "messageExpiry", min: 0, max: 4294967295, inputmode: "numeric" });
    const users = h("div");
    const addUser = (k = "", v = "") => {
      const name = h("input", { type: "text", "aria-label": "User property name", placeholder: "name", value: k });
      const value = h("input", { type: "text", "aria-label": "User property value", placeholder: "value", value: v });
      const row = h("div", { class: "pair" }, name, value, h("button", { type: "button", class: "ghost small", onclick: () => row.remove() }, "Remove"));
      users.append(row);
    };
    const button = h("button", { type: "submit" }, "Publish");
    const form = h("form", {
      class: "card",
      onsubmit: async (event) => {
        event.preventDefault();
        box.textContent = "";
        if (!topic.value) return showError(box, "Enter a topic.");
        const body = {
          topic: topic.value, payload: payload.value, encoding: encoding.value,
          qos: Number(qos.value), retain: retain.checked,
          contentType: contentType.value, responseTopic: responseTopic.value, correlationData: correlation.value,
          userProperties: [...users.querySelectorAll(".pair")].map((row) => [...row.querySelectorAll("input")].map((i) => i.value)).filter(([k]) => k),
        };
        if (expiry.value !== "") body.messageExpiry = Number(expiry.value);
        button.disabled = true;
        try {
          const answer = await api("POST", "/publish", body);
          result.replaceChildren(h("div", { class: "notice" },
            h("strong", {}, "Published. "),
            "MessageId ", h("a", { href: `#/trace/${answer.messageId}`, class: "mono", id: "published-id" }, answer.messageId),
            ` · matched ${num(answer.matched)} ${answer.matched === 1 ? "session" : "sessions"} · `,
            h("a", { href: `#/trace/${answer.messageId}` }, "see its deliveries")));
        } catch (error) {
          showError(box, error);
        } finally {
          button.disabled = false;
        }
      },
    },
    h("div", { class: "form-grid" },
      h("div", { class: "wide" }, field("Topic", topic)),
      h("div", { class: "wide" }, field("Payload", payload)),
      field("Payload is", encoding),
      field("QoS", qos),
      h("div", { class: "field" }, h("span", { class: "label-text" }, "Retain"), h("label", { class: "check", for: "retain" }, retain, "Keep as the topic's retained message")),
      h("details", { class: "wide" }, h("summary", {}, "MQTT 5 properties"),
        h("div", { class: "form-grid" },
          field("Content type", contentType),
          field("Response topic", responseTopic),
          field("Correlation data", correlation, "Sent as its UTF-8 bytes."),
          field("Message expiry (seconds)", expiry, "Empty: never expires."),
          h("div", { class: "wide field" }, h("span", { class: "label-text" }, "User properties"), users,
            h("div", {}, h("button", { type: "button", class: "secondary small", onclick: () => addUser() }, "Add a user property"))))),
      h("div", { class: "wide actions" }, button)));
    append(main, [box, form, result]);
    topic.focus();
  }

  // ------------------------------------------------------------------ live tail

  const TAIL_SHOWN = 500;
  const TAIL_HELD = 1000;

  function tail(params) {
    page("Live tail");
    const filter = h("input", { type: "text", name: "filter", value: params.get("filter") || "#", spellcheck: "false", autocapitalize: "off" });
    const start = h("button", { type: "submit" }, "Start");
    const stop = h("button", { type: "button", class: "secondary", disabled: true }, "Stop");
    const pause = h("button", { type: "button", class: "secondary", disabled: true, "aria-pressed": "false" }, "Pause");
    const clear = h("button", { type: "button", class: "ghost" }, "Clear");
    const box = alertBox();
    const counters = { received: h("strong", {}, "0"), dropped: h("strong", {}, "0"), held: h("strong", {}, "0"), removed: h("strong", {}, "0") };
    const status = h("span", { id: "tail-state", role: "status" }, "Not watching.");
    const list = h("ol", { class: "tail", "aria-label": "Messages, newest first" });
    const empty = h("p", { class: "empty" }, "Messages published in your account to topics the filter matches appear here as they arrive.");
    append(main, [box,
      h("form", {
        class: "card",
        onsubmit: (event) => { event.preventDefault(); connect(); },
      }, h("div", { class: "form-grid" },
        h("div", { class: "wide" }, field("Topic filter", filter, "MQTT wildcards: + one level, # all levels below ($ topics need their own filter).")),
        h("div", { class: "wide actions" }, start, stop, pause, clear)),
      h("div", { class: "tail-status" }, status,
        h("span", {}, counters.received, " received"),
        h("span", { class: "dropped" }, counters.dropped, " dropped by the hub (this page was too slow)"),
        h("span", {}, counters.held, " held while paused"),
        h("span", {}, counters.removed, " older ones removed from the list"))),
      h("section", { class: "card", "aria-label": "Messages" }, empty, list)]);
    let ws = null;
    let paused = false;
    let held = [];
    let heldLost = 0;
    const n = { received: 0, dropped: 0, removed: 0 };
    const update = () => {
      counters.received.textContent = num(n.received);
      counters.dropped.textContent = num(n.dropped);
      counters.held.textContent = num(held.length) + (heldLost ? ` (+${num(heldLost)} not kept)` : "");
      counters.removed.textContent = num(n.removed);
    };
    const show = (items) => {
      empty.hidden = true;
      for (const m of items) list.prepend(tailItem(m));
      while (list.childElementCount > TAIL_SHOWN) { list.lastElementChild.remove(); n.removed += 1; }
    };
    const stopTail = (why) => {
      if (ws) { const socket = ws; ws = null; socket.close(); }
      start.disabled = false; stop.disabled = true; pause.disabled = true;
      if (why) status.textContent = why;
    };
    const connect = () => {
      stopTail();
      const value = filter.value.trim() || "#";
      history.replaceState(null, "", hashOf("/tail", { filter: value }));
      box.textContent = "";
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const socket = new WebSocket(`${scheme}//${location.host}/console/ws/tail?${new URLSearchParams({ filter: value })}`, ["thinghub-console", `csrf.${state.csrf}`]);
      ws = socket;
      start.disabled = true; stop.disabled = false; pause.disabled = false;
      status.textContent = "Connecting…";
      socket.onmessage = (event) => {
        const frame = JSON.parse(event.data);
        if (frame.type === "ready") {
          status.replaceChildren("Watching ", h("code", {}, frame.filter), ".");
        } else if (frame.type === "messages") {
          n.received += frame.items.length;
          n.dropped = frame.dropped;
          if (paused) {
            for (const m of frame.items) {
              if (held.length < TAIL_HELD) held.push(m); else heldLost += 1;
            }
          } else {
            show(frame.items);
          }
          update();
        } else if (frame.type === "end") {
          stopTail(`Stopped: ${frame.reason}.`);
        }
      };
      socket.onclose = () => {
        if (ws === socket) {
          ws = null;
          stopTail("Stopped: the connection closed. Sign in again if the session ended, then Start.");
        }
      };
      socket.onerror = () => {
        if (ws === socket) showError(box, "The live tail could not connect: the session may have ended, or this session has too many tails open.");
      };
    };
    stop.addEventListener("click", () => stopTail("Stopped."));
    pause.addEventListener("click", () => {
      paused = !paused;
      pause.textContent = paused ? "Resume" : "Pause";
      pause.setAttribute("aria-pressed", String(paused));
      if (!paused) { show(held); held = []; heldLost = 0; update(); }
    });
    clear.addEventListener("click", () => { list.replaceChildren(); empty.hidden = false; n.received = 0; n.removed = 0; update(); });
    state.cleanups.push(() => stopTail());
    if (params.get("filter")) connect();
  }

  function tailItem(m) {
    const item = h("li", {},
      h("div", { class: "tail-meta" },
        h("time", { datetime: new Date(m.at).toISOString() }, timeFmt.format(new Date(m.at))),
        h("span", { class: "topic" }, m.topic),
        h("span", { class: "badge" }, `QoS ${m.qos}`),
        m.retain ? h("span", { class: "badge" }, "retained") : null,
        m.contentType ? h("span", { class: "badge" }, m.contentType) : null,
        h("span", { class: "muted" }, bytes(m.bytes) + (m.truncated ? ", first part shown" : "")),
        m.messageId ? h("a", { href: `#/trace/${m.messageId}`, class: "mono id" }, m.messageId) : null),
      h("pre", {}, m.encoding === "utf8" ? m.payload : `base64: ${m.payload}`));
    return item;
  }

  // ------------------------------------------------------------------ trace

  const OUTCOMES = {
    routed: "handed to sessions",
    no_subscriber: "no subscription matched",
    not_authorized: "hidden from subscribers",
    handled_by_service: "taken by a hub service (device shadows)",
    refused: "refused by the hub",
  };

  async function trace(params, messageId) {
    page("Message trace");
    const box = alertBox();
    const input = h("input", { type: "text", name: "messageId", value: messageId || "", inputmode: "numeric", spellcheck: "false", placeholder: "MessageId" });
    append(main, [h("form", {
      class: "search card", role: "search",
      onsubmit: (event) => { event.preventDefault(); const id = input.value.trim(); if (id) go(`/trace/${encodeURIComponent(id)}`); },
    }, field("MessageId", input, "The MessageId a publish answered (Pub, Publish, this console)."), h("div", { class: "field" }, h("button", { type: "submit" }, "Show"))), box]);
    if (messageId) {
      try {
        const { trace: t } = await api("GET", `/trace/${encodeURIComponent(messageId)}`);
        append(main, traceReport(t));
      } catch (error) {
        showError(box, error);
      }
    }
    const recent = await api("GET", "/trace?limit=20");
    append(main, h("section", { class: "card", "aria-labelledby": "rt-h" }, h("h2", { id: "rt-h" }, "Latest traced messages"),
      recent.enabled
        ? table([
          { label: "MessageId", cell: (m) => h("a", { href: `#/trace/${m.messageId}`, class: "mono id" }, m.messageId) },
          { label: "Topic", cell: (m) => h("span", { class: "mono" }, m.topic) },
          { label: "Published", cell: (m) => when(Date.parse(m.publishedAt)) },
          { label: "Outcome", cell: (m) => pill(m.outcome) },
          { label: "Matched", num: true, cell: (m) => num(m.counts.matched) },
        ], recent.messages, "No message traced yet.")
        : h("p", { class: "empty" }, recent.message)));
  }

  function traceReport(t) {
    const c = t.counts;
    const drops = Object.entries(c.dropped);
    return [
      h("section", { class: "card", "aria-labelledby": "tr-h" },
        h("h2", { id: "tr-h" }, "Message ", h("span", { class: "mono" }, t.messageId)),
        facts([
          ["Topic", h("span", { class: "mono" }, t.topic)],
          ["QoS", t.qos + (t.retain ? ", retained" : "")],
          ["Size", bytes(t.payloadBytes)],
          ["From", t.origin || "—"],
          ["Published", when(Date.parse(t.publishedAt))],
          ["Outcome", [pill(t.outcome), " ", OUTCOMES[t.outcome] || ""]],
          t.reason ? ["Why", t.reason] : null,
          t.nodes ? ["Nodes", traceNodes(t)] : null,
        ]),
        t.complete === false ? h("p", { class: "hint" }, "Partial: not every node of the cluster answered, or one has tracing off.") : null,
        h("div", { class: "counts", style: null },
          [["matched", c.matched], ["sent", c.sent], ["queued", c.queued], ["acknowledged", c.acknowledged], ["dropped", drops.reduce((a, [, v]) => a + v, 0)]]
            .map(([label, value]) => h("div", {}, h("b", {}, num(value)), label))),
        drops.length ? h("p", { class: "hint" }, "Dropped: ", drops.map(([k, v]) => `${k.replace(/_/g, " ")} ${num(v)}`).join(", ")) : null),
      h("section", { class: "card", "aria-labelledby": "ts-h" }, h("h2", { id: "ts-h" }, "Sessions"),
        table([
          { label: "Client", cell: (s) => h("span", { class: "mono" }, s.clientId) },
          t.nodes ? { label: "Node", cell: (s) => s.node || "—" } : null,
          { label: "QoS", num: true, cell: (s) => s.qos },
          { label: "Fate", cell: (s) => [pill(s.fate), s.reason ? ` ${s.reason.replace(/_/g, " ")}` : ""] },
          { label: "Session now", cell: (s) => s.session },
          { label: "Events", cell: (s) => h("span", { class: "events" }, s.events.map((e) => h("span", {}, `${e.event.replace(/_/g, " ")} +${e.afterMs} ms`))) },
        ], t.sessions, "No session got a copy."),
        t.sessionsOmitted ? h("p", { class: "hint" }, `${num(t.sessionsOmitted)} more sessions got a copy; the trace keeps the first ones only.`) : null),
    ];
  }

  // In a cluster: which nodes answered (trace/report.py, merge).
  function traceNodes(t) {
    return Object.entries(t.nodes).map(([name, n]) => {
      if (!n.answered) return `${name} did not answer`;
      if (n.tracing === false) return `${name} (tracing off)`;
      return name === t.publishedOn ? `${name} (published here)` : name;
    }).join(", ");
  }

  // ------------------------------------------------------------------ start

  window.addEventListener("hashchange", () => render());

  (async () => {
    try {
      const who = await fetch(`${API}/session`, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
      if (who.ok) signedIn(await who.json());
    } catch (error) { /* shown as the sign-in page */ }
    render();
  })();
})();
