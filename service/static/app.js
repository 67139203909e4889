// The page: pick a model, give it an image (file, drop, paste or a sample), and see the
// predictions (and why the model chose each class), the model card, and the feature maps
// with their receptive fields.

import { clearAlert, showAlert } from "./alert.js";
import * as api from "./api.js";
import { renderCard } from "./card.js";
import { askForKey } from "./keydialog.js";
import { MapsView } from "./mapsview.js";
import { decodeImage, drawModelInput } from "./modelinput.js";
import { markExplained, renderOodWarning, renderPredictions } from "./predictions.js";
import { WhyView } from "./why.js";

const $ = (id) => document.getElementById(id);
const ui = {
  keyButton: $("key-button"),
  modelSelect: $("model-select"),
  topkSelect: $("topk-select"),
  dropzone: $("dropzone"),
  fileInput: $("file-input"),
  samples: $("samples"),
  error: $("error"),
  predictions: $("predictions"),
  oodWarning: $("ood-warning"),
  timing: $("timing"),
  inputCanvas: $("input-canvas"),
  card: $("card"),
};

const state = {
  models: [],
  model: null,
  samples: [],
  file: null,
  bitmap: null,
  classifying: null,
};

const maps = new MapsView({});
const why = new WhyView({ onPick: (index) => markExplained(ui.predictions, index) });

api.onKeyNeeded(async (reason) => {
  ui.keyButton.hidden = false;
  return askForKey(reason);
});

function placeholder(container, text) {
  const p = document.createElement("p");
  p.className = "placeholder";
  p.textContent = text;
  container.replaceChildren(p);
}

function showError(err) {
  showAlert(ui.error, err);
}

function clearError() {
  clearAlert(ui.error);
}

// ---- models ---------------------------------------------------------------------------

async function loadModels() {
  ui.modelSelect.disabled = true;
  try {
    const { body } = await api.listModels();
    state.models = body.models;
    clearError();
  } catch (err) {
    showError(err);
    const option = document.createElement("option");
    option.textContent = err.code === "unauthorized" ? "API key needed" : "No models";
    ui.modelSelect.replaceChildren(option);
    placeholder(ui.card, "The model list could not be loaded.");
    return;
  }
  const previous = state.model?.name;
  ui.modelSelect.replaceChildren(
    ...state.models.map((m) => {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = m.state === "ready" ? m.name : `${m.name} (${m.state})`;
      option.disabled = m.state !== "ready";
      return option;
    }),
  );
  ui.modelSelect.disabled = state.models.length === 0;
  const ready = state.models.filter((m) => m.state === "ready");
  const pick = ready.find((m) => m.name === previous) || ready[0] || state.models[0];
  if (!pick) {
    placeholder(ui.card, "The server has no models.");
    return;
  }
  ui.modelSelect.value = pick.name;
  selectModel(pick.name);
}

function selectModel(name) {
  const model = state.models.find((m) => m.name === name);
  if (!model) return;
  state.model = model;
  document.body.dataset.model = model.name;
  renderCard(ui.card, model, (layer) => {
    maps.selectLayer(layer);
    $("maps-title").scrollIntoView({ behavior: "smooth", block: "start" });
    ui.modelSelect.blur();
    $("layer-select").focus({ preventScroll: true });
  });
  maps.setModel(model);
  why.setModel(model);
  renderSamples();
  drawInput();
  if (state.file) classifyThenMaps();
}

/** Classify, then (once the server has read the image) fetch the feature maps. */
async function classifyThenMaps() {
  const file = state.file;
  if (await classify()) maps.load(file);
}

// ---- images ---------------------------------------------------------------------------

function drawInput() {
  if (state.model?.input) drawModelInput(ui.inputCanvas, state.bitmap, state.model.input);
  $("input-stage").classList.toggle("is-empty", !state.bitmap);
}

