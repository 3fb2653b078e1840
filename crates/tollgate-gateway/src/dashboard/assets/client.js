// A client's page: reads /dashboard/api/clients/ID and draws the client and
// its keys; issues a key (shown once, with a copy button) and revokes one
// through the dashboard's change endpoints, which are the admin API's own
// handlers. Helpers (el, meter, the number formats, getJson) are in util.js.
"use strict";

const clientId = decodeURIComponent(location.pathname.replace(/^\/dashboard\/clients\//, ""));
const apiPath = "/dashboard/api/clients/" + encodeURIComponent(clientId);

const when = (ms) => (ms === null || ms === undefined ? "never" : new Date(ms).toISOString().replace("T", " ").slice(0, 16) + " UTC");

// A change: the header that tells the gateway the page sent it, and the
// admin API's own answer (its message shown when it refuses).
async function change(method, path, body) {
  const r = await fetch(path, {
    method, credentials: "same-origin", cache: "no-store",
    headers: { "content-type": "application/json", "x-tollgate-dashboard": "1" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((answer.error && answer.error.message) || r.statusText);
  return answer;
}

function showError(e) {
  const err = document.getElementById("error");
  err.textContent = e ? e.message : "";
  err.hidden = !e;
}

function keyState(k, now) {
  if (k.revoked_at_ms !== null && k.revoked_at_ms !== undefined) return "revoked " + when(k.revoked_at_ms);
  if (k.expires_at_ms !== null && k.expires_at_ms !== undefined && k.expires_at_ms <= now) return "expired";
  return "active";
}

function revokeButton(k) {
  const b = el("button", { type: "button", class: "revoke", "data-key": k.id }, "Revoke");
  // A second click confirms: no dialog to get in the way.
  b.addEventListener("click", async () => {
    if (b.dataset.armed !== "1") {
      b.dataset.armed = "1";
      b.textContent = "Really revoke?";
      return;
    }
    b.disabled = true;
    try {
      await change("DELETE", "/dashboard/api/keys/" + encodeURIComponent(k.id));
      showError(null);
    } catch (e) {
      showError(new Error("Could not revoke " + k.shown + ": " + e.message));
    }
    await refresh();
  });
  return b;
}

// Whether this sign-in may change anything (a read-only token may not).
let canChange = false;

function drawKeys(keys, now) {
  const rows = keys.map((k) => {
    const state = keyState(k, now);
    return el("tr", { "data-key": k.id, "data-state": state.split(" ")[0] },
      el("td", { "data-field": "shown" }, el("code", {}, k.shown)),
      el("td", { "data-field": "name" }, k.name || "–"),
      el("td", { "data-field": "models" }, k.models ? k.models.join(", ") : "all"),
      el("td", { "data-field": "issued" }, when(k.created_at_ms)),
      el("td", { "data-field": "expires", "data-value": k.expires_at_ms }, when(k.expires_at_ms)),
      el("td", { "data-field": "state" }, state),
      el("td", {}, state === "active" && canChange ? revokeButton(k) : ""));
  });
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colSpan: 7, class: "muted" }, "No key issued through the gateway yet.")));
  document.querySelector("#keys tbody").replaceChildren(...rows);
}

function draw(c) {
  document.getElementById("client-id").textContent = c.id;
  document.getElementById("client-origin").textContent = c.in_config_file ? "declared in the config file" : "made through the admin API";
  const tier = document.getElementById("client-tier");
  tier.textContent = c.tier;
  tier.dataset.value = c.tier;
  document.getElementById("client-limits").textContent =
    "rpm " + count(c.rpm) + " · tpm " + count(c.tpm) + " · priority class " + c.class;
  const s = c.spend || {};
  const put = (field, td) => document.querySelector("#spend [data-field='" + field + "']").replaceWith(td);
  put("spend-today", c.spend ? spendCell("spend-today", s.today_usd, s.daily_budget_usd, s.daily_used) : el("td", { "data-field": "spend-today" }, "–"));
  put("spend-month", c.spend ? spendCell("spend-month", s.month_usd, s.monthly_budget_usd, s.monthly_used) : el("td", { "data-field": "spend-month" }, "–"));
  const b = c.bucket || {};
  put("rate-requests", dimCell("rate-requests", b.requests));
  put("rate-tokens", dimCell("rate-tokens", b.tokens));
  document.getElementById("file-keys").hidden = !c.in_config_file;
  canChange = c.can_change === true;
  document.getElementById("issue-section").hidden = !canChange;
  document.getElementById("read-only").hidden = canChange;
  drawKeys(c.keys, c.now_ms);
  document.getElementById("updated").textContent = "updated " + new Date(c.now_ms).toLocaleTimeString() + (c.store_error ? " · store: " + c.store_error : "");
}

async function refresh() {
  try {
    draw(await getJson(apiPath));
    document.body.dataset.ready = "1";
  } catch (e) {
    showError(new Error("Could not read the client: " + e.message));
  }
  document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
}

async function issue(ev) {
  ev.preventDefault();
  const button = document.getElementById("issue-key");
  button.disabled = true;
  const body = {};
  const name = document.getElementById("key-name").value.trim();
  if (name) body.name = name;
  const expiry = document.getElementById("key-expiry").value;
  if (expiry) body.expires_in_secs = Number(expiry);
  try {
    const issued = await change("POST", apiPath + "/keys", body);
    document.getElementById("new-key").textContent = issued.key;
    document.getElementById("new-key-box").dataset.key = issued.id;
    document.getElementById("new-key-box").hidden = false;
    document.getElementById("copied").hidden = true;
    showError(null);
  } catch (e) {
    showError(new Error("Could not issue a key: " + e.message));
  } finally {
    button.disabled = false;
  }
  await refresh();
}

async function copyKey() {
  const text = document.getElementById("new-key").textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {
    // No clipboard permission: select the key so Ctrl-C copies it.
    const range = document.createRange();
    range.selectNodeContents(document.getElementById("new-key"));
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    document.execCommand("copy");
  }
  document.getElementById("copied").hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("issue").addEventListener("submit", issue);
  document.getElementById("copy-key").addEventListener("click", copyKey);
  refresh();
  setInterval(refresh, 5000);
});
