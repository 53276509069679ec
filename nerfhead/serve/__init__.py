"""``nerfhead serve``: a trained speaker live in the browser (WebRTC), driven by a microphone,
a file, or audio pushed through an HTTP/WebSocket API. See docs/serve.md."""
