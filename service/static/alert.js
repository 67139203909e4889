// The page's one way of showing an API error: the sentence for a person, the server's own
// message, and the status and code, in a role="alert" element.

import { describeError } from "./api.js";

/** Fill ``element`` with ``err`` (an ApiError) and show it. */
export function showAlert(element, err) {
  const { lead, said, code, status } = describeError(err);
  const title = document.createElement("strong");
  title.textContent = lead;
  const parts = [title];
  if (said) {
    const message = document.createElement("span");
    message.className = "alert-message";
    message.textContent = said;
    parts.push(message);
  }
  if (code) {
    const tag = document.createElement("code");
    tag.className = "alert-code";
    tag.textContent = status ? `${status} ${code}` : code;
    parts.push(tag);
  }
  element.replaceChildren(...parts);
  element.dataset.code = code || "";
  element.hidden = false;
}

export function clearAlert(element) {
  element.hidden = true;
  element.replaceChildren();
  delete element.dataset.code;
}
