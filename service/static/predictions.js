// Top-k predictions as labelled bars.

export function renderPredictions(container, result) {
  const list = document.createElement("ol");
  list.className = "prediction-list";
  result.predictions.forEach((p, rank) => {
    const item = document.createElement("li");
    item.className = rank === 0 ? "prediction is-top" : "prediction";
    item.dataset.label = p.label;
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
    item.append(label, value, track);
    list.append(item);
  });
  container.replaceChildren(list);
}
