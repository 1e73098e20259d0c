/* kaizenlm feedback widget. Embed with:
 *   <script src="https://GATEWAY/widget.js"></script>
 *   <div id="fb"></div>
 *   <script>
 *     // turnId and feedbackToken come with each answer: the chat answer's `turn_id` and
 *     // `feedback_token` (or header X-Kaizen-Feedback-Token), or /v1/turns' `turn_ids` and
 *     // `feedback_tokens` when your server logs its own turns.
 *     const w = KaizenWidget.mount(document.getElementById("fb"),
 *                 {endpoint: "https://GATEWAY", apiKey: "WIDGET_KEY", turnId: "t-123", feedbackToken: "v1...."});
 *     // hooks for implicit signals, called by the host page (they reuse the mounted turn's token):
 *     KaizenWidget.signal("t-123", "copy");          // the user copied the answer
 *     KaizenWidget.signal("t-123", "regenerate");    // the user asked for another answer
 *     KaizenWidget.trackAbandon("c-1", "t-123");     // send 'abandon' on the last turn if the page closes
 *   </script>
 * Everything goes to POST /v1/feedback and /v1/signals with the public widget key (scope
 * `feedback`), which is useless without a turn's token: it cannot post turns, chat, or give
 * feedback on a turn its user was not served. userId is optional (the token names the user).
 */
(function (global) {
  "use strict";
  var config = { endpoint: "", apiKey: "" };
  var tokens = {};  // turnId -> {token, userId}: what proves the user was served that turn
  var scriptSrc = document.currentScript && document.currentScript.src;
  if (scriptSrc) { config.endpoint = scriptSrc.replace(/\/widget\.js.*$/, ""); }

  function post(path, body) {
    return fetch(config.endpoint + path, {
      method: "POST", keepalive: true,
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + config.apiKey },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().then(function (j) { if (!r.ok) { throw new Error(j.error || ("HTTP " + r.status)); } return j; });
    });
  }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text) { e.textContent = text; }
    return e;
  }

  function setToken(turnId, feedbackToken, userId) {
    tokens[turnId] = { token: feedbackToken, userId: userId || null };
  }

  function withToken(body, turnId) {
    var t = turnId && tokens[turnId];
    if (t && t.token) { body.feedback_token = t.token; }
    if (t && t.userId) { body.user_id = t.userId; }
    return body;
  }

  function mount(root, opts) {
    config.endpoint = opts.endpoint || config.endpoint;
    config.apiKey = opts.apiKey || config.apiKey;
    if (opts.feedbackToken || opts.userId) { setToken(opts.turnId, opts.feedbackToken, opts.userId); }
    var state = { thumbs: null, rating: null };
    var box = el("div", { "class": "kaizen-widget", "data-turn-id": opts.turnId });
    var up = el("button", { "type": "button", "class": "kz-up", "aria-label": "thumbs up" }, "\u{1F44D}");
    var down = el("button", { "type": "button", "class": "kz-down", "aria-label": "thumbs down" }, "\u{1F44E}");
    var stars = el("span", { "class": "kz-stars" });
    for (var i = 1; i <= 5; i++) {
      (function (n) {
        var s = el("button", { "type": "button", "class": "kz-star", "data-rating": String(n), "aria-label": n + " stars" }, "\u2606");
        s.addEventListener("click", function () {
          state.rating = n;
          Array.prototype.forEach.call(stars.children, function (c, j) { c.textContent = j < n ? "\u2605" : "\u2606"; });
        });
        stars.appendChild(s);
      })(i);
    }
    var comment = el("textarea", { "class": "kz-comment", "placeholder": "Comment (optional)", "maxlength": "4000" });
    var correction = el("textarea", { "class": "kz-correction", "placeholder": "What should the answer have been? (optional)" });
    var send = el("button", { "type": "button", "class": "kz-send" }, "Send feedback");
    var status = el("span", { "class": "kz-status", "role": "status" });
    up.addEventListener("click", function () { state.thumbs = 1; up.classList.add("kz-on"); down.classList.remove("kz-on"); });
    down.addEventListener("click", function () { state.thumbs = -1; down.classList.add("kz-on"); up.classList.remove("kz-on"); });
    send.addEventListener("click", function () {
      var body = withToken({ turn_id: opts.turnId }, opts.turnId);
      if (state.thumbs !== null) { body.thumbs = state.thumbs; }
      if (state.rating !== null) { body.rating = state.rating; }
      if (comment.value.trim()) { body.comment = comment.value.trim(); }
      if (correction.value.trim()) { body.correction = correction.value.trim(); }
      status.textContent = "sending\u2026";
      post("/v1/feedback", body).then(function (r) {
        status.textContent = "Thanks! (" + r.event_ids[0] + ")";
        box.setAttribute("data-sent", r.event_ids[0]);
      }).catch(function (e) { status.textContent = "Not sent: " + e.message; box.setAttribute("data-error", e.message); });
    });
    [up, down, stars, comment, correction, send, status].forEach(function (c) { box.appendChild(c); });
    root.appendChild(box);
    return { element: box, state: state };
  }

  function signal(turnId, kind, value, conversationId) {
    var body = withToken({ kind: kind }, turnId);
    if (turnId) { body.turn_id = turnId; }
    if (conversationId) { body.conversation_id = conversationId; }
    if (value !== undefined && value !== null) { body.value = value; }
    return post("/v1/signals", body);
  }

  // With the widget key a signal must name a turn (and carry its token): pass the
  // conversation's latest turn. A conversation-only signal needs a server key.
  function trackAbandon(conversationId, turnId) {
    var done = false;
    global.addEventListener("pagehide", function () {
      if (!done) { signal(turnId || null, "abandon", null, conversationId); }
    });
    return { completed: function () { done = true; return signal(turnId || null, "completed", null, conversationId); } };
  }

  global.KaizenWidget = { mount: mount, signal: signal, trackAbandon: trackAbandon, setToken: setToken, config: config };
})(window);
