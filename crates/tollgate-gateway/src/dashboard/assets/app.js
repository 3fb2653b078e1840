// The dashboard's script: reads /dashboard/api/overview and one page of
// /dashboard/api/clients, draws them, and does it again every few seconds.
// Figures are written with textContent only; each cell also keeps its raw
// value in data-value, so what is shown can be checked against the API.
// Its helpers (el, meter, the number formats, getJson) are in util.js.
"use strict";

const state = { q: "", sort: "use", offset: 0, limit: 25, matched: 0, timer: null, inFlight: false };

function drawClients(page) {
  state.matched = page.matched;
  const body = document.querySelector("#clients tbody");
  const rows = page.clients.map((c) => {
    const b = c.bucket || {};
    const s = c.spend || {};
    return el("tr", { "data-client": c.id },
      el("td", { "data-field": "id" }, el("a", { href: "/dashboard/clients/" + encodeURIComponent(c.id) }, c.id)),
      el("td", { "data-field": "tier" }, c.tier),
      dimCell("rate-requests", b.requests),
      dimCell("rate-tokens", b.tokens),
      c.spend ? spendCell("spend-today", s.today_usd, s.daily_budget_usd, s.daily_used) : el("td", { "data-field": "spend-today" }, "–"),
      c.spend ? spendCell("spend-month", s.month_usd, s.monthly_budget_usd, s.monthly_used) : el("td", { "data-field": "spend-month" }, "–"),
      num("requests", c.requests),
      num("refused", c.refused),
      num("refusal-rate", c.refusal_rate, pct(c.refusal_rate)),
      num("recent-refusals", c.recent.refused, count(c.recent.refused) + " of " + count(c.recent.requests)));
  });
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colSpan: 10, class: "muted" }, "No client matches.")));
  body.replaceChildren(...rows);
  const last = Math.min(page.offset + page.clients.length, page.matched);
  document.getElementById("client-count").textContent =
    count(page.matched) + " of " + count(page.total) + " clients" + (page.store_error ? " · store: " + page.store_error : "");
  document.getElementById("page").textContent = page.matched ? (page.offset + 1) + "–" + last : "";
  document.getElementById("prev").disabled = page.offset === 0;
  document.getElementById("next").disabled = last >= page.matched;
}

function drawTiers(tiers) {
  const rows = tiers.map((t) => el("tr", { "data-tier": t.name },
    el("td", { "data-field": "name" }, t.name),
    num("class", t.class),
    num("clients", t.clients),
    num("requests", t.counts.requests),
    num("refused", t.counts.refused),
    num("refusal-rate", t.counts.refusal_rate, pct(t.counts.refusal_rate)),
    num("failed", t.counts.failed),
    num("wait-p50", t.wait.p50_s, secs(t.wait.p50_s)),
    num("wait-p99", t.wait.p99_s, secs(t.wait.p99_s))));
  document.querySelector("#tiers tbody").replaceChildren(...rows);
}

function drawModels(models) {
  const blocks = models.map((m) => {
    const b = m.bucket || {};
    const dims = ["requests", "tokens", "input_tokens", "output_tokens"].filter((d) => b[d]);
    const buckets = el("p", { class: "buckets" },
      ...dims.map((d) => el("span", { "data-dim": d, "data-value": b[d].in_use, "data-limit": b[d].limit },
        d.replace("_", " ") + " ", meter(b[d].use), count(b[d].in_use) + " / " + count(b[d].limit) + "   ")),
      el("span", { class: "muted", "data-field": "tokens", "data-value": m.tokens }, count(m.tokens) + " tokens settled"),
      m.bucket ? "" : el("span", { class: "state-down" }, " bucket unavailable (store)"));
    const rows = m.classes.map((c) => el("tr", { "data-class": c.class },
      num("class", c.class),
      el("td", { "data-field": "tiers" }, c.tiers.join(", ") || "–"),
      num("headroom", c.headroom, pct(c.headroom)),
      num("requests", c.counts.requests),
      num("refused", c.counts.refused),
      num("failed", c.counts.failed),
      num("queued", c.queued)));
    const table = el("table", {},
      el("thead", {}, el("tr", {}, ...["Class", "Tiers", "Headroom", "Requests", "Refused", "Failed", "Queued now"]
        .map((h, i) => el("th", { class: i === 1 ? "" : "num" }, h)))),
      el("tbody", {}, ...rows));
    return el("div", { class: "model", "data-model": m.name },
      el("h3", {}, m.name + " ", el("span", { class: "muted" }, m.provider + " · " + m.kind)), buckets, table);
  });
  document.getElementById("models").replaceChildren(...blocks);
}

