// Explanation heatmaps from the API's JSON, drawn over the model input the way the service
// draws its format=png overlay (service/visualize.py, service/explain.py): the grid's values
// interpolated to every input pixel (bilinear between cell centres, the nearest edge cell
// beyond them), coloured with viridis, and blended 55% over the image.
//
// Cell (i, j) of the grid is centred at start + (i, j) * jump in model-input pixels, size
// across: a receptive field's terms, as for feature maps.

import { VIRIDIS_LUT } from "./colormap.js";

const OVERLAY_ALPHA = 0.55; // the heatmap's share of each pixel, as the service's PNG

/** For each pixel along one axis: the cells on either side and how far it lies between them. */
function between(pixels, cells, jump, start) {
  const low = new Int32Array(pixels);
  const high = new Int32Array(pixels);
  const frac = new Float32Array(pixels);
  for (let k = 0; k < pixels; k += 1) {
    const position = Math.min(Math.max((k - start) / jump, 0), cells - 1);
    low[k] = Math.floor(position);
    high[k] = Math.min(low[k] + 1, cells - 1);
    frac[k] = position - low[k];
  }
  return { low, high, frac };
}

/** The heatmap's value at every pixel of a [height, width] input, row-major Float32Array. */
export function heatmapPixels(heatmap, [height, width]) {
  const [rows, cols] = heatmap.shape;
  const { jump, start } = heatmap.grid;
  const v = heatmap.values;
  const ys = between(height, rows, jump[0], start[0]);
  const xs = between(width, cols, jump[1], start[1]);
  const out = new Float32Array(height * width);
  for (let y = 0; y < height; y += 1) {
    const top = v[ys.low[y]];
    const bottom = v[ys.high[y]];
    const fy = ys.frac[y];
    for (let x = 0; x < width; x += 1) {
      const x0 = xs.low[x];
      const x1 = xs.high[x];
      const fx = xs.frac[x];
      const upper = top[x0] * (1 - fx) + top[x1] * fx;
      const lower = bottom[x0] * (1 - fx) + bottom[x1] * fx;
      out[y * width + x] = upper * (1 - fy) + lower * fy;
    }
  }
  return out;
}

/**
 * Draw ``base`` (ImageData of the model input) with ``heatmap`` over it on ``canvas``, which
 * takes the input's size (the page scales it up with CSS).
 */
export function drawOverlay(canvas, base, heatmap) {
  const { width, height } = base;
  canvas.width = width;
  canvas.height = height;
  const heat = heatmapPixels(heatmap, [height, width]);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const image = ctx.createImageData(width, height);
  const out = image.data;
  const src = base.data;
  for (let k = 0; k < heat.length; k += 1) {
    const t = Math.min(1, Math.max(0, heat[k]));
    const idx = Math.round(t * 255) * 4;
    const o = k * 4;
    for (let c = 0; c < 3; c += 1) {
      out[o + c] = Math.round((1 - OVERLAY_ALPHA) * src[o + c] + OVERLAY_ALPHA * VIRIDIS_LUT[idx + c]);
    }
    out[o + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

/** The cell with the highest value: {row, col, value, centre: [y, x]} in input pixels. */
export function hottestCell(heatmap) {
  let best = { row: 0, col: 0, value: -Infinity };
  heatmap.values.forEach((row, i) =>
    row.forEach((value, j) => {
      if (value > best.value) best = { row: i, col: j, value };
    }),
  );
  const { jump, start } = heatmap.grid;
  return { ...best, centre: [start[0] + best.row * jump[0], start[1] + best.col * jump[1]] };
}

/** Where a point lies in an image of [height, width], in words ("the top left", "the centre"). */
export function placeInWords([y, x], [height, width]) {
  const third = (v, n) => Math.min(2, Math.max(0, Math.floor(((v + 0.5) / n) * 3)));
  const vertical = ["top", "middle", "bottom"][third(y, height)];
  const horizontal = ["left", "centre", "right"][third(x, width)];
  if (vertical === "middle") return horizontal === "centre" ? "the centre" : `the middle ${horizontal}`;
  return `the ${vertical} ${horizontal}`;
}
