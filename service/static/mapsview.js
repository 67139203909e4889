// The feature-map panel: layer choice, the grid of channels, one channel enlarged beside the
// model input, and the receptive field of the unit under the pointer (or keyboard cursor)
// outlined on the input.

import * as api from "./api.js";
import { shape } from "./card.js";
import {
  decodeLayer,
  gridGeometry,
  hitGrid,
  renderChannel,
  renderGrid,
  strongestChannel,
  tileRect,
} from "./featuremaps.js";
import { placeBox, placeDot, receptiveRegion } from "./receptive.js";

const $ = (id) => document.getElementById(id);
const ACTIVATIONS = new Set(["Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSwish", "Elu"]);
// Errors about the image itself are shown once, by the image panel.
const IMAGE_ERRORS = new Set(["invalid_image", "image_too_large", "body_too_large", "unsupported_media_type"]);

function percentBox(box, top, left, height, width) {
  box.style.top = `${top * 100}%`;
  box.style.left = `${left * 100}%`;
  box.style.height = `${height * 100}%`;
  box.style.width = `${width * 100}%`;
  box.hidden = false;
}

function formatValue(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 0.01 || a >= 1000)) return v.toExponential(2);
  return v.toFixed(2);
}

/**
 * A layer worth showing first: the first activation (non-negative, easy to read) whose
 * receptive field spans at least a seventh of the input, so the outline is easy to see.
 */
export function defaultLayer(model) {
  const side = Math.min(...(model.input?.size || [0]));
  const activations = model.layers.filter((l) => ACTIVATIONS.has(l.op_type));
  const layer =
    activations.find((l) => l.receptive_field && l.receptive_field.size[0] >= side / 7) ||
    activations[0] ||
    model.layers[0];
  return layer ? layer.name : null;
}

export class MapsView {
  constructor({ onError }) {
    this.onError = onError;
    this.ui = {
      layerSelect: $("layer-select"),
      channelInput: $("channel-input"),
      scaleSelect: $("scale-select"),
      inputCanvas: $("input-canvas"),
      inputCaption: $("input-caption"),
      rfBox: $("rf-box"),
      rfCentre: $("rf-centre"),
      channelCanvas: $("channel-canvas"),
      channelStage: $("channel-stage"),
      channelCaption: $("channel-caption"),
      unitBox: $("unit-box"),
      colorbarRow: $("colorbar-row"),
      colorbarMin: $("colorbar-min"),
      colorbarMax: $("colorbar-max"),
      rfInfo: $("rf-info"),
      error: $("maps-error"),
      gridWrap: $("grid-wrap"),
      gridCanvas: $("grid-canvas"),
      gridStage: $("grid-stage"),
      tileBox: $("tile-box"),
      gridUnitBox: $("grid-unit-box"),
      timing: $("maps-timing"),
    };
    this.model = null;
    this.file = null;
    this.fmap = null;
    this.geom = null;
    this.channel = 0;
    this.unit = null;
    this.controller = null;
    this.bind();
  }

  bind() {
    const ui = this.ui;
    ui.layerSelect.addEventListener("change", () => this.load());
    ui.scaleSelect.addEventListener("change", () => this.draw());
    ui.channelInput.addEventListener("change", () => this.selectChannel(Number(ui.channelInput.value)));
    ui.channelCanvas.addEventListener("pointermove", (e) => this.hoverChannel(e));
    ui.channelCanvas.addEventListener("keydown", (e) => this.keyOnChannel(e));
    ui.gridCanvas.addEventListener("pointermove", (e) => this.hoverGrid(e));
    ui.gridCanvas.addEventListener("click", (e) => {
      const hit = this.gridHit(e);
      if (hit) this.selectChannel(hit.channel);
    });
    ui.gridCanvas.addEventListener("keydown", (e) => this.keyOnGrid(e));
  }

  /** A new model: refill the layer list and forget the maps. */
  setModel(model) {
    this.model = model;
    const select = this.ui.layerSelect;
    select.replaceChildren(
      ...model.layers.map((layer) => {
        const option = document.createElement("option");
        option.value = layer.name;
        option.textContent = `${layer.name} · ${layer.op_type} · ${shape(layer.output_shape)}`;
        return option;
      }),
    );
    const first = defaultLayer(model);
    if (first) select.value = first;
    select.disabled = model.layers.length === 0;
    const [h, w] = model.input?.size || [0, 0];
    this.ui.inputCaption.textContent = `Model input · ${h}×${w}`;
    this.ui.inputCanvas.classList.toggle("pixelated", Math.max(h, w) <= 64);
    this.reset();
  }

