// The Dashboard's throughput charts (uPlot, vendored under vendor/uplot/). The data come
// with the dashboard's refreshed panels as JSON (#dash-chart-data); the chart elements are
// kept across refreshes (data-live-keep) and only given the new data. Colours are the
// console's CSS variables, read again when the colour scheme changes. The charts are
// pictures of the totals and tables beside them, which is what screen readers get.
// uPlot comes from vendor/uplot/uPlot.iife.min.js, loaded by a classic script before this
// module (the upstream minified build, so nothing of uPlot's source is kept here).
const uPlot = window.uPlot;

const SERIES = [
  ["accepted", "Accepted", "--c-accepted"],
  ["delivered", "Delivered", "--c-delivered"],
  ["deferred", "Deferred", "--c-deferred"],
  ["bounced", "Bounced", "--c-bounced"],
];
const REJECTED = ["--c-rej-1", "--c-rej-2", "--c-rej-3", "--c-rej-4"];
const HEIGHT = 210;
const charts = new Map(); // span -> { plot, reasons }

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

function fill(hex, alpha = 0.14) {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex);
  return m ? `rgba(${parseInt(m[1], 16)}, ${parseInt(m[2], 16)}, ${parseInt(m[3], 16)}, ${alpha})` : undefined;
}

function readData() {
  const script = document.getElementById("dash-chart-data");
  try { return script ? JSON.parse(script.textContent) : null; } catch { return null; }
}

function columns(data) {
  const reasons = Object.keys(data.rejected).sort();
  return [data.t, ...SERIES.map(([key]) => data[key]), ...reasons.map((r) => data.rejected[r])];
}

function options(el, span, reasons) {
  const axis = {
    stroke: css("--muted"),
    grid: { stroke: css("--line"), width: 1 },
    ticks: { stroke: css("--line"), width: 1, size: 4 },
    font: "11px system-ui, sans-serif",
  };
  return {
    width: Math.max(240, el.clientWidth),
    height: HEIGHT,
    padding: [8, 8, 0, 0],
    cursor: { points: { size: 6 }, drag: { x: false, y: false } },
    legend: { live: true },
    scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(4, Math.ceil(max * 1.1))] } },
    axes: [
      { ...axis, space: span === "hour" ? 70 : 60 },
      { ...axis, size: 42, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000, 100000] },
    ],
    series: [
      { label: "Time" },
      ...SERIES.map(([key, label, color]) => ({
        label,
        stroke: css(color),
        width: key === "accepted" ? 2 : 1.75,
        fill: key === "accepted" ? fill(css(color)) : undefined,
        points: { show: false },
      })),
      ...reasons.map((reason, i) => ({
        label: `Rejected: ${reason}`,
        stroke: css(REJECTED[i % REJECTED.length]),
        width: 1.5,
        dash: [5, 4],
        points: { show: false },
      })),
    ],
  };
}

function draw(el, data) {
  const span = el.dataset.chart;
  const reasons = Object.keys(data.rejected).sort();
  const known = charts.get(span);
  if (known && known.el === el && known.reasons.join("\n") === reasons.join("\n")) {
    known.plot.setData(columns(data));
    return;
  }
  known?.plot.destroy();
  const plot = new uPlot(options(el, span, reasons), columns(data), el);
  charts.set(span, { plot, reasons, el });
}

function render({ rebuild = false } = {}) {
  const data = readData();
  if (!data) return;
  if (rebuild) {
    charts.forEach(({ plot }) => plot.destroy());
    charts.clear();
  }
  document.querySelectorAll("[data-chart]").forEach((el) => {
    if (data[el.dataset.chart]) draw(el, data[el.dataset.chart]);
  });
}

render();
document.addEventListener("live:refreshed", () => render());
window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => render({ rebuild: true }));
const resized = new ResizeObserver(() => {
  charts.forEach(({ plot, el }) => {
    const width = Math.max(240, el.clientWidth);
    if (Math.abs(plot.width - width) > 2) plot.setSize({ width, height: HEIGHT });
  });
});
document.querySelectorAll("[data-chart]").forEach((el) => resized.observe(el));
