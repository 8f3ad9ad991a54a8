// A dedicated worker that turns camera frames into JPEG bytes for the camera page.
// Why a worker: a page behind another tab gets its canvas encoding deferred by the browser
// (bench/browser.py measured up to a second per frame), a worker's is not.
"use strict";

let canvas = null;

self.onmessage = async (event) => {
  const { id, frame, width, height, quality } = event.data;
  try {
    if (!canvas || canvas.width !== width || canvas.height !== height) canvas = new OffscreenCanvas(width, height);
    canvas.getContext("2d").drawImage(frame, 0, 0, width, height);
    frame.close();
    const blob = await canvas.convertToBlob({ type: "image/jpeg", quality });
    const buffer = await blob.arrayBuffer();
    self.postMessage({ id, buffer }, [buffer]);
  } catch (err) {
    frame.close();
    self.postMessage({ id, error: String(err) });
  }
};
