// Drawing on <canvas>: the event frame, line charts, the prediction history. No state about the
// server here; app.js feeds these.

export const COLOURS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
  "#ff9da7", "#9c755f", "#bab0ac"];
const ON = [255, 176, 0]; // brighter
const OFF = [64, 150, 255]; // darker
const INK = "#d8dde6";
const GRID = "#333a45";

// One timestep's counts (uint8, [2, h, w], polarity 0 = OFF) drawn over the sensor's full size;
// each cell covers block x block pixels (1 but on sensors over 256 pixels a side).
export function drawFrame(canvas, counts, shape, sensor, block) {
  const [, h, w] = shape;
  if (canvas.width !== sensor.width || canvas.height !== sensor.height) {
    canvas.width = sensor.width;
    canvas.height = sensor.height;
  }
  let max = 1;
  for (let i = 0; i < counts.length; i++) if (counts[i] > max) max = counts[i];
  const cells = new ImageData(w, h);
  const px = cells.data;
  for (let i = 0; i < h * w; i++) {
    const off = Math.sqrt(counts[i] / max); // sqrt: a few events still show next to a busy pixel
    const on = Math.sqrt(counts[h * w + i] / max);
    px[4 * i] = Math.min(255, 17 + ON[0] * on + OFF[0] * off);
    px[4 * i + 1] = Math.min(255, 17 + ON[1] * on + OFF[1] * off);
    px[4 * i + 2] = Math.min(255, 20 + ON[2] * on + OFF[2] * off);
    px[4 * i + 3] = 255;
  }
  const small = new OffscreenCanvas(w, h);
  small.getContext("2d").putImageData(cells, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, w * block, h * block);
}

// A few named series over the last `length` points, y from 0 to the window's maximum.
export class LineChart {
  constructor(canvas, { length = 200, format = (v) => v.toPrecision(2), thick = [] } = {}) {
    this.canvas = canvas;
    this.length = length;
    this.format = format;
    this.thick = new Set(thick);
    this.series = new Map(); // name -> array of numbers
  }

  push(values) {
    for (const [name, v] of Object.entries(values)) {
      if (!this.series.has(name)) this.series.set(name, []);
      const s = this.series.get(name);
      s.push(v);
      if (s.length > this.length) s.shift();
    }
  }

  clear() {
    this.series.clear();
  }

  draw() {
    const { canvas } = this;
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height, top = 18, bottom = H - 4, left = 44;
    ctx.clearRect(0, 0, W, H);
    let max = 0;
    for (const s of this.series.values()) for (const v of s) if (v > max) max = v;
    max = max > 0 ? max * 1.1 : 1;
    ctx.strokeStyle = GRID;
    ctx.fillStyle = INK;
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    for (const f of [0, 0.5, 1]) {
      const y = bottom - f * (bottom - top);
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(W, y);
      ctx.stroke();
      ctx.fillText(this.format(f * max), 2, y + 4);
    }
    const dx = (W - left) / (this.length - 1);
    let i = 0, legendX = left;
    for (const [name, s] of this.series) {
      const colour = COLOURS[i++ % COLOURS.length];
      ctx.strokeStyle = colour;
      ctx.lineWidth = this.thick.has(name) ? 3 : 1.5;
      ctx.beginPath();
      const x0 = W - (s.length - 1) * dx;
      s.forEach((v, j) => {
        const x = x0 + j * dx, y = bottom - (v / max) * (bottom - top);
        if (j === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
      if (this.series.size > 1) {
        ctx.fillStyle = colour;
        ctx.fillText(name, legendX, 11);
        legendX += ctx.measureText(name).width + 12;
      }
    }
  }
}

// The predicted class of each of the last `length` steps: one row per class, one column per step,
// the cell's opacity the predicted class's probability.
export function drawHistory(canvas, history, classes, length = 200) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, left = 84;
  const rowH = (H - 4) / Math.max(classes.length, 1);
  ctx.clearRect(0, 0, W, H);
  ctx.font = "11px system-ui, sans-serif";
  classes.forEach((name, k) => {
    ctx.fillStyle = k % 2 ? "#1b2028" : "#161a21";
    ctx.fillRect(left, 2 + k * rowH, W - left, rowH);
    ctx.fillStyle = INK;
    ctx.fillText(name, 2, 2 + (k + 0.75) * rowH);
  });
  const dx = (W - left) / length;
  const x0 = W - history.length * dx;
  history.forEach((h, j) => {
    ctx.globalAlpha = 0.25 + 0.75 * h.p;
    ctx.fillStyle = COLOURS[h.k % COLOURS.length];
    ctx.fillRect(x0 + j * dx, 2 + h.k * rowH, Math.max(dx, 1), rowH);
  });
  ctx.globalAlpha = 1;
}
