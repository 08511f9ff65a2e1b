/* The gateway's dashboard: polls /agoranet/dashboard/data.json and channels.json. */
"use strict";
(() => {
  const {money, num, pct, time, label, short, el, badge, table, chart, setText, poll} = AG;
  let last = null;

  function renderTotals() {
    if (!last) return;
    const by = document.getElementById("spend-by").value;
    const rows = last.totals[by] || [];
    chart("totals-chart", "bar", rows.map(r => r.name), [
      {label: "backed by receipts", data: rows.map(r => r.receipted / 1e6)},
      {label: "without a receipt", data: rows.map(r => (r.amount - r.receipted) / 1e6)},
    ], {scales: {x: {stacked: true}, y: {stacked: true, beginAtZero: true}}});
    table("totals-table", [
      [by, r => r.name], ["requests", r => r.requests, {num: 1}], ["tokens", r => r.tokens, {num: 1}],
      ["spent", r => money(r.amount), {num: 1}], ["of it audits", r => money(r.audits), {num: 1}],
      ["receipted", r => money(r.receipted), {num: 1}],
    ], rows);
  }

  function nodeState(n) {
    if (n.banned) return [badge("banned", "bad"), " ", n.ban_reason || ""];
    if (n.offer_error) return badge("no offer", "warn");
    return badge("ok", "good");
  }

  function render(d) {
    last = d;
    setText("spent", money(d.budget.spent));
    setText("budget", d.budget.limit === null ? "none" : money(d.budget.limit));
    setText("receipted", pct(d.receipted_share));
    setText("payer", short(d.payer, 6));
    setText("receipt-note", money(d.receipted) + " of " + money(d.spend_total) + " receipted");

    const s = d.spend;
    chart("spend-chart", "bar", s.buckets.map(b => label(b, s.width)),
          Object.entries(s.series).map(([node, v]) => ({label: node, data: v.map(x => x / 1e6)})),
          {scales: {x: {stacked: true}, y: {stacked: true, beginAtZero: true}}});
    renderTotals();

    table("nodes-table", [
      ["node", n => el("span", {class: "mono", title: n.identity}, n.name)],
      ["state", nodeState],
      ["models", n => n.models.join(", ") || "-"],
      ["price in/out", n => Object.values(n.price).map(p => money(p[0]) + " / " + money(p[1])).join(", ") || "-"],
      ["ttft ms", n => num(n.ttft_ms), {num: 1}],
      ["tokens/s", n => num(n.tokens_per_s, 1), {num: 1}],
      ["success", n => pct(n.success_rate) + " (" + n.successes + "/" + (n.successes + n.failures) + ")", {num: 1}],
      ["score", n => num(n.score, 3), {num: 1}],
      ["audits ok/failed", n => [badge(n.audits_passed ?? 0, "good"), " ",
                                 badge(n.audits_failed ?? 0, n.audits_failed ? "bad" : "")]],
    ], d.nodes, {empty: "no nodes discovered yet", rowClass: n => n.banned ? "banned" : null});

    table("requests-table", [
      ["time", r => time(r.ts)],
      ["model", r => r.model || "-"],
      ["key", r => r.key],
      ["path", r => el("span", {class: "path"}, r.path.flatMap((h, i) => [
        i ? " → " : null, el("span", {class: "hop " + h.outcome, title: h.outcome}, h.node)]))],
      ["failovers", r => r.failovers ? badge(r.failovers + " failover" + (r.failovers > 1 ? "s" : ""), "warn") : "0", {num: 1}],
      ["outcome", r => badge(r.outcome, r.outcome === "ok" ? "good" : "bad")],
      ["tokens", r => r.tokens, {num: 1}],
      ["ttft ms", r => num(r.ttft_ms), {num: 1}],
      ["ms", r => num(r.duration_ms), {num: 1}],
      ["paid", r => money(r.amount), {num: 1}],
      ["receipt", r => r.path.every(h => h.receipted || !h.amount) ? badge("signed", "good") : badge("partly", "warn")],
    ], d.requests, {empty: "no requests yet", rowClass: r => r.failovers ? "failover" : null});

    const l = d.latency;
    chart("latency-chart", "line", l.buckets.map(b => label(b, l.width)), [
      {label: "p50", data: l.p50}, {label: "p95", data: l.p95}, {label: "p99", data: l.p99},
      {label: "ttft p50", data: l.ttft_p50, borderDash: [4, 3]},
      {label: "ttft p95", data: l.ttft_p95, borderDash: [4, 3]},
    ], {scales: {y: {beginAtZero: true}}});
    const o = l.overall;
    setText("latency-overall", o.p50 === undefined ? "" :
      `overall: p50 ${num(o.p50)} ms · p95 ${num(o.p95)} ms · p99 ${num(o.p99)} ms · ` +
      `time to first token p50 ${num(o.ttft_p50)} ms, p95 ${num(o.ttft_p95)} ms`);

    const a = d.audits;
    setText("audit-status", a.status ? `${a.status.model}: spent ${money(a.status.spent)} of ` +
      `${money(a.status.allowance)} allowed, ${a.status.skipped} skipped` : "no reference model: audits off");
    table("audits-table", [
      ["node", v => v.node],
      ["verdict", v => [badge(v.verdict.startsWith("passed") ? "passed" : "failed",
                              v.verdict.startsWith("passed") ? "good" : "bad"), " ", v.verdict]],
    ], a.verdicts.slice().reverse(), {empty: "no audits yet"});
  }

  function renderChannels(rows) {
    table("channels-table", [
      ["node", c => c.node],
      ["channel", c => el("span", {class: "mono", title: c.channel}, short(c.channel, 8))],
      ["deposited", c => money(c.deposited), {num: 1}],
      ["charged (receipts)", c => money(c.charged), {num: 1}],
      ["claimable by node", c => money(c.claimable), {num: 1}],
      ["claimed", c => money(c.claimed), {num: 1}],
      ["refundable", c => money(c.refundable), {num: 1}],
      ["on-chain balance", c => c.chain_error ? badge("unreadable", "warn") : money(c.balance), {num: 1}],
      ["withdrawal", c => c.withdrawal ? money(c.withdrawal.amount) + " after " + time(c.withdrawal.after) : "none"],
      ["dispute", c => c.dispute ? badge(c.dispute, "bad") : "-"],
    ], rows, {empty: "no channels opened yet"});
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("spend-by").addEventListener("change", renderTotals);
    poll("/agoranet/dashboard/data.json", render, 2000);
    poll("/agoranet/dashboard/channels.json", renderChannels, 5000);
  });
})();