function drawHealth(o) {
  const s = o.store;
  const st = document.getElementById("store-state");
  st.textContent = s.kind + (s.up ? " · up" : " · DOWN");
  st.className = "big " + (s.up ? "state-ok" : "state-down");
  st.dataset.up = s.up ? "1" : "0";
  const errs = Object.entries(s.errors).map(([k, v]) => k + " " + v).join(", ");
  document.getElementById("store-detail").textContent =
    (s.error ? s.error + " · " : "") + "errors: " + errs + "; limiter store errors " + s.limiter_errors +
    "; outage policy " + s.outage_policy + " (" + s.outage_decisions + " decisions)";
  const l = o.ledger;
  const ls = document.getElementById("ledger-state");
  ls.dataset.enabled = l.enabled ? "1" : "0";
  ls.textContent = l.enabled ? l.kind + (l.healthy === false ? " · DOWN" : " · up") : "off";
  ls.className = "big " + (!l.enabled ? "state-off" : l.healthy === false ? "state-down" : "state-ok");
  document.getElementById("ledger-detail").textContent = l.detail || "";
  const r = o.registry;
  const rs = document.getElementById("registry-state");
  rs.textContent = "change " + count(r.version);
  rs.dataset.value = r.version;
  document.getElementById("registry-detail").textContent =
    count(r.clients) + " clients, " + count(r.keys) + " keys; built whole " + count(r.index_builds) +
    "× (start, gaps), " + count(r.changes_applied) + " changes applied one entry at a time";
  const t = o.totals;
  const tr = document.getElementById("totals-requests");
  tr.textContent = count(t.counts.requests);
  tr.dataset.value = t.counts.requests;
  document.getElementById("totals-detail").textContent =
    count(t.counts.refused) + " refused (" + pct(t.counts.refusal_rate) + "), " + count(t.counts.failed) + " failed · " +
    count(t.clients) + " clients · " + count(t.in_flight) + " in flight · " + count(t.connections_open) + " connections";
}

async function refresh() {
  if (state.inFlight) return;
  state.inFlight = true;
  const params = new URLSearchParams({ sort: state.sort, limit: state.limit, offset: state.offset });
  if (state.q) params.set("q", state.q);
  const err = document.getElementById("error");
  try {
    const [overview, page] = await Promise.all([
      getJson("/dashboard/api/overview"),
      getJson("/dashboard/api/clients?" + params.toString()),
    ]);
    drawHealth(overview);
    drawTiers(overview.tiers);
    drawModels(overview.models);
    drawClients(page);
    document.getElementById("updated").textContent = "updated " + new Date(overview.generated_at_ms).toLocaleTimeString();
    err.hidden = true;
    document.body.dataset.ready = "1";
    document.body.dataset.query = state.q;
  } catch (e) {
    err.textContent = "Could not refresh: " + e.message;
    err.hidden = false;
  } finally {
    state.inFlight = false;
  }
}

function schedule() {
  clearInterval(state.timer);
  const every = Number(document.getElementById("refresh").value);
  if (every > 0) state.timer = setInterval(refresh, every);
}

document.addEventListener("DOMContentLoaded", () => {
  let typing = null;
  document.getElementById("search").addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.q = e.target.value.trim(); state.offset = 0; refresh(); }, 200);
  });
  document.getElementById("sort").addEventListener("change", (e) => { state.sort = e.target.value; state.offset = 0; refresh(); });
  document.getElementById("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); refresh(); });
  document.getElementById("next").addEventListener("click", () => {
    if (state.offset + state.limit < state.matched) { state.offset += state.limit; refresh(); }
  });
  document.getElementById("refresh").addEventListener("change", schedule);
  refresh();
  schedule();
});
