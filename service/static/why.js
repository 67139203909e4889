// The "Why" panel: what made the model choose a class, as a heatmap over the model input
// (POST /v1/models/{name}/explain). The class is picked in the panel or by clicking its bar
// in the predictions; the method is one of the model's own (ModelInfo.explanations). A new
// pick cancels the request still running for the previous one.

import { clearAlert, showAlert } from "./alert.js";
import * as api from "./api.js";
import { drawOverlay, hottestCell, placeInWords } from "./heatmap.js";
import { drawModelInput } from "./modelinput.js";

const $ = (id) => document.getElementById(id);
const METHOD_NAMES = { cam: "class activation map", occlusion: "occlusion" };
const METHOD_OPTIONS = { cam: "Class activation map (fast)", occlusion: "Occlusion (slower)" };
const METHOD_ORDER = ["cam", "occlusion"]; // the fast one first: it is the default

/** The model's explanation methods, fastest first; [] when the server lists none. */
export function methodsOf(model) {
  const listed = Array.isArray(model?.explanations) ? model.explanations : [];
  const rank = (m) => (METHOD_ORDER.includes(m) ? METHOD_ORDER.indexOf(m) : METHOD_ORDER.length);
  return [...listed].sort((a, b) => rank(a) - rank(b));
}

function percent(probability) {
  return `${(probability * 100).toFixed(1)}%`;
}

function quoted(label) {
  return `\u201c${label}\u201d`;
}

/** What the heatmap shows, in a sentence, and where it is strongest. */
function describe(body, size) {
  const { method, parameters, target, heatmap } = body;
  const [rows, cols] = heatmap.shape;
  const where = placeInWords(hottestCell(heatmap).centre, size);
  if (method === "occlusion" && parameters.window) {
    return (
      `How much the probability of ${quoted(target.label)} drops when a ${parameters.window}×` +
      `${parameters.window} px patch of the image is hidden, moved ${parameters.stride} px at a ` +
      `time (${rows}×${cols} positions). It drops most in ${where} of the image.`
    );
  }
  if (method === "cam") {
    return (
      `Where the last convolutional layer's features that vote for ${quoted(target.label)} are ` +
      `strongest (${rows}×${cols} cells, one pass through the model): most in ${where} of the image.`
    );
  }
  return `${method} for ${quoted(target.label)} (${rows}×${cols} cells): strongest in ${where} of the image.`;
}

export class WhyView {
  /** ``onPick(index)`` is told which class the panel explains, to mark its bar. */
  constructor({ onPick }) {
    this.onPick = onPick;
    this.ui = {
      panel: $("why-panel"),
      target: $("why-target"),
      method: $("why-method"),
      figure: $("why-figure"),
      stage: $("why-stage"),
      canvas: $("why-canvas"),
      label: $("why-label"),
      probability: $("why-probability"),
      methodName: $("why-method-name"),
      legend: $("why-legend"),
      status: $("why-status"),
      timing: $("why-timing"),
      error: $("why-error"),
    };
    this.model = null;
    this.methods = [];
    this.preferred = null; // the method the person chose, kept across images and models
    this.file = null;
    this.version = null;
    this.base = null; // ImageData of the model input, or null when the browser cannot decode it
    this.current = null; // "method|target" shown or being computed
    this.labels = new Map(); // class index (a string, as in the select) -> label
    this.controller = null;
    this.ui.target.addEventListener("change", () => this.explain());
    this.ui.method.addEventListener("change", () => {
      this.preferred = this.ui.method.value;
      this.explain();
    });
  }

  /** Whether the model can be explained at all (the server lists its methods). */
  get enabled() {
    return this.methods.length > 0;
  }

  /** A new model: its methods, and nothing shown until it has classified an image. */
  setModel(model) {
    this.model = model;
    this.setMethods(methodsOf(model));
    this.clear();
    const small = Math.max(...(model.input?.size || [0])) <= 64;
    this.ui.canvas.classList.toggle("pixelated", small);
  }

  setMethods(methods) {
    this.methods = methods;
    this.ui.method.replaceChildren(
      ...methods.map((m) => {
        const option = document.createElement("option");
        option.value = m;
        option.textContent = METHOD_OPTIONS[m] || m;
        return option;
      }),
    );
    this.ui.method.value = methods.includes(this.preferred) ? this.preferred : methods[0] || "";
    this.ui.method.disabled = methods.length < 2;
  }

  /** Forget the image: hide the panel and cancel what is running. */
  clear() {
    this.forget("Pick a class in the predictions to see what made the model choose it.");
    this.ui.panel.hidden = true;
  }

  /** A new image is coming: forget the last one's explanation but keep the panel in place. */
  forgetImage() {
    if (!this.ui.panel.hidden) this.forget("Waiting for the predictions of the new image…");
  }

  forget(text) {
    this.controller?.abort();
    this.controller = null;
    this.file = null;
    this.base = null;
    this.current = null;
    this.ui.target.replaceChildren();
    this.emptyFigure();
    clearAlert(this.ui.error);
    this.setState("idle", text);
  }