  selectLayer(name) {
    this.ui.layerSelect.value = name;
    this.load();
  }

  /** Forget the image and its maps. */
  clear() {
    this.file = null;
    this.reset();
  }

  reset() {
    this.controller?.abort();
    this.fmap = null;
    this.geom = null;
    this.unit = null;
    const ui = this.ui;
    ui.gridWrap.hidden = true;
    delete ui.gridCanvas.dataset.layer;
    ui.rfBox.hidden = true;
    ui.rfCentre.hidden = true;
    ui.unitBox.hidden = true;
    ui.colorbarRow.hidden = true;
    ui.error.hidden = true;
    ui.timing.hidden = true;
    ui.channelInput.disabled = true;
    ui.channelCanvas.width = 1;
    ui.channelCanvas.height = 1;
    ui.channelStage.classList.add("is-empty");
    ui.channelCaption.textContent = "Channel";
    ui.rfInfo.textContent = this.file
      ? "Pick a layer to see its feature maps."
      : "Pick an image, then hover a feature map to outline the part of the input each unit sees.";
  }

  /** Fetch the chosen layer's maps for ``file`` (default: the last one). */
  async load(file = this.file) {
    this.file = file;
    const layer = this.ui.layerSelect.value;
    if (!file || !layer || !this.model) return;
    this.reset();
    const controller = new AbortController();
    this.controller = controller;
    const ui = this.ui;
    ui.gridWrap.setAttribute("aria-busy", "true");
    ui.rfInfo.textContent = `Loading the feature maps of ${layer}…`;
    try {
      const { body, ms, response } = await api.featureMaps(this.model.name, file, layer, {
        signal: controller.signal,
      });
      const fmap = decodeLayer(body.layers[0]);
      this.fmap = fmap;
      this.geom = gridGeometry(fmap);
      this.channel = strongestChannel(fmap);
      this.unit = [Math.floor(fmap.height / 2), Math.floor(fmap.width / 2)];
      const bytes = Number(response.headers.get("content-length")) || 0;
      ui.timing.textContent = `${Math.round(ms)} ms round trip${bytes ? ` · ${Math.round(bytes / 1024)} KB` : ""}`;
      ui.timing.dataset.ms = String(ms);
      ui.timing.hidden = false;
      ui.gridWrap.hidden = false;
      ui.channelInput.max = String(fmap.channels - 1);
      ui.channelInput.disabled = false;
      this.draw();
      this.showUnit(...this.unit);
    } catch (err) {
      if (err.name === "AbortError") return;
      this.reset();
      if (IMAGE_ERRORS.has(err.code)) return;
      const { lead, said } = api.describeError(err);
      ui.error.textContent = said ? `${lead} ${said}` : lead;
      ui.error.hidden = false;
      this.onError?.(err);
    } finally {
      if (this.controller === controller) ui.gridWrap.removeAttribute("aria-busy");
    }
  }

  draw() {
    const { fmap, geom, ui } = this;
    if (!fmap) return;
    renderGrid(ui.gridCanvas, fmap, geom, ui.scaleSelect.value);
    ui.gridCanvas.dataset.layer = fmap.name;
    ui.gridCanvas.dataset.channels = String(fmap.channels);
    ui.gridCanvas.setAttribute(
      "aria-label",
      `All ${fmap.channels} channels of ${fmap.name} (${shape([fmap.channels, fmap.height, fmap.width])}). Arrow keys choose a channel.`,
    );
    // Few channels would be blown up to the full width; keep tiles at a sensible size.
    const tileCss = Math.max(120, Math.min(geom.tileW, 200));
    ui.gridStage.style.maxWidth = `${geom.cols * tileCss}px`;
    this.drawChannel();
  }

  drawChannel() {
    const { fmap, ui } = this;
    const [lo, hi] = renderChannel(ui.channelCanvas, fmap, this.channel, ui.scaleSelect.value);
    ui.channelStage.classList.remove("is-empty");
    ui.channelCanvas.dataset.channel = String(this.channel);
    ui.channelCaption.textContent = `${fmap.name} · channel ${this.channel} of ${fmap.channels} · ${fmap.height}×${fmap.width}`;
    ui.channelInput.value = String(this.channel);
    ui.colorbarMin.textContent = formatValue(lo);
    ui.colorbarMax.textContent = formatValue(hi);
    ui.colorbarRow.hidden = false;
    const tile = tileRect(this.geom, this.channel);
    const g = this.geom;
    percentBox(ui.tileBox, (tile.y - 1) / g.height, (tile.x - 1) / g.width, (tile.h + 2) / g.height, (tile.w + 2) / g.width);
  }

