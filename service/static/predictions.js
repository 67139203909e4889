// Top-k predictions as labelled bars (buttons that explain their class, where the model can
// be explained).

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
