// The API-key dialog: a modal <dialog> that resolves to the key typed, or null on cancel.
// Concurrent 401s share one open dialog.

import { storeKey, storedKey } from "./api.js";

const dialog = document.getElementById("key-dialog");
const form = document.getElementById("key-form");
const input = document.getElementById("key-input");
const reasonText = document.getElementById("key-reason");
const cancelButton = document.getElementById("key-cancel");
const forgetButton = document.getElementById("key-forget");
const DEFAULT_REASON = reasonText.textContent;

let pending = null;
let settle = null;

function finish(value) {
  if (dialog.open) dialog.close();
  const done = settle;
  pending = null;
  settle = null;
  if (done) done(value);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = input.value.trim();
  if (key) finish(key);
});
cancelButton.addEventListener("click", () => finish(null));
forgetButton.addEventListener("click", () => {
  storeKey("");
  input.value = "";
  finish(null);
});
// Escape closes a modal dialog with a "cancel" event.
dialog.addEventListener("cancel", (event) => {
  event.preventDefault();
  finish(null);
});

/** Open the dialog; resolves to the key, or null when the person cancels. */
export function askForKey(reason = null) {
  reasonText.textContent = reason || DEFAULT_REASON;
  reasonText.classList.toggle("is-error", Boolean(reason));
  forgetButton.hidden = !storedKey();
  if (!pending) {
    pending = new Promise((resolve) => {
      settle = resolve;
    });
    input.value = "";
    dialog.showModal();
  }
  input.focus();
  return pending;
}