async function setImage(file) {
  if (!file) return;
  clearError();
  why.forgetImage(); // the previous image's explanation is not this one's
  state.file = file;
  $("file-name").textContent = `${file.name || "pasted image"} · ${formatBytes(file.size)}`;
  $("file-name").hidden = false;
  state.bitmap?.close?.();
  state.bitmap = await decodeImage(file);
  drawInput();
  if (state.model) classifyThenMaps();
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/** Classify the current image; true when predictions were shown. */
async function classify() {
  const { model, file } = state;
  if (!model || !file) return false;
  state.classifying?.abort();
  const controller = new AbortController();
  state.classifying = controller;
  ui.predictions.setAttribute("aria-busy", "true");
  ui.predictions.classList.add("is-loading");
  try {
    const topK = Math.min(Number(ui.topkSelect.value), model.labels.length || 5);
    const { body, ms } = await api.classify(model.name, file, topK, { signal: controller.signal });
    if (file !== state.file) return false; // another image came while this one was classified
    const result = body.results[0];
    const meta = document.createElement("p");
    meta.className = "prediction-meta";
    meta.textContent = `${result.filename || "image"} · ${body.model} v${body.model_version}`;
    const onPick = why.enabled ? (index) => why.pick(index) : undefined;
    renderPredictions(ui.predictions, result, { onPick });
    ui.predictions.prepend(meta);
    renderOodWarning(ui.oodWarning, result);
    why.show({ file, bitmap: state.bitmap, result, version: body.model_version });
    ui.timing.textContent = `${Math.round(ms)} ms round trip`;
    ui.timing.dataset.ms = String(ms);
    ui.timing.title = "Time from sending the request to reading the whole answer, measured here";
    ui.timing.hidden = false;
    return true;
  } catch (err) {
    if (err.name === "AbortError") return false;
    showError(err);
    placeholder(ui.predictions, "No predictions for this file.");
    renderOodWarning(ui.oodWarning, null);
    why.clear();
    ui.timing.hidden = true;
    if (err.code === "invalid_image" || err.code === "image_too_large" || err.code === "body_too_large") {
      state.bitmap = null;
      drawInput();
      maps.clear(); // forget the previous image's maps
    }
    return false;
  } finally {
    if (state.classifying === controller) {
      ui.predictions.removeAttribute("aria-busy");
      ui.predictions.classList.remove("is-loading");
    }
  }
}

// ---- samples --------------------------------------------------------------------------

async function loadSamples() {
  try {
    const response = await fetch("/ui/samples/samples.json");
    state.samples = (await response.json()).samples;
  } catch {
    state.samples = [];
  }
  renderSamples();
}

function samplesFor(model) {
  const dataset = (model?.dataset || "").toLowerCase();
  const matching = state.samples.filter(
    (s) => dataset && (dataset.startsWith(s.dataset) || s.dataset.startsWith(dataset)),
  );
  return matching.length ? matching : state.samples;
}

function renderSamples() {
  if (!state.model) return;
  ui.samples.replaceChildren(
    ...samplesFor(state.model).map((sample) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "sample";
      button.title = `${sample.title}: ${sample.caption}`;
      button.dataset.file = sample.file;
      const img = document.createElement("img");
      img.src = `/ui/samples/${sample.file}`;
      img.alt = "";
      img.width = 56;
      img.height = 56;
      img.className = sample.dataset === "fashion-mnist" ? "pixelated" : "";
      const label = document.createElement("span");
      label.textContent = sample.title;
      button.append(img, label);
      button.addEventListener("click", () => useSample(sample));
      const item = document.createElement("li");
      item.append(button);
      return item;
    }),
  );
}

async function useSample(sample) {
  try {
    const response = await fetch(`/ui/samples/${sample.file}`);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const blob = await response.blob();
    await setImage(new File([blob], sample.file, { type: blob.type }));
  } catch {
    showError(new api.ApiError(0, "network_error", `The sample ${sample.file} could not be loaded.`));
  }
}

// ---- wiring ---------------------------------------------------------------------------

function firstFile(list) {
  return list && list.length ? list[0] : null;
}

function bindInputs() {
  ui.modelSelect.addEventListener("change", () => selectModel(ui.modelSelect.value));
  ui.topkSelect.addEventListener("change", () => classify());
  ui.fileInput.addEventListener("change", () => {
    setImage(firstFile(ui.fileInput.files));
    ui.fileInput.value = ""; // choosing the same file again still fires "change"
  });
  // Drops anywhere on the page are taken, so a missed drop never navigates away.
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    ui.dropzone.classList.add("is-dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) ui.dropzone.classList.remove("is-dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    ui.dropzone.classList.remove("is-dragging");
    setImage(firstFile(event.dataTransfer?.files));
  });
  document.addEventListener("paste", (event) => {
    if (event.target instanceof HTMLInputElement && event.target.type !== "file") return;
    const file = firstFile(event.clipboardData?.files);
    if (file) {
      event.preventDefault();
      setImage(file);
    }
  });
  ui.keyButton.addEventListener("click", async () => {
    const key = await askForKey();
    if (key) api.storeKey(key);
    ui.keyButton.hidden = !api.storedKey();
    loadModels();
  });
}

bindInputs();
ui.keyButton.hidden = !api.storedKey();
loadSamples();
loadModels();
