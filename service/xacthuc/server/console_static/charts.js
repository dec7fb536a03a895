// Hand-written SVG charts: grouped bars per day, and one series as a step line.

import { s, h } from "./dom.js";
import { day, number } from "./i18n.js";

const W = 720;
const H = 220;
const PAD = { left: 48, right: 12, top: 12, bottom: 36 };

function axis(max) {
  const nodes = [];
  const plotH = H - PAD.top - PAD.bottom;
  for (const f of [0, 0.5, 1]) {
    const v = Math.round(max * f);
    const y = PAD.top + plotH - (plotH * v) / max;
    nodes.push(s("line", { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: "grid" }));
    nodes.push(s("text", { x: PAD.left - 6, y: y + 4, class: "tick", "text-anchor": "end" }, number(v)));
  }
  return nodes;
}

function dayLabels(days, band) {
  const every = Math.max(1, Math.ceil(days.length / 12));
  return days.map((d, i) =>
    i % every === 0
      ? s("text", { x: PAD.left + band * (i + 0.5), y: H - PAD.bottom + 16, class: "tick", "text-anchor": "middle" }, day(d))
      : null,
  );
}

/** Bars per day, one per series: `days` YYYY-MM-DD, `series` [{label, values}]. */
export function barChart(title, days, series) {
  const max = Math.max(1, ...series.flatMap((x) => x.values));
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const band = plotW / Math.max(1, days.length);
  const bar = Math.max(1, (band * 0.8) / series.length);
  const bars = [];
  series.forEach((x, k) => {
    x.values.forEach((v, i) => {
      if (!v) return;
      const height = (plotH * v) / max;
      const rect = s("rect", {
        x: PAD.left + band * i + band * 0.1 + bar * k,
        y: PAD.top + plotH - height,
        width: bar,
        height,
        class: `bar s${k}`,
      });
      rect.append(s("title", {}, `${day(days[i])} ${x.label}: ${number(v)}`));
      bars.push(rect);
    });
  });
  return figure(title, series, [
    ...axis(max),
    ...bars,
    ...dayLabels(days, band),
  ]);
}

/** One value per day as a step line (the log's tree size). */
export function lineChart(title, days, label, values) {
  const max = Math.max(1, ...values);
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const band = plotW / Math.max(1, days.length);
  const points = values.map((v, i) => `${PAD.left + band * (i + 0.5)},${PAD.top + plotH - (plotH * v) / max}`);
  const dots = values.map((v, i) =>
    s(
      "circle",
      { cx: PAD.left + band * (i + 0.5), cy: PAD.top + plotH - (plotH * v) / max, r: 3, class: "dot s0" },
      s("title", {}, `${day(days[i])}: ${number(v)}`),
    ),
  );
  return figure(title, [{ label }], [
    ...axis(max),
    s("polyline", { points: points.join(" "), class: "line s0" }),
    ...dots,
    ...dayLabels(days, band),
  ]);
}

function figure(title, series, nodes) {
  return h(
    "figure",
    { class: "chart" },
    h("figcaption", {}, title),
    s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title }, ...nodes),
    h(
      "ul",
      { class: "legend" },
      series.map((x, k) => h("li", {}, h("span", { class: `swatch s${k}` }), x.label)),
    ),
  );
}
