// The web chat's single page: a message list fed by Server-Sent Events and a command box. Text is always set
// with textContent, never as HTML, so nothing a user or a LoRA name contains can run in the page. The script and
// the style are served as files of their own (/app.js, /app.css), so the Content-Security-Policy can forbid every
// inline script and style.
export const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>AutoLoRA bot</title>
<link rel="stylesheet" href="/app.css">
</head>
<body>
<header><strong>AutoLoRA bot</strong><span id="me" data-testid="me"></span></header>
<main id="messages" data-testid="messages"></main>
<form id="form">
  <input id="input" data-testid="input" autocomplete="off" placeholder="/imagine a red hexagon with stripes  ·  /loras search:…  ·  /help" autofocus>
  <button type="submit">Send</button>
</form>
<script src="/app.js" defer></script>
</body>
</html>
`;

/** The page's look. */
export const STYLE = `body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #1e1f22; color: #dbdee1; }
header { padding: 10px 16px; background: #2b2d31; display: flex; justify-content: space-between; }
#messages { padding: 12px 16px 90px; }
.message { margin: 10px 0; padding: 8px 12px; border-radius: 8px; background: #2b2d31; max-width: 760px; }
.message.you { background: #35373c; }
.author { color: #949ba4; font-size: 12px; }
.text { white-space: pre-wrap; }
.error { color: #f38b8b; }
.ephemeral { border-left: 3px solid #5865f2; }
code { background: #1e1f22; padding: 0 4px; border-radius: 3px; font-size: 13px; }
img.grid { display: block; margin-top: 6px; width: 512px; max-width: 100%; image-rendering: pixelated; border-radius: 4px; }
img.preview { width: 128px; image-rendering: pixelated; display: block; margin-top: 4px; }
.actions button { margin: 6px 6px 0 0; background: #404249; color: #dbdee1; border: 0; border-radius: 4px; padding: 4px 10px; cursor: pointer; }
.actions button.danger { background: #6d2e30; }
form { position: fixed; bottom: 0; left: 0; right: 0; padding: 12px 16px; background: #2b2d31; display: flex; gap: 8px; }
input { flex: 1; padding: 10px; border-radius: 6px; border: 0; background: #383a40; color: #dbdee1; font-size: 15px; }
`;

/** The page's behaviour: render the stream's messages, send commands and button presses. */
export const SCRIPT = `const list = document.getElementById("messages");
const views = new Map();
const post = (path, body) => fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
/** Bold (double stars) and code (backticks) as elements, the rest as text nodes: no HTML from a message runs. */
const TICK = String.fromCharCode(96);
const MARKUP = new RegExp("([*][*][^*]+[*][*]|" + TICK + "[^" + TICK + "]+" + TICK + ")");
function rich(parent, text) {
  for (const part of text.split(MARKUP)) {
    if (part.startsWith("**") && part.endsWith("**") && part.length > 4) parent.appendChild(el("strong", "", part.slice(2, -2)));
    else if (part.startsWith(TICK) && part.endsWith(TICK) && part.length > 2) parent.appendChild(el("code", "", part.slice(1, -1)));
    else if (part) parent.appendChild(document.createTextNode(part));
  }
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
  view.dataset.running = message.running ? "true" : "false";
  view.classList.toggle("ephemeral", Boolean(message.ephemeral));
  const author = el("div", "author", message.author === "you" ? "you" : "bot" + (message.ephemeral ? " · only you can see this" : ""));
  view.appendChild(author);
  const text = el("div", message.error ? "text error" : "text");
  text.dataset.testid = "text";
  rich(text, message.text || "");
  view.appendChild(text);
  if (message.image) {
    const final = Boolean(message.buttons && message.buttons.length);
    const img = el("img", final || !message.image.startsWith("data:") ? "grid" : "preview");
    img.alt = "generated image";
    img.dataset.testid = final ? "grid" : message.image.startsWith("data:") ? "preview" : "image";
    img.src = message.image;
    view.appendChild(img);
  }
  for (const row of message.buttons || []) {
    const actions = el("div", "actions");
    for (const button of row) {
      const node = el("button", button.style === "danger" ? "danger" : "", button.label);
      node.dataset.testid = "button-" + button.label;
      node.onclick = () => post("/api/press", { message: message.id, button: button.id });
      actions.appendChild(node);
    }
    view.appendChild(actions);
  }
  if (message.running && !(message.buttons && message.buttons.length)) {
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
  if (!response.ok) render({ id: "local-" + Date.now(), author: "bot", text: (await response.json()).error, error: true });
};
`;
