// Greyscale pictures drawn from pixel values: how the page shows an image as dropped (DICOM
// included, which no browser can show) and as the model sees it.

/// A canvas of `width`×`height` grey pixels, row by row, each `value / max` of white.
export function greyCanvas({ width, height, values, max = 255, label }) {
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  canvas.setAttribute('role', 'img');
  canvas.setAttribute('aria-label', label);
  const context = canvas.getContext('2d');
  const pixels = context.createImageData(width, height);
  for (let i = 0; i < width * height; i++) {
    const grey = Math.round((values[i] * 255) / max);
    pixels.data[4 * i] = grey;
    pixels.data[4 * i + 1] = grey;
    pixels.data[4 * i + 2] = grey;
    pixels.data[4 * i + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
  return canvas;
}
