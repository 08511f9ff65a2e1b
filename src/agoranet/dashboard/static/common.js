/* Shared helpers of the agoranet dashboards: polling, formatting, tables, charts. */
"use strict";
const AG = (() => {
  const DECIMALS = 6;  // the stablecoin's decimals (USDC); amounts arrive in base units
  const COLORS = ["#2f6fed", "#1a9a5b", "#d23c3c", "#c98a00", "#8a4fd8", "#0f9bb0",
                  "#e0662b", "#5b6478"];

  function money(base) {
    if (base === null || base === undefined) return "-";
    const n = Number(base) / 10 ** DECIMALS;
    return n.toFixed(n !== 0 && Math.abs(n) < 0.01 ? 6 : 4);
  }
  function num(v, digits = 0) {
    return v === null || v === undefined ? "-" : Number(v).toFixed(digits);
  }
  function pct(v) { return v === null || v === undefined ? "-" : (100 * v).toFixed(1) + " %"; }
  function time(ts) {
    return ts ? new Date(ts * 1000).toLocaleTimeString([], {hour12: false}) : "-";
  }
  function label(ts, width) {
    const d = new Date(ts * 1000);
    if (width >= 86400) return d.toISOString().slice(0, 10);
    return d.toLocaleTimeString([], {hour12: false, hour: "2-digit", minute: "2-digit",
                                     second: width < 60 ? "2-digit" : undefined});
  }
  function short(text, keep = 10) {
    if (!text) return "-";
    return text.length > 2 * keep + 1 ? text.slice(0, keep) + "…" + text.slice(-6) : text;
  }

  /* Elements from data, never from HTML strings: nothing a node sends becomes markup. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function badge(text, kind) { return el("span", {class: "badge " + (kind || "")}, text); }

  /* columns: [header, row => cell, {num: bool}]; rowClass: row => class */
  function table(id, columns, rows, {empty = "nothing yet", rowClass = null} = {}) {
    const host = document.getElementById(id);
    if (!rows || rows.length === 0) {
      host.replaceChildren(el("div", {class: "empty"}, empty));
      return;
    }
    const head = el("tr", {}, columns.map(([h, , o]) => el("th", {class: o && o.num ? "num" : null}, h)));
    const body = rows.map(r => el("tr", {class: rowClass ? rowClass(r) : null},
      columns.map(([, f, o]) => el("td", {class: o && o.num ? "num" : null}, f(r)))));
    host.replaceChildren(el("table", {}, el("thead", {}, head), el("tbody", {}, body)));
  }

  /* One Chart.js chart per canvas, updated in place (no flicker, no re-creation). */
  const charts = {};
  function chart(id, type, labels, datasets, options = {}) {
    const data = {labels, datasets: datasets.map((d, i) => ({
      borderColor: COLORS[i % COLORS.length], backgroundColor: COLORS[i % COLORS.length] +
      (type === "line" ? "33" : "cc"), borderWidth: 2, pointRadius: 2, tension: 0.25,
      spanGaps: true, ...d}))};
    let c = charts[id];
    if (!c) {
      c = charts[id] = new Chart(document.getElementById(id), {type, data, options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        interaction: {mode: "index", intersect: false},
        plugins: {legend: {position: "bottom", labels: {boxWidth: 12}}}, ...options}});
    } else {
      c.data = data;
      c.update("none");
    }
    return c;
  }

  function setText(id, text) { document.getElementById(id).textContent = text; }

  /* Poll url every ms and hand the JSON to render; a 401 goes back to the login form. */
  function poll(url, render, ms = 2000) {
    const live = document.getElementById("live");
    async function tick() {
      try {
        const r = await fetch(url, {credentials: "same-origin", cache: "no-store"});
        if (r.status === 401) { window.location.reload(); return; }
        if (!r.ok) throw new Error(url + ": " + r.status);
        render(await r.json());
        if (live) { live.textContent = "live · updated " + time(Date.now() / 1000);
                    live.classList.remove("stale"); }
      } catch (e) {
        if (live) { live.textContent = "not updating: " + e.message; live.classList.add("stale"); }
      }
      setTimeout(tick, ms);
    }
    tick();
  }
  return {money, num, pct, time, label, short, el, badge, table, chart, setText, poll, charts};
})();
