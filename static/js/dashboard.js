// Dashboard: live counts per class, compliance, cameras and a chart, all fed by 'counts'.
(function () {
  "use strict";

  const LABELS = ["with_mask", "mask_incorrect", "without_mask"];
  const COLOURS = { with_mask: "#4caf50", mask_incorrect: "#ffa000", without_mask: "#e53935" };
  const TITLES = { with_mask: "mask worn", mask_incorrect: "worn incorrectly", without_mask: "no mask" };
  const HISTORY_MS = 10 * 60 * 1000;
  const $ = (id) => document.getElementById(id);

  const state = (window.maskwatchDashboard = { lastCounts: null, updates: 0 });

  const chart = new Chart($("chart"), {
    type: "line",
    data: {
      datasets: LABELS.map((l) => ({
        label: TITLES[l], data: [], borderColor: COLOURS[l], backgroundColor: COLOURS[l],
        pointRadius: 0, borderWidth: 2, stepped: true,
      })),
    },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
      scales: {
        x: { type: "linear", ticks: { maxTicksLimit: 8, callback: (v) => new Date(v).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }) } },
        y: { beginAtZero: true, ticks: { precision: 0 } },
      },
      plugins: { legend: { position: "bottom" } },
    },
  });

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function ago(iso) {
    if (!iso) return "never";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    return s < 2 ? "now" : s < 60 ? `${Math.round(s)} s ago` : `${Math.round(s / 60)} min ago`;
  }

  function render(c) {
    state.lastCounts = c;
    state.updates += 1;
    for (const l of LABELS) {
      $("now-" + l).textContent = String(c.in_view[l]);
      $("people-" + l).textContent = String(c.people[l]);
    }
    $("compliance").textContent = c.compliance === null ? "–" : `${Math.round(c.compliance * 100)}%`;
    const body = $("cameras");
    body.innerHTML = "";
    if (!c.cameras.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = cell("No camera connected. Open the camera page on a device at the entrance.");
      td.colSpan = 6;
      tr.appendChild(td);
      body.appendChild(tr);
    }
    // With several servers (--redis) each camera says which server it streams to.
    const servers = new Set(c.cameras.map((cam) => cam.server)).size;
    for (const cam of c.cameras) {
      const tr = document.createElement("tr");
      if (cam.in_view.without_mask || cam.in_view.mask_incorrect || Date.now() - (alertedAt[cam.id] || 0) < 10000) {
        tr.className = "alert";
      }
      // A camera page behind another tab may slow down (browsers pause hidden pages): say so.
      let name = servers > 1 ? `${cam.name} @ ${cam.server}` : cam.name;
      if (cam.page_hidden) name += " (page in background)";
      [name, cam.fps.toFixed(1), ago(cam.last_seen), cam.in_view.with_mask, cam.in_view.mask_incorrect,
        cam.in_view.without_mask].forEach((v) => tr.appendChild(cell(String(v))));
      body.appendChild(tr);
    }
    const t = Date.parse(c.ts);
    addPoint(Date.now(), c.in_view);  // this browser's clock for every point: one time order
    $("updated").textContent = "Updated " + new Date(t).toLocaleTimeString();
  }

  // The chart always shows the last ten minutes ending now, in time order, even before any
  // camera sends (the server only sends 'counts' when something changes, so the last values
  // are carried forward every few seconds).
  function addPoint(t, inView) {
    chart.data.datasets.forEach((ds, i) => {
      const last = ds.data[ds.data.length - 1];
      if (!last || t >= last.x) ds.data.push({ x: t, y: inView[LABELS[i]] });
      while (ds.data.length && t - ds.data[0].x > HISTORY_MS) ds.data.shift();
    });
    chart.options.scales.x.min = t - HISTORY_MS;
    chart.options.scales.x.max = t;
    chart.update("none");
    state.chartRange = [chart.options.scales.x.min, chart.options.scales.x.max];
  }
  addPoint(Date.now(), { with_mask: 0, mask_incorrect: 0, without_mask: 0 });
  setInterval(() => addPoint(Date.now(), state.lastCounts ? state.lastCounts.in_view
    : { with_mask: 0, mask_incorrect: 0, without_mask: 0 }), 5000);

  // Today by hour, from the persisted history.
  const hours = new Chart($("hours"), {
    type: "bar",
    data: { labels: [], datasets: LABELS.map((l) => ({ label: TITLES[l], data: [], backgroundColor: COLOURS[l], stack: "people", yAxisID: "y" }))
      .concat([{ type: "line", label: "compliance %", data: [], borderColor: "#4ea1ff", backgroundColor: "#4ea1ff", yAxisID: "pct" }]) },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } },
        pct: { position: "right", min: 0, max: 100, grid: { drawOnChartArea: false } } },
      plugins: { legend: { position: "bottom" } },
    },
  });
  async function loadHours() {
    const since = new Date(); since.setHours(0, 0, 0, 0);
    const res = await fetch("/api/history?bucket=hour&since=" + encodeURIComponent(since.toISOString()));
    if (!res.ok) return;
    const rows = (await res.json()).rows.filter((r) => r.kind === "people");
    const byHour = new Map();
    for (const r of rows) {
      const key = new Date(r.start).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      const h = byHour.get(key) || { with_mask: 0, mask_incorrect: 0, without_mask: 0 };
      h[r.label] += r.n;
      byHour.set(key, h);
    }
    hours.data.labels = [...byHour.keys()];
    LABELS.forEach((l, i) => { hours.data.datasets[i].data = [...byHour.values()].map((h) => h[l]); });
    hours.data.datasets[3].data = [...byHour.values()].map((h) => {
      const n = h.with_mask + h.mask_incorrect + h.without_mask;
      return n ? Math.round((100 * h.with_mask) / n) : null;
    });
    hours.update("none");
    state.hoursLoaded = true;
  }
  loadHours().catch(() => {});
  setInterval(() => loadHours().catch(() => {}), 60000);

  const alertedAt = {};
  const seenAlerts = new Set();
  // The server replays its recent alerts to a dashboard that (re)connects: list each once, and
  // only a fresh one (by the server's own clock) marks its camera's row.
  function addAlert(a) {
    const key = `${a.camera_id}/${a.track}/${a.ts}`;
    if (seenAlerts.has(key)) return;
    seenAlerts.add(key);
    const serverNow = state.lastCounts ? Date.parse(state.lastCounts.ts) : Date.parse(a.ts);
    if (serverNow - Date.parse(a.ts) < 10000) alertedAt[a.camera_id] = Date.now();
    const list = $("alerts");
    const empty = list.querySelector(".empty");
    if (empty) empty.remove();
    const li = document.createElement("li");
    li.className = a.label;
    li.textContent = `${new Date(a.ts).toLocaleTimeString()} - ${a.camera}: ${TITLES[a.label]}`;
    list.prepend(li);
    while (list.children.length > 50) list.lastChild.remove();
    state.alerts = (state.alerts || 0) + 1;
    if (state.lastCounts) render(state.lastCounts);
  }

  const socket = io("/dashboard");
  socket.on("alert", addAlert);
  const pill = $("connection");
  socket.on("connect", () => { pill.textContent = "live"; pill.className = "pill pill-on"; });
  socket.on("disconnect", () => { pill.textContent = "reconnecting…"; pill.className = "pill pill-off"; });
  socket.on("counts", render);
})();
