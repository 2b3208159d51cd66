// Hand-written SVG line charts over a time window, with marked instants (evictions).

import { clock, s } from "./util.js";

const HEIGHT = 130;
const PAD = { left: 52, right: 10, top: 10, bottom: 20 };

/**
 * lineChart({series: [{name, colour, points: [[at, value]]}], from, to, format, yMax,
 *            markers: [{at, label}], width}) -> <svg>
 */
export function lineChart({ series, from, to, format, yMax, markers = [], width = 600, label, integer }) {
  const w = Math.max(260, Math.round(width));
  const plotW = w - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  let top = yMax || 0;
  for (const line of series) for (const [, v] of line.points) if (v > top) top = v;
  if (integer) top = Math.max(4, Math.ceil(top / 4) * 4);
  else if (!yMax || top > yMax) top = nice(top || 1);
  const x = (at) => PAD.left + ((at - from) / Math.max(1, to - from)) * plotW;
  const y = (v) => PAD.top + plotH - (v / top) * plotH;

  const svg = s("svg", {
    viewBox: `0 0 ${w} ${HEIGHT}`, width: w, height: HEIGHT, class: "chart",
    role: "img", "aria-label": label || "chart",
  });
  const grid = s("g", { class: "grid-lines" });
  for (let i = 0; i <= 4; i += 1) {
    const value = (top * i) / 4;
    const py = y(value);
    grid.append(s("line", { x1: PAD.left, x2: w - PAD.right, y1: py, y2: py }));
    grid.append(s("text", { x: PAD.left - 6, y: py + 3, class: "axis y", text: format(value) }));
  }
  const span = to - from;
  for (let i = 0; i <= 3; i += 1) {
    const at = from + (span * i) / 3;
    const text = i === 3 ? "now" : `-${Math.round((to - at) / 60)}m`;
    grid.append(s("text", { x: x(at), y: HEIGHT - 5, class: "axis x", text }));
  }
  svg.append(grid);

  for (const line of series) {
    if (!line.points.length) continue;
    const d = line.points
      .map(([at, v], i) => `${i ? "L" : "M"}${x(at).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    const path = s("path", { d, class: "series", stroke: line.colour });
    path.append(s("title", { text: line.name }));
    svg.append(path);
    if (line.points.length === 1) {
      const [at, v] = line.points[0];
      svg.append(s("circle", { cx: x(at), cy: y(v), r: 2.5, fill: line.colour }));
    }
  }

  for (const marker of markers) {
    if (marker.at < from || marker.at > to) continue;
    const mx = x(marker.at);
    const g = s("g", { class: "marker", tabindex: "0" });
    g.append(s("title", { text: `${clock(marker.at)} ${marker.label}` }));
    g.append(s("line", { x1: mx, x2: mx, y1: PAD.top, y2: PAD.top + plotH }));
    g.append(s("path", { d: `M${mx - 4},${PAD.top - 2} L${mx + 4},${PAD.top - 2} L${mx},${PAD.top + 5} Z` }));
    if (marker.short && w >= 420) {
      const left = mx > w - 140;
      g.append(s("text", { x: left ? mx - 6 : mx + 6, y: PAD.top + 8, class: `marker-label${left ? " end" : ""}`, text: marker.short }));
    }
    svg.append(g);
  }
  return svg;
}

function nice(value) {
  const exp = 10 ** Math.floor(Math.log10(value));
  const frac = value / exp;
  const step = frac <= 1 ? 1 : frac <= 2 ? 2 : frac <= 2.5 ? 2.5 : frac <= 5 ? 5 : 10;
  return step * exp;
}

/** A legend: coloured swatches and names. */
export function legend(items) {
  const el = document.createElement("div");
  el.className = "legend";
  for (const { name, colour } of items) {
    const item = document.createElement("span");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colour;
    item.append(swatch, name);
    el.append(item);
  }
  return el;
}
