// Feature maps from the API's JSON: decode the float32 data, lay the channels out in a grid
// (the same layout as the service's PNG: ceil(sqrt(C)) columns, integer tile scale, 2 px
// gaps), draw channels with viridis, and map canvas positions back to (channel, row, col).

import { VIRIDIS_LUT } from "./colormap.js";

const TILE_MIN_PX = 40;
const GRID_MAX_PX = 2048;
const GAP_PX = 2;
const BACKGROUND = [24, 27, 36, 255];
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function decodeFloats(base64) {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  if (LITTLE_ENDIAN) return new Float32Array(bytes.buffer);
  const view = new DataView(bytes.buffer);
  const out = new Float32Array(bytes.length / 4);
  for (let i = 0; i < out.length; i += 1) out[i] = view.getFloat32(i * 4, true);
  return out;
}

/** One layer of a feature-map response, decoded, with per-channel min, max and mean. */
export function decodeLayer(layer) {
  const [channels, height, width] = layer.shape;
  const data = decodeFloats(layer.data);
  const area = height * width;
  const channelStats = [];
  for (let c = 0; c < channels; c += 1) {
    let min = Infinity;
    let max = -Infinity;
    let sum = 0;
    let squares = 0;
    for (let k = c * area; k < (c + 1) * area; k += 1) {
      const v = data[k];
      if (v < min) min = v;
      if (v > max) max = v;
      sum += v;
      squares += v * v;
    }
    const mean = sum / area;
    channelStats.push({ min, max, mean, std: Math.sqrt(Math.max(0, squares / area - mean * mean)) });
  }
  return {
    name: layer.name,
    opType: layer.op_type,
    channels,
    height,
    width,
    receptiveField: layer.receptive_field,
    stats: layer.stats,
    channelStats,
    data,
  };
}

/** The channel that varies most across the image: a good first one to show. */
export function strongestChannel(fmap) {
  let best = 0;
  fmap.channelStats.forEach((s, c) => {
    if (s.std > fmap.channelStats[best].std) best = c;
  });
  return best;
}

export function gridGeometry(fmap) {
  const { channels, height, width } = fmap;
  const cols = Math.ceil(Math.sqrt(channels));
  const rows = Math.ceil(channels / cols);
  let scale = Math.max(1, Math.ceil(TILE_MIN_PX / Math.max(height, width)));
  scale = Math.max(1, Math.min(scale, Math.floor((GRID_MAX_PX / cols - GAP_PX) / Math.max(width, 1))));
  const tileW = width * scale;
  const tileH = height * scale;
  return {
    cols,
    rows,
    scale,
    tileW,
    tileH,
    width: cols * (tileW + GAP_PX) + GAP_PX,
    height: rows * (tileH + GAP_PX) + GAP_PX,
  };
}

/** Canvas-pixel rectangle of channel ``c``'s tile. */
export function tileRect(geom, c) {
  const r = Math.floor(c / geom.cols);
  const q = c % geom.cols;
  return {
    x: GAP_PX + q * (geom.tileW + GAP_PX),
    y: GAP_PX + r * (geom.tileH + GAP_PX),
    w: geom.tileW,
    h: geom.tileH,
  };
}

/** (channel, row, col) under canvas pixel (x, y) of the grid, or null on a gap. */
export function hitGrid(fmap, geom, x, y) {
  const q = Math.floor((x - GAP_PX) / (geom.tileW + GAP_PX));
  const r = Math.floor((y - GAP_PX) / (geom.tileH + GAP_PX));
  if (q < 0 || r < 0 || q >= geom.cols || r >= geom.rows) return null;
  const channel = r * geom.cols + q;
  if (channel >= fmap.channels) return null;
  const tile = tileRect(geom, channel);
  const dx = x - tile.x;
  const dy = y - tile.y;
  if (dx < 0 || dy < 0 || dx >= tile.w || dy >= tile.h) return null;
  return { channel, i: Math.floor(dy / geom.scale), j: Math.floor(dx / geom.scale) };
}

function range(fmap, c, mode) {
  const s = mode === "layer" ? fmap.stats : fmap.channelStats[c];
  return [s.min, s.max];
}

/** Viridis RGBA of channel ``c`` into ``out`` (a W*H*4 view), normalised per ``mode``. */
function paintChannel(fmap, c, mode, put) {
  const [lo, hi] = range(fmap, c, mode);
  const span = hi - lo;
  const area = fmap.height * fmap.width;
  const base = c * area;
  for (let k = 0; k < area; k += 1) {
    const t = span < 1e-12 ? 0 : (fmap.data[base + k] - lo) / span;
    const idx = Math.max(0, Math.min(255, Math.round(t * 255))) * 4;
    put(Math.floor(k / fmap.width), k % fmap.width, idx);
  }
}

export function renderGrid(canvas, fmap, geom, mode) {
  canvas.width = geom.width;
  canvas.height = geom.height;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(geom.width, geom.height);
  const px = image.data;
  for (let k = 0; k < px.length; k += 4) px.set(BACKGROUND, k);
  const s = geom.scale;
  for (let c = 0; c < fmap.channels; c += 1) {
    const tile = tileRect(geom, c);
    paintChannel(fmap, c, mode, (i, j, idx) => {
      for (let dy = 0; dy < s; dy += 1) {
        let o = ((tile.y + i * s + dy) * geom.width + tile.x + j * s) * 4;
        for (let dx = 0; dx < s; dx += 1, o += 4) {
          px[o] = VIRIDIS_LUT[idx];
          px[o + 1] = VIRIDIS_LUT[idx + 1];
          px[o + 2] = VIRIDIS_LUT[idx + 2];
          px[o + 3] = 255;
        }
      }
    });
  }
  ctx.putImageData(image, 0, 0);
}

export function renderChannel(canvas, fmap, c, mode) {
  canvas.width = fmap.width;
  canvas.height = fmap.height;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(fmap.width, fmap.height);
  const px = image.data;
  paintChannel(fmap, c, mode, (i, j, idx) => {
    const o = (i * fmap.width + j) * 4;
    px[o] = VIRIDIS_LUT[idx];
    px[o + 1] = VIRIDIS_LUT[idx + 1];
    px[o + 2] = VIRIDIS_LUT[idx + 2];
    px[o + 3] = 255;
  });
  ctx.putImageData(image, 0, 0);
  return range(fmap, c, mode);
}
