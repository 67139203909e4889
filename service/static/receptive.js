// Receptive fields: which pixels of the model input a unit of a layer can see.
//
// The API gives, per layer, size, jump and start (each [h, w]) in model-input pixels, pixel k
// centred at k. The unit at (row i, col j) sees the region centred at start + (i, j) * jump,
// size pixels across: pixels [centre - (size - 1) / 2, centre + (size - 1) / 2], clipped to
// the input. Pixel k covers [k, k + 1) on a display where one input pixel is one unit wide.

function axis(rf, d, units, extent) {
  const centre = rf.start[d] + units * rf.jump[d];
  const half = (rf.size[d] - 1) / 2;
  const first = Math.max(centre - half, 0);
  const last = Math.min(centre + half, extent - 1);
  return { centre, first, span: Math.max(0, last - first + 1) };
}

/**
 * The input region of unit (i, j) for a model input of [height, width]:
 * {centre: [y, x], top, left, height, width} in input pixels (clipped), and the unclipped size.
 */
export function receptiveRegion(rf, i, j, [height, width]) {
  const rows = axis(rf, 0, i, height);
  const cols = axis(rf, 1, j, width);
  return {
    centre: [rows.centre, cols.centre],
    top: rows.first,
    left: cols.first,
    height: rows.span,
    width: cols.span,
    size: rf.size,
    clipped: rows.span < rf.size[0] || cols.span < rf.size[1],
  };
}

/** Position ``box`` over the displayed input (percentages, so it follows any resize). */
export function placeBox(box, region, [height, width]) {
  box.style.top = `${(region.top / height) * 100}%`;
  box.style.left = `${(region.left / width) * 100}%`;
  box.style.height = `${(region.height / height) * 100}%`;
  box.style.width = `${(region.width / width) * 100}%`;
}

/** Position ``dot`` on the middle of the region's centre pixel. */
export function placeDot(dot, region, [height, width]) {
  dot.style.top = `${((region.centre[0] + 0.5) / height) * 100}%`;
  dot.style.left = `${((region.centre[1] + 0.5) / width) * 100}%`;
}
