// detente console: live regions over server-sent events, countdowns, the alarm sound.
// No framework, no other host: this file and the page's own HTML are all there is.
"use strict";

(function () {
  const regions = () => Array.from(document.querySelectorAll("[data-live]"));
  const seenAlarms = new Set();
  let firstAlarmLoad = true;
  let refreshing = null;

  function alarmIds() {
    return Array.from(document.querySelectorAll("#alarm [data-alarm-id]")).map(
      (e) => e.getAttribute("data-alarm-id"));
  }

  // The alarm's volume is this browser's choice (the settings page), 0 to 1.
  const VOLUME_KEY = "detente-volume";
  function volume() {
    const v = Number(localStorage.getItem(VOLUME_KEY));
    return localStorage.getItem(VOLUME_KEY) === null || !(v >= 0 && v <= 1) ? 1 : v;
  }

  function soundAlarm() {
    const audio = document.getElementById("alarm-sound");
    if (audio) audio.volume = volume();
    const count = Number(document.body.getAttribute("data-alarm-sounded") || "0") + 1;
    document.body.setAttribute("data-alarm-sounded", String(count));
    if (audio) {
      audio.currentTime = 0;
      const played = audio.play();
      if (played && played.catch) {
        played.catch(() => {
          // Browsers refuse sound before the operator has touched the page: say so, and
          // offer a button (a click is the gesture that allows it).
          const note = document.getElementById("sound-blocked");
          if (note) note.hidden = false;
        });
      }
    }
  }

  // FLASH takeover: the sound repeats every ALARM_REPEAT_MS while a received FLASH is
  // unanswered, unless the operator silenced it (an audited request); the silenced ids
  // outlive a reload of the tab.
  const ALARM_REPEAT_MS = 5000;
  const SILENCED_KEY = "detente-silenced";
  const baseTitle = document.title;

  function silenced() {
    try { return new Set(JSON.parse(sessionStorage.getItem(SILENCED_KEY) || "[]")); }
    catch (e) { return new Set(); }
  }

  function flashIds() {
    return Array.from(document.querySelectorAll("#alarm [data-flash-id]")).map(
      (e) => e.getAttribute("data-flash-id"));
  }

  function loudFlashes() {
    const quiet = silenced();
    return flashIds().filter((id) => !quiet.has(id));
  }

  function repeatSound() {
    if (loudFlashes().length > 0) soundAlarm();
  }

  function showSilenced() {
    const loud = loudFlashes().length > 0;
    for (const note of document.querySelectorAll("#alarm .silenced-note")) note.hidden = loud;
    document.body.setAttribute("data-silenced", loud ? "no" : "yes");
  }

  // The tab title carries the count of standing alarms, so a FLASH shows in another tab.
  function badge() {
    // One per alarm: a FLASH is both in the takeover and in the banner's list.
    const n = document.querySelectorAll("#alarm [data-alarm-id]").length;
    document.title = n > 0 ? "(" + n + ") ⚠ " + baseTitle : baseTitle;
  }

  async function silence(form) {
    const ids = (form.querySelector("input[name=ids]") || {}).value || "";
    const response = await fetch(form.action, {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "X-Requested-With": "fetch" },
      body: new URLSearchParams(new FormData(form)),
    });
    if (!response.ok) return;
    const quiet = silenced();
    for (const id of ids.split(",")) if (id) quiet.add(id);
    sessionStorage.setItem(SILENCED_KEY, JSON.stringify(Array.from(quiet)));
    const audio = document.getElementById("alarm-sound");
    if (audio) audio.pause();
    showSilenced();
  }

  // A desktop notification for each new alarm, where the operator allowed them (the
  // settings page asks, on a click): a FLASH shows even when the browser is hidden.
  function notifyDesktop(id) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    const item = document.querySelector('#alarm [data-alarm-id="' + CSS.escape(id) + '"]');
    const body = item ? item.textContent.replace(/\s+/g, " ").trim() : "";
    try {
      new Notification(baseTitle, { body: body, tag: id, requireInteraction: true });
      document.body.setAttribute("data-notified", id);
    } catch (e) { /* a browser that only notifies from a service worker */ }
  }

  function checkAlarms() {
    let fresh = false;
    for (const id of alarmIds()) {
      if (!seenAlarms.has(id)) {
        seenAlarms.add(id);
        fresh = true;
        notifyDesktop(id);
      }
    }
    // An alarm already standing when the page opens sounds too: it is unanswered.
    if (fresh) soundAlarm();
    firstAlarmLoad = false;
  }

  async function refresh(region) {
    const url = region.getAttribute("data-live");
    try {
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401 || response.redirected) {
        window.location.assign("/login");
        return;
      }
      if (!response.ok) return;
      const html = await response.text();
      // Keep focus where the operator was when the region is replaced.
      const focused = document.activeElement && region.contains(document.activeElement)
        ? document.activeElement.id : null;
      region.innerHTML = html;
      if (focused) {
        const again = document.getElementById(focused);
        if (again) again.focus();
      }
      region.setAttribute("data-refreshed", String(Date.now()));
    } catch (e) {
      document.body.classList.add("offline");
    }
  }

  // An event that arrives while a refresh is under way may not be in what that refresh
  // fetched: remember it and refresh once more afterwards, so the last event is never
  // dropped (however many arrive meanwhile, one more refresh covers them all).
  let again = false;
  async function refreshAll() {
    if (refreshing) {
      again = true;
      return refreshing;
    }
    refreshing = (async () => {
      do {
        again = false;
        await Promise.all(regions().map(refresh));
        checkAlarms();
        showSilenced();
        badge();
        tick();
        document.body.setAttribute("data-updates", String(
          Number(document.body.getAttribute("data-updates") || "0") + 1));
      } while (again);
    })();
    try { await refreshing; } finally { refreshing = null; }
  }

  // Units in the page's language (the server puts them on <body>), as the server writes them.
  function units() {
    const u = (document.body.getAttribute("data-duration-units") || "h|m|s").split("|");
    return u.length === 3 ? u : ["h", "m", "s"];
  }

  function format(ms) {
    const s = Math.floor(Math.max(0, ms) / 1000);
    const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, r = s % 60;
    const two = (n) => String(n).padStart(2, "0");
    const [uh, um, us] = units();
    if (h > 0) return h + uh + " " + two(m) + um + " " + two(r) + us;
    if (m > 0) return m + um + " " + two(r) + us;
    return r + us;
  }

  let crossed = false;
  function tick() {
    const now = Date.now();
    for (const e of document.querySelectorAll("[data-deadline]")) {
      const due = Number(e.getAttribute("data-deadline"));
      const left = due - now;
      const template = left >= 0 ? e.getAttribute("data-due-in") : e.getAttribute("data-overdue-by");
      if (template) e.textContent = template.replace("{}", format(Math.abs(left)));
      // Crossed here, in this tab (not already past when the server rendered it).
      if (left < 0 && !e.hasAttribute("data-passed")) {
        e.setAttribute("data-passed", "yes");
        e.parentElement.classList.add("overdue");
        crossed = true;
      }
    }
    if (crossed) {
      // A deadline just passed: the server decides the alarm; ask it.
      crossed = false;
      refreshAll();
    }
  }

  // The browser reconnects a closed stream by itself after the server's `retry:`; it gives
  // up only when an answer is not an event stream (the session ended: the page's regions
  // then lead to the login page) or the server is unreachable. Then this tries again, with
  // a growing pause, so that an alarm banner never goes silent for good.
  const RECONNECT_MS_MAX = 30000;
  let reconnectMs = 1000;
  function connect() {
    // Only a signed-in page (it carries its CSRF token) has anything live.
    if (!window.EventSource || !document.querySelector("meta[name=csrf-token]")) return;
    const source = new EventSource("/console/events");
    source.addEventListener("change", () => refreshAll());
    source.addEventListener("busy", () => document.body.setAttribute("data-live-busy", "yes"));
    source.addEventListener("hello", () => {
      reconnectMs = 1000;
      document.body.removeAttribute("data-live-busy");
      document.body.classList.remove("offline");
      document.body.setAttribute("data-live-connected", "yes");
      // Anything missed while disconnected.
      refreshAll();
    });
    source.addEventListener("error", () => {
      document.body.classList.add("offline");
      if (source.readyState === EventSource.CLOSED) {
        refreshAll();
        setTimeout(connect, reconnectMs);
        reconnectMs = Math.min(reconnectMs * 2, RECONNECT_MS_MAX);
      }
    });
  }

  function polls() {
    for (const region of regions()) {
      const ms = Number(region.getAttribute("data-refresh-ms") || "0") ||
        Number(region.getAttribute("data-refresh-s") || "0") * 1000;
      if (ms > 0) setInterval(() => refresh(region), ms);
    }
  }

  // The settings page: alarm volume, a sound test, desktop notifications.
  function settings() {
    const range = document.getElementById("volume");
    if (range) {
      range.value = String(Math.round(volume() * 100));
      range.addEventListener("input", () => {
        localStorage.setItem(VOLUME_KEY, String(Number(range.value) / 100));
      });
    }
    const test = document.getElementById("sound-test");
    if (test) {
      test.addEventListener("click", () => {
        const audio = document.getElementById("alarm-sound");
        if (!audio) return;
        audio.volume = volume();
        audio.currentTime = 0;
        audio.play().catch(() => {});
        document.body.setAttribute("data-sound-tested", String(audio.volume));
      });
    }
    const state = document.getElementById("notify-state");
    const show = () => {
      if (!state) return;
      const now = "Notification" in window ? Notification.permission : "unsupported";
      state.textContent = state.getAttribute("data-" + now) || now;
      state.setAttribute("data-state", now);
    };
    const ask = document.getElementById("notify-enable");
    if (ask) {
      ask.addEventListener("click", async () => {
        if ("Notification" in window) await Notification.requestPermission();
        show();
      });
    }
    show();
  }

  // Date-time pickers are in the node's time zone (data-tz), whatever the browser's: beside
  // each, the picked time as UTC, as the node will send it. The node resolves a wall time
  // that a clock change skips or repeats with the offset before the change; so does this.
  function zoneOffsetMs(tz, utcMs) {
    const parts = new Intl.DateTimeFormat("en-US", {
      timeZone: tz, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    }).formatToParts(new Date(utcMs));
    const n = (type) => Number(parts.find((p) => p.type === type).value);
    return Date.UTC(n("year"), n("month") - 1, n("day"), n("hour"), n("minute"), n("second"))
      - utcMs;
  }

  function localToUtc(value, tz) {
    const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/.exec(value);
    if (!m) return null;
    const wall = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0));
    const DAY_MS = 86400000;
    const before = zoneOffsetMs(tz, wall - DAY_MS);
    const after = zoneOffsetMs(tz, wall + DAY_MS);
    const fits = [wall - before, wall - after].filter((t) => zoneOffsetMs(tz, t) === wall - t);
    return fits.length ? Math.min(...fits) : wall - before;
  }

  function echoUtc(input) {
    const out = document.getElementById(input.getAttribute("data-utc-echo"));
    if (!out) return;
    let utc = null;
    try { utc = input.value ? localToUtc(input.value, input.getAttribute("data-tz")) : null; }
    catch (e) { utc = null; }
    out.textContent = utc === null
      ? "" : "= " + new Date(utc).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }

  function utcEchoes() {
    for (const input of document.querySelectorAll("input[data-utc-echo]")) {
      input.addEventListener("input", () => echoUtc(input));
      input.addEventListener("change", () => echoUtc(input));
      echoUtc(input);
    }
  }

  // The compose map (console/map.rs): a click places the chosen geo field's point, its
  // circle's centre or its polygon's next corner, with the projection the server drew the
  // map in (its view box and data-k, the east-west squeeze); the map is redrawn by the
  // server as the fields change, one request at a time, the last change always drawn.
  const MAP_REDRAW_MS = 250;
  function degreesText(v) {
    return String(Number(v.toFixed(3)));
  }

  function mapClickPosition(svg, event) {
    const ctm = svg.getScreenCTM();
    if (!ctm) return null;
    const p = new DOMPoint(event.clientX, event.clientY).matrixTransform(ctm.inverse());
    const k = Number(svg.getAttribute("data-k")) || 1;
    const lon = ((((p.x / k - 180) + 180) % 360) + 360) % 360 - 180;
    const lat = Math.max(-90, Math.min(90, 90 - p.y));
    return { lat: degreesText(lat), lon: degreesText(lon) };
  }

  function placed(field, at, radiusKm) {
    const point = at.lat + "," + at.lon;
    if (field.getAttribute("data-geo") === "geo-point") return point;
    const value = field.value.trim();
    const circle = /^circle:\s*[^,]*,[^,]*,(.+)$/.exec(value);
    if (circle) return "circle:" + point + "," + circle[1].trim();
    if (/^polygon:/.test(value)) {
      const corners = value.slice("polygon:".length).trim();
      return "polygon:" + (corners ? corners + ";" : "") + point;
    }
    return "circle:" + point + "," + radiusKm;
  }

  function mapPicker() {
    const live = document.getElementById("compose-map-live");
    const target = document.getElementById("map-target");
    if (!live || !target) return;
    for (const hidden of document.querySelectorAll(".map-pick, #map-pick-hint")) {
      hidden.hidden = false;
    }
    let drawing = false;
    let pending = false;
    let timer = null;
    async function redraw() {
      if (drawing) { pending = true; return; }
      drawing = true;
      const query = new URLSearchParams({ format: live.getAttribute("data-format") });
      for (const field of document.querySelectorAll("[data-geo]")) {
        query.append(field.name, field.value);
      }
      try {
        const response = await fetch(live.getAttribute("data-src") + "?" + query,
          { credentials: "same-origin", cache: "no-store" });
        if (response.ok && !response.redirected) {
          live.innerHTML = await response.text();
          live.setAttribute("data-drawn", String(Date.now()));
        }
      } catch (e) {
        document.body.classList.add("offline");
      }
      drawing = false;
      if (pending) { pending = false; redraw(); }
    }
    function soon() {
      clearTimeout(timer);
      timer = setTimeout(redraw, MAP_REDRAW_MS);
    }
    for (const field of document.querySelectorAll("[data-geo]")) {
      field.addEventListener("input", soon);
    }
    // The geo field typed in last is the one a click places, unless another is chosen.
    document.addEventListener("focusin", (event) => {
      const id = event.target && event.target.id;
      if (event.target.hasAttribute && event.target.hasAttribute("data-geo")) target.value = id;
    });
    live.addEventListener("click", (event) => {
      const svg = live.querySelector("svg.map");
      const field = document.getElementById(target.value);
      const at = svg && field && mapClickPosition(svg, event);
      if (!at) return;
      field.value = placed(field, at, live.getAttribute("data-radius-km"));
      redraw();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    settings();
    utcEchoes();
    mapPicker();
    const enable = document.getElementById("enable-sound");
    if (enable) {
      enable.addEventListener("click", () => {
        const audio = document.getElementById("alarm-sound");
        if (audio) audio.play().then(() => {
          document.getElementById("sound-blocked").hidden = true;
        }).catch(() => {});
      });
    }
    // The silence form is replaced with its region on every refresh: listen on the page.
    document.addEventListener("submit", (event) => {
      const form = event.target;
      if (form && form.classList && form.classList.contains("silence")) {
        event.preventDefault();
        silence(form);
      }
    });
    connect();
    polls();
    setInterval(tick, 1000);
    setInterval(repeatSound, ALARM_REPEAT_MS);
  });
})();
