/* A node's dashboard for its operator: polls /agoranet/dashboard/data.json. */
"use strict";
(() => {
  const {money, num, time, label, short, el, badge, table, chart, setText, poll} = AG;

  function render(d) {
    const t = d.earnings.totals;
    setText("models", d.node.models.join(", ") + " (" + d.node.engine + ")");
    setText("address", d.node.address ? short(d.node.address, 6) : "free node");
    for (const k of ["charged", "unclaimed", "claimed", "settled"])
      setText(k, t ? money(t[k]) : "-");

    const s = d.series;
    chart("earnings-chart", "line", s.buckets.map(b => label(b, s.width)), [
      {label: "charged", data: s.charged.map(x => x / 1e6)},
      {label: "claimed", data: s.claimed.map(x => x / 1e6)},
      {label: "settled", data: s.settled.map(x => x / 1e6)},
    ], {scales: {y: {beginAtZero: true}}});

    const load = d.load, now = load.now;
    chart("load-chart", "line", load.samples.map(p => time(p.ts)), [
      {label: "active", data: load.samples.map(p => p.active), stepped: true, pointRadius: 0},
      {label: "queued", data: load.samples.map(p => p.queued), stepped: true, pointRadius: 0},
      {label: "tokens/s (paid, 30 s)", data: load.samples.map(p => p.tokens_per_s), yAxisID: "rate", pointRadius: 0},
    ], {scales: {y: {beginAtZero: true, title: {display: true, text: "requests"}},
                 rate: {position: "right", beginAtZero: true, grid: {drawOnChartArea: false},
                        title: {display: true, text: "tokens/s"}}}});
    setText("load-now", `now: ${now.active} active, ${now.queued} queued, ` +
      `${num(now.tokens_per_s, 1)} tokens/s; largest batch ${num(now.max_batch)}; ` +
      `${num(now.completed)} completed, ${num(now.failed)} failed, ${num(now.cancelled)} cancelled`);

    table("channels-table", [
      ["buyer", c => el("span", {class: "mono", title: c.buyer}, c.buyer)],
      ["channel", c => el("span", {class: "mono", title: c.channel}, short(c.channel, 8))],
      ["requests", c => c.requests, {num: 1}],
      ["charged", c => money(c.charged), {num: 1}],
      ["claimable", c => money(c.unclaimed), {num: 1}],
      ["claimed", c => money(c.claimed), {num: 1}],
      ["settled", c => money(c.settled), {num: 1}],
      ["claim", c => c.claim_error ? [badge("failing", "bad"), " ", c.claim_error] :
                     c.unclaimed ? badge("due", "warn") : badge("up to date", "good")],
    ], d.earnings.channels, {empty: d.node.paid ? "no buyer yet" : "a free node has no channels"});

    table("claims-table", [
      ["time", c => time(c.ts)],
      ["channel", c => el("span", {class: "mono"}, short(c.channel, 8))],
      ["amount", c => money(c.amount), {num: 1}],
      ["transaction", c => el("span", {class: "mono", title: c.tx}, short(c.tx, 10))],
      ["settled", c => c.settled ? badge("settled", "good") : badge("claimed", "warn")],
    ], d.claims, {empty: "no claims yet"});

    table("requests-table", [
      ["time", r => time(r.ts)],
      ["request", r => el("span", {class: "mono"}, short(r.id, 8))],
      ["tokens in/out", r => r.tokens_in + " / " + r.tokens_out, {num: 1}],
      ["charged", r => money(r.amount), {num: 1}],
    ], d.requests, {empty: d.node.paid ? "no paid request yet" : "a free node keeps no receipts"});

    table("adapters-table", [
      ["adapter", a => el("span", {class: "mono", title: a.id}, short(a.id, 8))],
      ["base", a => a.base_model], ["rank", a => a.rank, {num: 1}],
      ["examples", a => num(a.examples), {num: 1}], ["created", a => a.created],
    ], d.adapters, {empty: "no adapters"});

    table("jobs-table", [
      ["job", j => el("span", {class: "mono"}, j.id)],
      ["status", j => badge(j.status, j.status === "succeeded" ? "good" :
                                      j.status === "failed" ? "bad" : "warn")],
      ["model", j => j.fine_tuned_model || j.model],
      ["tokens", j => num(j.trained_tokens), {num: 1}],
      ["charged", j => money(j.charged), {num: 1}],
      ["created", j => time(j.created_at)],
    ], d.jobs, {empty: "no fine-tuning jobs"});
  }

  document.addEventListener("DOMContentLoaded", () => poll("/agoranet/dashboard/data.json", render, 2000));
})();