  /**
   * The predictions of ``file`` (classified by ``version`` of the model): offer their classes
   * and explain the one already chosen, if it is still there, else the top one.
   */
  show({ file, bitmap, result, version }) {
    if (!this.enabled || !this.model) return;
    const sameImage = file === this.file && version === this.version;
    if (!sameImage) {
      this.controller?.abort();
      this.file = file;
      this.version = version;
      this.current = null;
      this.base = bitmap ? this.modelInput(bitmap) : null;
      this.emptyFigure();
    }
    const previous = sameImage ? this.ui.target.value : null;
    this.labels = new Map(result.predictions.map((p) => [String(p.index), p.label]));
    this.ui.target.replaceChildren(
      ...result.predictions.map((p) => {
        const option = document.createElement("option");
        option.value = String(p.index);
        option.textContent = `${p.label} (${percent(p.probability)})`;
        return option;
      }),
    );
    const kept = result.predictions.some((p) => String(p.index) === previous);
    this.ui.target.value = kept ? previous : String(result.predictions[0]?.index ?? "");
    this.ui.panel.hidden = false;
    this.explain();
  }

  /** Explain class ``index`` (a bar of the predictions was clicked). */
  pick(index) {
    if (!this.file) return;
    if (![...this.ui.target.options].some((o) => o.value === String(index))) return;
    this.ui.target.value = String(index);
    this.explain();
  }

  /** The model input as ImageData, or null (the server's own overlay is then fetched). */
  modelInput(bitmap) {
    if (!this.model.input) return null;
    try {
      const canvas = document.createElement("canvas");
      drawModelInput(canvas, bitmap, this.model.input);
      return canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    } catch {
      return null; // a bitmap closed by a newer image
    }
  }

  emptyFigure() {
    const ui = this.ui;
    ui.canvas.width = 1;
    ui.canvas.height = 1;
    ui.stage.classList.add("is-empty");
    ui.legend.hidden = true;
    ui.timing.hidden = true;
    ui.label.textContent = "";
    ui.probability.textContent = "";
    ui.methodName.textContent = "";
    for (const key of ["target", "method", "cached"]) delete ui.panel.dataset[key];
  }

  setState(state, text) {
    const ui = this.ui;
    ui.panel.dataset.state = state;
    ui.status.textContent = text;
    ui.status.classList.toggle("is-computing", state === "computing");
    if (state === "computing") ui.figure.setAttribute("aria-busy", "true");
    else ui.figure.removeAttribute("aria-busy");
  }

  /** Ask the server why the chosen class, with the chosen method (once per pair). */
  async explain() {
    const ui = this.ui;
    const target = ui.target.value;
    const method = ui.method.value;
    if (!this.file || target === "" || !method) return;
    this.onPick?.(Number(target));
    const key = `${method}|${target}`;
    if (key === this.current) return; // shown, or on its way
    this.current = key;
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    clearAlert(ui.error);
    ui.timing.hidden = true;
    const label = this.labels.get(target) || target;
    // Occlusion runs the model once per patch position: seconds for a photo model on a CPU.
    const large = Math.max(...(this.model.input?.size || [0])) > 64;
    const slow =
      method === "occlusion" && large
        ? " Occlusion runs the model once per patch position: this can take a few seconds."
        : "";
    this.setState("computing", `Computing the ${METHOD_NAMES[method] || method} for ${quoted(label)}…${slow}`);
    const request = { method, target, version: this.version };
    const options = { signal: controller.signal };
    try {
      const { body, ms } = await api.explain(this.model.name, this.file, request, options);
      let picture = null;
      if (!this.base) {
        // The browser could not decode the image (the server could): take the server's overlay.
        const png = await api.explain(this.model.name, this.file, { ...request, format: "png" }, options);
        picture = await createImageBitmap(png.body);
      }
      if (this.controller !== controller) return;
      this.render(body, ms, picture);
    } catch (err) {
      if (err.name === "AbortError" || this.controller !== controller) return;
      this.current = null; // the same pick may be tried again
      this.emptyFigure();
      if (err.code === "method_not_supported" && Array.isArray(err.detail?.supported)) {
        this.setMethods(methodsOf({ explanations: err.detail.supported }));
      }
      showAlert(ui.error, err);
      this.setState("error", `No explanation of ${quoted(label)}.`);
    }
  }

  render(body, ms, picture) {
    const ui = this.ui;
    const size = this.model.input?.size || [body.heatmap.shape[0], body.heatmap.shape[1]];
    if (picture) {
      ui.canvas.width = picture.width;
      ui.canvas.height = picture.height;
      ui.canvas.getContext("2d").drawImage(picture, 0, 0);
      picture.close();
    } else {
      drawOverlay(ui.canvas, this.base, body.heatmap);
    }
    ui.stage.classList.remove("is-empty");
    ui.legend.hidden = false;
    const { target, method } = body;
    const name = METHOD_NAMES[method] || method;
    ui.label.textContent = target.label;
    ui.probability.textContent = percent(target.probability);
    ui.methodName.textContent = name;
    const sentence = describe(body, size);
    ui.canvas.setAttribute(
      "aria-label",
      `Heatmap over the model input of what made the model see ${quoted(target.label)} (${name}). ${sentence}`,
    );
    Object.assign(ui.panel.dataset, {
      target: String(target.index),
      method,
      cached: String(Boolean(body.cached)),
    });
    ui.timing.textContent = `${Math.round(ms)} ms round trip${body.cached ? " · cached" : ""}`;
    ui.timing.title = body.cached
      ? `The server answered from its cache; computing it took ${Math.round(body.elapsed_ms)} ms`
      : `Computed in ${Math.round(body.elapsed_ms)} ms on the server`;
    ui.timing.dataset.ms = String(ms);
    ui.timing.hidden = false;
    this.setState("explained", sentence);
  }
}
