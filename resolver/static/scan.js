/* cityid scanner: read a 2D code with the camera (or from a photo) and open the
 * identifier's landing page on this resolver.
 *
 * Decoder: the browser's BarcodeDetector where it reads QR codes, else jsQR
 * (jsqr.js, loaded before this file). A code holding a URL whose path is
 * /PREFIX/SUFFIX (any host: a code printed for another resolver still names an
 * identifier), or a bare PREFIX/SUFFIX, opens PREFIX/SUFFIX?noredirect here,
 * case as given. Anything else is shown as text and scanning goes on.
 */
(function () {
  "use strict";

  // PREFIX: dot-separated nodes of 0-9 A-Z; SUFFIX: 1-63 of 0-9 A-Z - _ (either case:
  // the resolver folds it; a wrong one gets its 400 page naming the rule).
  var ID_RE = /^[0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*\/[0-9A-Za-z_-]{1,63}$/;
  var SCHEME_RE = /^[A-Za-z][A-Za-z0-9+.-]*:/;
  var VIDEO_MAX = 800; // longest side of a camera frame given to jsQR, in pixels
  var PHOTO_MAX = [1024, 2048]; // sizes a photo is tried at, smallest first
  var INTERVAL = 100; // ms between two decodes of the camera
  var PROMPT_WAIT = 2500; // ms before an unanswered camera prompt is explained

  var video = document.getElementById("video");
  var statusEl = document.getElementById("status");
  var decoderEl = document.getElementById("decoder");
  var resultEl = document.getElementById("result");
  var photo = document.getElementById("photo");
  var cameraButton = document.getElementById("camera");
  var view = document.getElementById("view");

  var canvas = document.createElement("canvas");
  var ctx = canvas.getContext("2d", { willReadFrequently: true });
  var detector = null; // a BarcodeDetector when the browser has one that reads QR codes
  var ready = null; // the promise that chooses the decoder
  var stream = null;
  var timer = 0;
  var busy = false;
  var done = false; // navigating: stop everything
  var lastText = null;

  // The page's words, in its language (resolver/i18n.py, put in the page as JSON data).
  var WORDS = JSON.parse(document.getElementById("messages").textContent);
  var LANG = document.documentElement.getAttribute("lang") === "en" ? "en" : "zh";

  /** The message ``key`` with its ``{fields}`` filled. */
  function words(key, fields) {
    var text = WORDS[key] || key;
    Object.keys(fields || {}).forEach(function (name) {
      text = text.split("{" + name + "}").join(fields[name]);
    });
    return text;
  }

  function say(text, cls) {
    statusEl.textContent = text;
    statusEl.className = cls || "";
  }

  /** The identifier a decoded text names, or null. */
  function identifierOf(text) {
    var t = text.trim();
    if (SCHEME_RE.test(t)) {
      var url;
      try {
        url = new URL(t);
      } catch (e) {
        return null;
      }
      if (url.protocol !== "http:" && url.protocol !== "https:") {
        return null;
      }
      var path = url.pathname.replace(/^\//, "").replace(/\/$/, "");
      return ID_RE.test(path) ? path : null;
    }
    return ID_RE.test(t) ? t : null;
  }

  async function chooseDecoder() {
    if ("BarcodeDetector" in window) {
      try {
        var formats = await window.BarcodeDetector.getSupportedFormats();
        if (formats.indexOf("qr_code") >= 0) {
          detector = new window.BarcodeDetector({ formats: ["qr_code"] });
        }
      } catch (e) {
        detector = null;
      }
    }
    if (!detector && typeof window.jsQR !== "function") {
      decoderEl.textContent = words("none");
      throw new Error("no decoder: jsqr.js did not load");
    }
    decoderEl.textContent = detector ? "BarcodeDetector" : "jsQR";
  }

  /** Draw ``source`` scaled so its longest side is at most ``max``, and run jsQR on it. */
  function jsqrDecode(source, width, height, max, thorough) {
    var scale = Math.min(1, max / Math.max(width, height));
    var w = Math.max(1, Math.round(width * scale));
    var h = Math.max(1, Math.round(height * scale));
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    ctx.drawImage(source, 0, 0, w, h);
    var image = ctx.getImageData(0, 0, w, h);
    var code = window.jsQR(image.data, w, h, {
      inversionAttempts: thorough ? "attemptBoth" : "dontInvert",
    });
    return code ? code.data : null;
  }

  /** The text of the first QR code in ``source`` (a video or an ImageBitmap), or null. */
  async function decode(source, width, height, sizes, thorough) {
    if (detector) {
      try {
        var codes = await detector.detect(source);
        return codes.length ? codes[0].rawValue : null;
      } catch (e) {
        // A detector that fails at run time: jsQR from now on.
        detector = null;
        decoderEl.textContent = "jsQR";
      }
    }
    for (var i = 0; i < sizes.length; i++) {
      var text = jsqrDecode(source, width, height, sizes[i], thorough);
      if (text !== null) {
        return text;
      }
      if (sizes[i] >= Math.max(width, height)) {
        break; // already tried at full size
      }
    }
    return null;
  }

  function stopCamera() {
    clearTimeout(timer);
    if (stream) {
      stream.getTracks().forEach(function (track) {
        track.stop();
      });
      stream = null;
    }
    video.srcObject = null;
  }

  /** What to do with a decoded text; true when it names an identifier (navigating). */
  function found(text, fromCamera) {
    resultEl.textContent = text; // text, never markup
    var id = identifierOf(text);
    if (id) {
      done = true;
      say(words("found", { id: id }), "ok");
      stopCamera();
      var where = "./" + id + "?noredirect&lang=" + LANG;
      window.location.assign(new URL(where, window.location.href).href);
      return true;
    }
    if (text !== lastText || !fromCamera) {
      say(words("not_cityid") + (fromCamera ? " " + words("still") : ""), "bad");
    }
    lastText = text;
    return false;
  }

  async function tick() {
    if (done || !stream || busy) {
      return;
    }
    busy = true;
    try {
      if (video.readyState >= 2 && video.videoWidth > 0 && document.visibilityState !== "hidden") {
        var text = await decode(video, video.videoWidth, video.videoHeight, [VIDEO_MAX], false);
        if (text !== null && found(text, true)) {
          return;
        }
      }
    } catch (e) {
      say(words("decode_failed", { name: e.name, message: e.message }), "bad");
    } finally {
      busy = false;
    }
    if (!done && stream) {
      timer = setTimeout(tick, INTERVAL);
    }
  }

  function noCamera() {
    view.hidden = true;
    cameraButton.hidden = false;
  }

  async function startCamera() {
    cameraButton.hidden = true;
    view.hidden = false;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      view.hidden = true;
      say(words("no_media"), "bad");
      return;
    }
    say(words("starting"));
    // A permission prompt left unanswered keeps getUserMedia pending for good:
    // after a short wait, say what the page needs instead of "starting" forever.
    var waiting = setTimeout(function () {
      if (!stream && !done) {
        say(words("prompt"), "waiting");
      }
    }, PROMPT_WAIT);
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        video: { facingMode: "environment" },
        audio: false,
      });
      clearTimeout(waiting);
    } catch (e) {
      clearTimeout(waiting);
      stream = null;
      if (e.name === "NotAllowedError" || e.name === "SecurityError") {
        say(words("denied"), "bad");
      } else if (e.name === "NotFoundError" || e.name === "OverconstrainedError") {
        say(words("no_camera"), "bad");
      } else {
        say(words("not_started", { name: e.name }), "bad");
      }
      noCamera();
      return;
    }
    if (done) {
      stopCamera();
      return;
    }
    stream.getVideoTracks().forEach(function (track) {
      track.addEventListener("ended", function () {
        if (!done) {
          stopCamera();
          say(words("stopped"), "bad");
          noCamera();
        }
      });
    });
    video.srcObject = stream;
    try {
      await video.play();
    } catch (e) {
      // muted inline video may autoplay; if not, frames still arrive once shown
    }
    say(words("scanning"));
    timer = setTimeout(tick, INTERVAL);
  }

  async function decodePhoto() {
    var file = photo.files && photo.files[0];
    if (!file) {
      return;
    }
    await ready;
    say(words("reading"));
    var bitmap;
    try {
      bitmap = await createImageBitmap(file);
    } catch (e) {
      say(words("not_image"), "bad");
      return;
    }
    try {
      var text = await decode(bitmap, bitmap.width, bitmap.height, PHOTO_MAX, true);
      if (text === null) {
        say(words("no_code"), "bad");
      } else {
        found(text, false);
      }
    } finally {
      bitmap.close();
      photo.value = "";
    }
  }

  photo.addEventListener("change", function () {
    decodePhoto().catch(function (e) {
      say(words("photo_failed", { name: e.name, message: e.message }), "bad");
    });
  });
  cameraButton.addEventListener("click", function () {
    startCamera();
  });
  window.addEventListener("pagehide", stopCamera);
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) {
      // Back from a landing page (back/forward cache): scan again.
      done = false;
      lastText = null;
      startCamera();
    }
  });

  ready = chooseDecoder();
  ready.then(startCamera, function (e) {
    say(words("cannot_run", { message: e.message }), "bad");
  });
})();