  selectChannel(channel) {
    if (!this.fmap || !Number.isFinite(channel)) return;
    this.channel = Math.max(0, Math.min(this.fmap.channels - 1, Math.round(channel)));
    this.drawChannel();
    if (this.unit) this.showUnit(...this.unit);
  }

  /** Outline the receptive field of unit (i, j) on the input, and mark the unit on the maps. */
  showUnit(i, j, channel = this.channel) {
    const { fmap, geom, ui, model } = this;
    if (!fmap) return;
    this.unit = [i, j];
    percentBox(ui.unitBox, i / fmap.height, j / fmap.width, 1 / fmap.height, 1 / fmap.width);
    const tile = tileRect(geom, channel);
    const s = geom.scale;
    percentBox(ui.gridUnitBox, (tile.y + i * s) / geom.height, (tile.x + j * s) / geom.width, s / geom.height, s / geom.width);
    const rf = fmap.receptiveField;
    if (!rf || !model.input) {
      ui.rfBox.hidden = true;
      ui.rfCentre.hidden = true;
      ui.rfInfo.textContent = `${fmap.name} has no receptive field information.`;
      return;
    }
    const size = model.input.size;
    const region = receptiveRegion(rf, i, j, size);
    placeBox(ui.rfBox, region, size);
    placeDot(ui.rfCentre, region, size);
    ui.rfBox.hidden = false;
    ui.rfCentre.hidden = false;
    Object.assign(ui.rfBox.dataset, {
      layer: fmap.name,
      unit: `${i},${j}`,
      top: String(region.top),
      left: String(region.left),
      height: String(region.height),
      width: String(region.width),
    });
    const fraction = (region.height * region.width) / (size[0] * size[1]);
    const share = fraction < 0.01 ? (fraction * 100).toFixed(1) : Math.round(fraction * 100);
    const clipped = region.clipped ? ` (${shape(rf.size)} before clipping to the image)` : "";
    ui.rfInfo.textContent =
      `${fmap.name}, unit (row ${i}, col ${j}) sees a ${region.height}×${region.width} px region${clipped} ` +
      `centred on (${region.centre[0]}, ${region.centre[1]}): ${share}% of the input. ` +
      `Neighbouring units are ${shape(rf.jump)} px apart.`;
  }

  hoverChannel(event) {
    const { fmap, ui } = this;
    if (!fmap) return;
    const rect = ui.channelCanvas.getBoundingClientRect();
    const i = Math.floor(((event.clientY - rect.top) / rect.height) * fmap.height);
    const j = Math.floor(((event.clientX - rect.left) / rect.width) * fmap.width);
    if (i < 0 || j < 0 || i >= fmap.height || j >= fmap.width) return;
    if (!this.unit || this.unit[0] !== i || this.unit[1] !== j) this.showUnit(i, j);
  }

  gridHit(event) {
    if (!this.fmap) return null;
    const canvas = this.ui.gridCanvas;
    const rect = canvas.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * canvas.width;
    const y = ((event.clientY - rect.top) / rect.height) * canvas.height;
    return hitGrid(this.fmap, this.geom, x, y);
  }

  hoverGrid(event) {
    const hit = this.gridHit(event);
    this.ui.gridCanvas.classList.toggle("is-over-tile", Boolean(hit));
    if (hit) this.showUnit(hit.i, hit.j, hit.channel);
  }

  keyOnChannel(event) {
    const { fmap } = this;
    if (!fmap || !this.unit) return;
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    const move = moves[event.key];
    if (!move) return;
    event.preventDefault();
    const i = Math.max(0, Math.min(fmap.height - 1, this.unit[0] + move[0]));
    const j = Math.max(0, Math.min(fmap.width - 1, this.unit[1] + move[1]));
    this.showUnit(i, j);
  }

  keyOnGrid(event) {
    if (!this.fmap) return;
    const cols = this.geom.cols;
    const steps = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -cols, ArrowDown: cols, Home: -Infinity, End: Infinity };
    const step = steps[event.key];
    if (step === undefined) return;
    event.preventDefault();
    const next = Number.isFinite(step) ? this.channel + step : step < 0 ? 0 : this.fmap.channels - 1;
    if (next >= 0 && next < this.fmap.channels) this.selectChannel(next);
  }
}
