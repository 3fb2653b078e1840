// The dashboard pages' helpers: building elements (text only, never HTML),
// number formats, bars, and reading the JSON endpoints.
"use strict";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, String(v));
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

const usd = (x) => (x === null || x === undefined ? "–" : "$" + x.toFixed(x >= 100 ? 2 : 4));
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
const count = (x) => (x === null || x === undefined ? "–" : x.toLocaleString("en-US"));
function secs(x) {
  if (x === null || x === undefined) return "–";
  if (x < 1) return (1000 * x).toFixed(x < 0.01 ? 2 : 1) + " ms";
  return x.toFixed(2) + " s";
}

function meter(share) {
  const m = el("span", { class: "meter" + (share >= 0.99 ? " full" : share >= 0.8 ? " hot" : "") });
  const fill = el("span");
  fill.style.width = (100 * Math.max(0, Math.min(1, share))) + "%";
  m.append(fill);
  return m;
}

// A bucket dimension: a bar, then "in use / limit".
function dimCell(field, dim) {
  if (!dim) return el("td", { "data-field": field }, "–");
  return el("td", { "data-field": field, "data-value": dim.in_use, "data-limit": dim.limit, "data-use": dim.use },
    meter(dim.use), count(dim.in_use) + " / " + count(dim.limit));
}

// Spend against a budget: a bar when there is a budget.
function spendCell(field, spent, budget, used) {
  const td = el("td", { "data-field": field, "data-value": spent, "data-budget": budget });
  if (budget !== null && budget !== undefined) td.append(meter(used || 0), usd(spent) + " / " + usd(budget));
  else td.append(usd(spent) + " (no budget)");
  return td;
}

function num(field, value, text) {
  return el("td", { class: "num", "data-field": field, "data-value": value }, text === undefined ? count(value) : text);
}

async function getJson(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (r.status === 401 || r.status === 403) {
    // Signed out (or the token changed): back to the sign-in form.
    window.location.reload();
    throw new Error("signed out");
  }
  const body = await r.json();
  if (!r.ok) throw new Error((body.error && body.error.message) || r.statusText);
  return body;
}
