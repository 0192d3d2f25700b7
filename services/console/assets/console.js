// Live updates: the server-sent events of the page's stream (data-events on #live) say that
// something changed; the live part of the page is then fetched again (X-Fragment: 1) and
// swapped in when it differs. Everything works without this script, by reloading.
(() => {
  "use strict";
  // A notice ("Retried 2 jobs.") says what the last action did: shown once, it leaves the
  // address so that a reload or a live refresh does not repeat it.
  const here = new URL(location.href);
  if (here.searchParams.has("notice")) {
    here.searchParams.delete("notice");
    history.replaceState(history.state, "", here.pathname + here.search + here.hash);
  }
  const live = document.getElementById("live");
  const status = document.getElementById("live-status");
  if (!live || !live.dataset.events || !window.EventSource) return;
  let timer = null;
  let busy = false;
  let again = false;
  // Compared as the browser serialises them: the server's markup and the DOM's differ in
  // spelling (attribute quoting, entities) even when nothing changed, and a needless swap would
  // restart a playing video or audio.
  const parse = (html) => {
    const t = document.createElement("template");
    t.innerHTML = html;
    return t.innerHTML;
  };

  const say = (text, state) => {
    if (!status) return;
    status.textContent = text;
    status.dataset.state = state;
  };

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const response = await fetch(location.href, {
        headers: { "X-Fragment": "1" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (response.redirected || response.status === 401) { location.reload(); return; }
      if (response.ok) {
        const html = parse(await response.text());
        if (html !== live.innerHTML) {
          live.innerHTML = html;
          live.dataset.refreshed = String(Number(live.dataset.refreshed || "0") + 1);
        }
      }
    } catch (err) {
      say("Live updates paused: " + err.message, "down");
    } finally {
      busy = false;
      if (again) { again = false; schedule(); }
    }
  }

  function schedule() {
    if (timer) return;
    timer = setTimeout(() => { timer = null; refresh(); }, 200);
  }

  const events = new EventSource(live.dataset.events);
  events.addEventListener("ready", () => { say("Live", "live"); schedule(); });
  events.addEventListener("job", schedule);
  events.addEventListener("end", () => { events.close(); say("Finished", "ended"); schedule(); });
  events.addEventListener("error", (e) => {
    if (e.data) {
      try {
        const err = JSON.parse(e.data);
        say("Live updates stopped: " + err.code + " " + err.message, "down");
        if (err.code === "UNAUTHENTICATED") events.close();
        return;
      } catch (_) { /* a connection error, below */ }
    }
    if (events.readyState !== EventSource.CLOSED) say("Reconnecting…", "down");
  });
})();
