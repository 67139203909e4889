// Top-k predictions as labelled bars (buttons that explain their class, where the model can
// be explained), and the warning on an image the model's out-of-distribution check flagged.

/**
 * Fill ``container`` with the bars of ``result``. With ``onPick``, each bar is a button that
 * calls ``onPick(index)`` with its class.
 */
export function renderPredictions(container, result, { onPick } = {}) {
  const list = document.createElement("ol");
  list.className = "prediction-list";
  result.predictions.forEach((p, rank) => {
    const item = document.createElement("li");
    item.className = rank === 0 ? "prediction is-top" : "prediction";
    item.dataset.label = p.label;
    item.dataset.index = String(p.index);
    const body = document.createElement(onPick ? "button" : "div");
    body.className = "prediction-body";
    if (onPick) {
      body.type = "button";
      body.title = `Why ${p.label}? Show what made the model see it`;
      body.setAttribute("aria-pressed", "false");
      body.addEventListener("click", () => onPick(p.index));
    }
    const label = document.createElement("span");
    label.className = "prediction-label";
    label.textContent = p.label;
    const value = document.createElement("span");
    value.className = "prediction-value";
    value.textContent = `${(p.probability * 100).toFixed(1)}%`;
    const track = document.createElement("span");
    track.className = "prediction-track";
    track.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "prediction-fill";
    fill.style.width = `${Math.max(0.5, p.probability * 100)}%`;
    track.append(fill);
    body.append(label, value, track);
    item.append(body);
    list.append(item);
  });
  container.replaceChildren(list);
}

/** Mark the bar of class ``index`` as the one explained (none: null). */
export function markExplained(container, index) {
  for (const button of container.querySelectorAll("button.prediction-body")) {
    const item = button.closest(".prediction");
    button.setAttribute("aria-pressed", String(item.dataset.index === String(index)));
  }
}

const OOD_METHODS = {
  energy: "its energy score",
  mahalanobis: "the Mahalanobis distance of its features",
  msp: "its maximum softmax probability",
};

/** The checks that flagged the image, in words: ``fired`` where the server lists it (the
 * methods past their own thresholds), else ``method`` (every method the detector runs). */
function oodMethodText(ood) {
  const fired = Array.isArray(ood.fired) && ood.fired.length > 0 ? ood.fired.join("+") : null;
  const names = String(fired || ood.method || "")
    .split("+")
    .map((m) => m.trim())
    .filter(Boolean)
    .map((m) => OOD_METHODS[m.toLowerCase()] || m);
  if (names.length === 0) return "";
  return names.length === 1 ? names[0] : `${names.slice(0, -1).join(", ")} and ${names.at(-1)}`;
}

function number(value) {
  return typeof value === "number" && Number.isFinite(value) ? String(Number(value.toPrecision(4))) : null;
}

/**
 * Show the warning in ``element`` when the result's ``ood`` check flagged the image; hide it
 * when it did not, or when the server sent no check (older servers, models without statistics).
 */
export function renderOodWarning(element, result) {
  const ood = result?.ood;
  if (!ood || ood.flagged !== true) {
    element.hidden = true;
    element.replaceChildren();
    delete element.dataset.method;
    return;
  }
  const title = document.createElement("strong");
  title.textContent = "This image does not look like what the model was trained on.";
  const how = oodMethodText(ood);
  const text = document.createElement("span");
  text.className = "warning-message";
  text.textContent = `${how ? `Flagged by ${how}: t` : "T"}reat these predictions with caution.`;
  const parts = [title, text];
  const score = number(ood.score);
  if (score !== null) {
    const threshold = number(ood.threshold);
    const figures = document.createElement("code");
    figures.className = "warning-figures";
    figures.textContent = `score ${score}${threshold !== null ? ` · threshold ${threshold}` : ""}`;
    parts.push(figures);
  }
  element.replaceChildren(...parts);
  element.dataset.method = String(ood.method || "");
  element.hidden = false;
}
