// Viridis, the same sixth-order polynomial fit the service uses for its PNG grids
// (service/visualize.py), as a 256-entry lookup table of packed RGBA.

const COEFFICIENTS = [
  [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
  [0.1050930431085774, 1.404613529898575, 1.384590162594685],
  [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
  [-4.634230498983486, -5.799100973351585, -19.33244095627987],
  [6.228269936347081, 14.17993336680509, 56.69055260068105],
  [4.776384997670288, -13.74514537774601, -65.35303263337234],
  [-5.435455855934631, 4.645852612178535, 26.3124352495832],
];

function viridis(t) {
  const rgb = [0, 0, 0];
  for (let k = COEFFICIENTS.length - 1; k >= 0; k -= 1) {
    for (let c = 0; c < 3; c += 1) rgb[c] = rgb[c] * t + COEFFICIENTS[k][c];
  }
  return rgb.map((v) => Math.round(Math.min(1, Math.max(0, v)) * 255));
}

/** Uint8ClampedArray(256 * 4): RGBA of viridis at i / 255. */
export const VIRIDIS_LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i += 1) {
    const [r, g, b] = viridis(i / 255);
    lut.set([r, g, b, 255], i * 4);
  }
  return lut;
})();
