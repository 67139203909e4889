// The image as the model sees it, drawn client-side from the model's input spec, mirroring
// service/preprocessing.py: transparency on black, "stretch" to the input size, or
// "center-crop" (shorter side to resize_shorter, then the centre), grey for colour_mode "L".

/** Decode a File/Blob for display; null when the browser cannot (the server decides). */
export async function decodeImage(file) {
  try {
    return await createImageBitmap(file);
  } catch {
    return null;
  }
}

/** Python's round(): halves to the even neighbour (80.5 -> 80), as preprocessing.py centres. */
function roundHalfEven(x) {
  const floor = Math.floor(x);
  const rest = x - floor;
  if (rest !== 0.5) return Math.round(x);
  return floor % 2 === 0 ? floor : floor + 1;
}

/** Where the bitmap lands on the model-input canvas: [dx, dy, dw, dh]. */
function placement(bitmap, spec) {
  const [height, width] = spec.size;
  if (spec.resize !== "center-crop") return [0, 0, width, height];
  const shorter = spec.resize_shorter || Math.min(height, width);
  const w = bitmap.width;
  const h = bitmap.height;
  let nw = w;
  let nh = h;
  if ((w <= h && w !== shorter) || (h < w && h !== shorter)) {
    // Integer truncation as Pillow's resize size in preprocessing.py.
    [nw, nh] = w <= h ? [shorter, Math.trunc((shorter * h) / w)] : [Math.trunc((shorter * w) / h), shorter];
  }
  let top = roundHalfEven((nh - height) / 2);
  let left = roundHalfEven((nw - width) / 2);
  if (top < 0 || left < 0) {
    // Smaller than the crop (no shipped model does this): centred on black.
    const pw = Math.max(nw, width);
    const ph = Math.max(nh, height);
    left = Math.floor((pw - width) / 2) - Math.floor((pw - nw) / 2);
    top = Math.floor((ph - height) / 2) - Math.floor((ph - nh) / 2);
  }
  return [-left, -top, nw, nh];
}

function toGrey(ctx, width, height) {
  const image = ctx.getImageData(0, 0, width, height);
  const px = image.data;
  for (let i = 0; i < px.length; i += 4) {
    // ITU-R 601-2 luma, as Pillow's convert("L").
    const l = (px[i] * 299 + px[i + 1] * 587 + px[i + 2] * 114) / 1000;
    px[i] = l;
    px[i + 1] = l;
    px[i + 2] = l;
  }
  ctx.putImageData(image, 0, 0);
}

/** Draw ``bitmap`` (or black, when null) on ``canvas`` as the model input of ``spec``. */
export function drawModelInput(canvas, bitmap, spec) {
  const [height, width] = spec.size;
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, width, height);
  if (!bitmap) return;
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  const [dx, dy, dw, dh] = placement(bitmap, spec);
  ctx.drawImage(bitmap, dx, dy, dw, dh);
  if (spec.color_mode === "L") toGrey(ctx, width, height);
}
