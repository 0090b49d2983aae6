// The web chat's single page: a message list fed by Server-Sent Events and a command box. Text is always set
// with textContent, never as HTML, so nothing a user or a LoRA name contains can run in the page.
export const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>AutoLoRA bot</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #1e1f22; color: #dbdee1; }
  header { padding: 10px 16px; background: #2b2d31; display: flex; justify-content: space-between; }
  #messages { padding: 12px 16px 90px; }
  .message { margin: 10px 0; padding: 8px 12px; border-radius: 8px; background: #2b2d31; max-width: 760px; }
  .message.you { background: #35373c; }
  .author { font-weight: 600; margin-right: 6px; }
  .status { color: #949ba4; font-style: italic; }
  .error { color: #f38b8b; }
  .loras { color: #b5bac1; font-size: 13px; margin-top: 4px; }
  img.grid { display: block; margin-top: 6px; width: 512px; max-width: 100%; image-rendering: pixelated; border-radius: 4px; }
  img.preview { width: 128px; image-rendering: pixelated; display: block; margin-top: 4px; }
  .actions button { margin: 6px 6px 0 0; background: #404249; color: #dbdee1; border: 0; border-radius: 4px; padding: 4px 10px; cursor: pointer; }
  .actions button.chosen { background: #5865f2; }
  form { position: fixed; bottom: 0; left: 0; right: 0; padding: 12px 16px; background: #2b2d31; display: flex; gap: 8px; }
  input { flex: 1; padding: 10px; border-radius: 6px; border: 0; background: #383a40; color: #dbdee1; font-size: 15px; }
</style>
</head>
<body>
<header><strong>AutoLoRA bot</strong><span id="me" data-testid="me"></span></header>
<main id="messages" data-testid="messages"></main>
<form id="form">
  <input id="input" data-testid="input" autocomplete="off" placeholder="/imagine a red hexagon with stripes  ·  /loras …  ·  /help" autofocus>
  <button type="submit">Send</button>
</form>
<script>
const list = document.getElementById("messages");
const views = new Map();
const post = (path, body) => fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
function render(message) {
  let view = views.get(message.id);
  if (!view) {
    view = el("div", "message " + message.author);
    view.dataset.testid = "message";
    views.set(message.id, view);
    list.appendChild(view);
  }
  view.replaceChildren();
  view.dataset.done = message.done ? "true" : "false";
  const line = el("div");
  line.appendChild(el("span", "author", message.author === "you" ? "you" : "bot"));
  if (message.text) line.appendChild(el("span", "text", message.text));
  view.appendChild(line);
  if (message.status) view.appendChild(el("div", "status", message.status));
  if (message.error) view.appendChild(el("div", "error", message.error));
  if (message.preview) { const img = el("img", "preview"); img.src = "data:image/png;base64," + message.preview; view.appendChild(img); }
  if (message.loras && message.loras.length) {
    const loras = el("div", "loras", "LoRAs: " + message.loras.map((l) => l.name + " (" + l.similarity.toFixed(2) + ")").join(", "));
    loras.dataset.testid = "loras";
    view.appendChild(loras);
  }
  if (message.images) {
    const img = el("img", "grid");
    img.alt = message.text || "generated image";
    img.dataset.testid = "grid";
    img.src = message.images.webp;
    view.appendChild(img);
    const actions = el("div", "actions");
    for (const [label, value] of [["👍", 1], ["👎", -1]]) {
      const button = el("button", "", label);
      button.dataset.testid = value > 0 ? "rate-up" : "rate-down";
      button.onclick = async () => {
        const response = await post("/api/rate", { generation: message.generation, value });
        if (response.ok) { actions.querySelectorAll("button").forEach((b) => b.classList.remove("chosen")); button.classList.add("chosen"); }
      };
      actions.appendChild(button);
    }
    const png = el("a", "", "PNG"); png.href = message.images.grid; png.target = "_blank";
    actions.appendChild(png);
    view.appendChild(actions);
  } else if (!message.done && message.author === "bot") {
    const actions = el("div", "actions");
    const cancel = el("button", "", "cancel");
    cancel.onclick = () => post("/api/cancel", { message: message.id });
    actions.appendChild(cancel);
    view.appendChild(actions);
  }
  window.scrollTo(0, document.body.scrollHeight);
}
const events = new EventSource("/api/events");
events.onmessage = (event) => render(JSON.parse(event.data));
events.addEventListener("me", (event) => {
  const me = JSON.parse(event.data);
  document.getElementById("me").textContent = me.name + (me.admin ? " (admin)" : "");
});
document.getElementById("form").onsubmit = async (event) => {
  event.preventDefault();
  const input = document.getElementById("input");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  const response = await post("/api/command", { text });
  if (!response.ok) render({ id: "local-" + Date.now(), author: "bot", error: (await response.json()).error, done: true });
};
</script>
</body>
</html>
`;
