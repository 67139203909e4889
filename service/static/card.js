// The model card: what the model is, how it was trained and measured, where it runs, and its
// layers with their output shapes and receptive fields.

const METRIC_NAMES = {
  test_accuracy: "Test accuracy",
  val_accuracy: "Validation accuracy",
  imagenet_top1_reported: "ImageNet top-1 (reported)",
};

function el(tag, { className, text, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
}

export function shape(dims) {
  return dims.map((d) => (d < 0 ? "?" : String(d))).join("×");
}

function percent(value) {
  return `${(value * 100).toFixed(value >= 0.995 ? 1 : 2)}%`;
}

function humanKey(key) {
  return METRIC_NAMES[key] || key.replaceAll("_", " ").replace(/^./, (c) => c.toUpperCase());
}

function accuracyFacts(metrics) {
  const facts = [];
  for (const [key, value] of Object.entries(metrics || {})) {
    if (typeof value === "number" && /accuracy|top1|top5/.test(key) && value <= 1) {
      facts.push([humanKey(key), percent(value)]);
    }
  }
  return facts;
}

function inputText(input) {
  if (!input) return "unknown";
  const [h, w] = input.size;
  const colour = input.color_mode === "L" ? "grey" : input.color_mode;
  const how =
    input.resize === "center-crop"
      ? `shorter side to ${input.resize_shorter}, centre crop`
      : "stretched to size";
  return `${h}×${w} ${colour} (${how})`;
}

function deviceFacts(model) {
  const device = model.device === "cuda" ? "CUDA (GPU)" : model.device === "cpu" ? "CPU" : "—";
  const providers = model.providers?.length ? model.providers.join(", ") : "none";
  const facts = [
    ["Runs on", device],
    ["Execution providers", providers],
  ];
  if (model.fallback_reason) facts.push(["Why not CUDA", model.fallback_reason]);
  if (model.state !== "ready") facts.push(["State", `${model.state}${model.reason ? `: ${model.reason}` : ""}`]);
  return facts;
}

function factList(model) {
  const facts = [
    ["Architecture", model.architecture || "—"],
    ["Dataset", model.dataset || "—"],
    ["Parameters", model.parameters ? model.parameters.toLocaleString("en-US") : "—"],
    ...accuracyFacts(model.metrics),
    ["Input", inputText(model.input)],
    ...deviceFacts(model),
    ["Version", model.version || model.versions.join(", ")],
  ];
  const list = el("dl", { className: "facts" });
  for (const [name, value] of facts) {
    const className = { "Why not CUDA": "fact fact-warning", "Execution providers": "fact fact-code" };
    list.append(
      el("div", { className: className[name] || "fact" }, [el("dt", { text: name }), el("dd", { text: value })]),
    );
  }
  return list;
}

function coverage(rf, input) {
  if (!rf || !input) return null;
  const [h, w] = input.size;
  return (Math.min(rf.size[0], h) * Math.min(rf.size[1], w)) / (h * w);
}

function coverageText(share) {
  if (share === null) return "—";
  return share < 0.01 ? "<1%" : `${Math.round(share * 100)}%`;
}

function layerRow(layer, index, model, onPick) {
  const rf = layer.receptive_field;
  const share = coverage(rf, model.input);
  const pick = el("button", {
    className: "link-button",
    text: layer.name,
    attrs: { type: "button", title: "Show this layer's feature maps" },
  });
  pick.addEventListener("click", () => onPick(layer.name));
  const bar = el("span", { className: "coverage-bar", attrs: { "aria-hidden": "true" } }, [
    el("span", { className: "coverage-fill" }),
  ]);
  if (share !== null) bar.firstChild.style.width = `${Math.max(2, share * 100)}%`;
  return el("tr", {}, [
    el("td", { className: "num", text: String(index + 1) }),
    el("td", {}, [pick]),
    el("td", { text: layer.op_type }),
    el("td", { className: "num", text: shape(layer.output_shape) }),
    el("td", { className: "num", text: rf ? shape(rf.size) : "—" }),
    el("td", { className: "num", text: rf ? shape(rf.jump) : "—" }),
    el("td", { className: "coverage" }, [
      bar,
      el("span", { className: "coverage-text", text: coverageText(share) }),
    ]),
  ]);
}

function notes(model) {
  const source = model.metrics?.source;
  return typeof source === "string" ? [el("p", { className: "card-note", text: `Accuracy: ${source}.` })] : [];
}

function layerTable(model, onPick) {
  const head = ["#", "Layer", "Op", "Output (C×H×W)", "Receptive field", "Jump", "Share of input"];
  const table = el("table", { className: "layers" }, [
    el("caption", { className: "visually-hidden", text: `Layers of ${model.name}` }),
    el("thead", {}, [el("tr", {}, head.map((h) => el("th", { text: h, attrs: { scope: "col" } })))]),
    el("tbody", {}, model.layers.map((layer, i) => layerRow(layer, i, model, onPick))),
  ]);
  return [
    el("p", {
      className: "card-note",
      attrs: { id: "layers-note" },
      text:
        `${model.layers.length} layers in graph order. Receptive field and jump are in input pixels; ` +
        "the share is how much of the input one unit's region covers. Pick a layer to see its feature maps.",
    }),
    el(
      "div",
      {
        className: "table-scroll",
        attrs: { tabindex: "0", role: "region", "aria-label": "Layers", "aria-describedby": "layers-note" },
      },
      [table],
    ),
  ];
}

/** Fill ``container`` with the card of ``model``; ``onPick(layerName)`` on a layer's button. */
export function renderCard(container, model, onPick) {
  container.replaceChildren(
    el("p", { className: "card-description", text: model.description || model.name }),
    factList(model),
    ...notes(model),
    ...layerTable(model, onPick),
  );
}
