// The service's native API as the page uses it: one fetch wrapper that adds the API key,
// times the round trip, turns the service's error shape into ApiError, and asks for a key
// (then retries) when the server answers 401.

const KEY_STORAGE = "cnnserve.apiKey";

export class ApiError extends Error {
  constructor(status, code, message, detail = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

export function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // Storage can be disabled; the key then lives until the page reloads.
  }
  memoryKey = key || "";
}

let memoryKey = "";
// Called on 401 with the reason; resolves to a new key, or null when the person cancels.
let keyProvider = async () => null;

export function onKeyNeeded(provider) {
  keyProvider = provider;
}

function currentKey() {
  return storedKey() || memoryKey;
}

async function readError(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's page, say): fall back to the status line.
  }
  const error = body && typeof body.error === "object" ? body.error : null;
  if (error) {
    return new ApiError(response.status, error.code, error.message, error.detail || {});
  }
  const text = response.statusText || "request failed";
  return new ApiError(response.status, "http_" + response.status, `HTTP ${response.status} ${text}`);
}

/**
 * fetch() a path of the service; returns {response, body, ms} where ms is the round trip
 * (request sent to body read). Throws ApiError for error statuses and network failures.
 */
async function call(path, { method = "GET", body = null, signal, as = "json" } = {}) {
  let reason = null;
  for (;;) {
    const headers = {};
    const key = currentKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    const started = performance.now();
    let response;
    try {
      response = await fetch(path, { method, body, headers, signal, cache: "no-store" });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "network_error", "The service could not be reached. Is it running?");
    }
    if (response.status === 401) {
      await response.body?.cancel();
      reason = key ? "That key was not accepted. Try another one." : null;
      const next = await keyProvider(reason);
      if (next === null) {
        throw new ApiError(401, "unauthorized", "No key was entered.");
      }
      storeKey(next);
      continue;
    }
    if (!response.ok) throw await readError(response);
    const payload = as === "json" ? await response.json() : await response.blob();
    return { response, body: payload, ms: performance.now() - started };
  }
}

function imageForm(file) {
  const form = new FormData();
  form.append("file", file, file.name || "image");
  return form;
}

export function listModels({ signal } = {}) {
  return call("/v1/models", { signal });
}

export function classify(model, file, topK, { signal } = {}) {
  const query = new URLSearchParams({ top_k: String(topK) });
  const path = `/v1/models/${encodeURIComponent(model)}/classify?${query}`;
  return call(path, { method: "POST", body: imageForm(file), signal });
}

export function featureMaps(model, file, layer, { signal } = {}) {
  const query = new URLSearchParams({ layer, format: "json" });
  const path = `/v1/models/${encodeURIComponent(model)}/feature-maps?${query}`;
  return call(path, { method: "POST", body: imageForm(file), signal });
}

/**
 * Why the model chose class ``target`` (an index) for ``file``: the JSON explanation (its
 * heatmap a grid over the model input), or with ``format: "png"`` the server's overlay as a
 * Blob. ``version`` keeps it to the version that classified the image.
 */
export function explain(model, file, { method, target, version, format = "json" }, { signal } = {}) {
  const query = new URLSearchParams({ method, target: String(target), format });
  if (version) query.set("version", version);
  const path = `/v1/models/${encodeURIComponent(model)}/explain?${query}`;
  const as = format === "json" ? "json" : "blob";
  return call(path, { method: "POST", body: imageForm(file), signal, as });
}

/** A sentence for a person, from an ApiError (the server's own message is kept). */
export function describeError(err) {
  const friendly = {
    invalid_image: "The server could not read this file as an image.",
    image_too_large: "This image is too large for the server.",
    body_too_large: "This file is too large to upload.",
    too_many_images: "Too many images in one request.",
    invalid_parameter: "The server did not accept a setting of this request.",
    method_not_supported: "This model cannot be explained with that method.",
    unsupported_media_type: "The server does not accept this kind of upload.",
    model_not_found: "This model is not on the server (any more).",
    model_unavailable: "This model is not ready to serve yet.",
    overloaded: "The server is busy. Try again in a moment.",
    deadline_exceeded: "The server took too long to answer.",
    unauthorized: "This server needs an API key: enter one with the API key button at the top.",
    network_error: "The service could not be reached. Is it running?",
  };
  const lead = friendly[err.code] || "The request failed.";
  const said = err.message && err.message !== lead ? err.message : "";
  return { lead, said, code: err.code, status: err.status };
}
