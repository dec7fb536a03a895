// The compliance console: sign-in, pages, and the verdict of the browser's own checks.

import { ApiError, getBlob, getJson, session } from "./api.js";
import { barChart, lineChart } from "./charts.js";
import { clear, h } from "./dom.js";
import { addDays, dateTime, dayStart, has, language, number, setLanguage, t, vnDay } from "./i18n.js";
import { VerifyError, b64decode, b64encode, verifyCheckpoint, verifyConsistency, verifyRecord } from "./verify.js";

const root = document.getElementById("app");
let me = null; // the session: platform, key id, server time, origin

// ------------------------------------------------------------------------------ helpers

function errorText(e) {
  if (e instanceof ApiError) {
    const key = `err_${e.reason}`;
    return has(key) ? t(key, { message: e.message }) : t("err_other", { message: e.message });
  }
  return t("err_other", { message: String(e.message || e) });
}

function showError(target, e) {
  target.append(h("p", { class: "error", role: "alert", "data-error": e.reason || "" }, errorText(e)));
}

function today() {
  return vnDay(me ? new Date(me.now) : new Date());
}

/** A period picker (Vietnamese calendar days, the end day included) that calls `load`. */
function periodForm(fromDay, toDay, load) {
  const from = h("input", { type: "date", name: "from", value: fromDay, required: true });
  const to = h("input", { type: "date", name: "to", value: toDay, required: true });
  const form = h(
    "form",
    { class: "period" },
    h("label", {}, t("from"), from),
    h("label", {}, t("to"), to),
    h("button", { type: "submit" }, t("apply")),
  );
  const run = () => load({ from: dayStart(from.value), to: dayStart(addDays(to.value, 1)), days: [from.value, to.value] });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
  return { form, run };
}

function daysBetween(first, last) {
  const days = [];
  for (let d = first; d <= last; d = addDays(d, 1)) days.push(d);
  return days;
}

function code(text) {
  return h("code", {}, text);
}

/** A message whose `backquoted` parts are commands or names: shown as code. */
function rich(text) {
  return text.split("`").map((part, i) => (i % 2 ? code(part) : part));
}

// --------------------------------------------------------------------------- verdicts

function reasonOf(e) {
  if (e instanceof VerifyError) return t(`why_${e.code}`);
  return t("why_no_crypto");
}

// The last checkpoint this browser verified, per log: a later one must extend it.
const SEEN = "xacthuc.seen:";

/** Whether `checkpoint` extends the last one verified here (RFC 9162 consistency proof);
 * remembers it when it does. Throws VerifyError("rollback" | "fork") when it does not. */
async function consistentWithSeen(checkpoint) {
  const key = SEEN + checkpoint.origin;
  const seen = JSON.parse(localStorage.getItem(key) || "null");
  if (seen) {
    const root = b64decode(seen.root);
    if (checkpoint.size < seen.size) throw new VerifyError("rollback");
    let ok;
    if (checkpoint.size === seen.size) {
      ok = await verifyConsistency(seen.size, checkpoint.size, [], root, checkpoint.root);
    } else {
      const { proof } = await getJson("consistency", { from_size: seen.size, to_size: checkpoint.size });
      ok = await verifyConsistency(seen.size, checkpoint.size, proof.map(b64decode), root, checkpoint.root);
    }
    if (!ok) throw new VerifyError("fork");
  }
  if (checkpoint.size > 0 && (!seen || checkpoint.size > seen.size)) {
    localStorage.setItem(key, JSON.stringify({ size: checkpoint.size, root: b64encode(checkpoint.root), at: new Date().toISOString() }));
  }
  return seen && seen.size > 0 ? seen : null;
}

/** Fetch the latest checkpoint and verify it in this browser: its signature by the pinned
 * key, and that it extends the last checkpoint verified here. */
async function checkedCheckpoint() {
  const served = await getJson("checkpoint");
  try {
    const checkpoint = await verifyCheckpoint(served.note, session.pinned());
    const seen = await consistentWithSeen(checkpoint);
    return { served, checkpoint, seen, why: "" };
  } catch (e) {
    if (e instanceof ApiError) throw e;
    return { served, checkpoint: null, seen: null, why: reasonOf(e) };
  }
}

function verdict(state, text) {
  return h("p", { class: `verdict ${state}`, id: "verdict", "data-state": state, role: "status" }, text);
}

function badge(state) {
  return h("span", { class: `badge ${state}`, "data-state": state }, t(state === "verified" ? "verified" : state === "pending" ? "pending" : "not_verified"));
}

// ------------------------------------------------------------------------------ pages

async function overview(main) {
  main.append(h("h1", {}, t("overview_title")));
  const out = h("div", { id: "overview" });
  const last = today();
  const { form, run } = periodForm(addDays(last, -29), last, async (period) => {
    clear(out).append(h("p", { class: "muted" }, t("loading")));
    try {
      const report = await getJson("report", { from: period.from, to: period.to });
      clear(out);
      renderReport(out, report, daysBetween(...period.days));
    } catch (e) {
      clear(out);
      showError(out, e);
    }
  });
  main.append(form, h("p", { class: "note" }, rich(t("server_counts_note"))), out);
  run();
}

function label(key) {
  return has(`count:${key}`) ? t(`count:${key}`) : key;
}

function renderReport(out, report, days) {
  const counts = report.counts;
  const headline = ["method:phone_otp", "method:personal_id", "guardian_managed", "commercial_livestream", "lockouts", "account_locks", "event:code_send_failed", "attestations"];
  out.append(
    h(
      "div",
      { class: "cards" },
      headline.map((key) =>
        h("div", { class: "card" }, h("span", { class: "figure", "data-count": key, "data-value": counts[key] || 0 }, number(counts[key] || 0)), h("span", { class: "label" }, label(key))),
      ),
    ),
  );
  const perDay = Object.fromEntries(report.days.map((d) => [d.day, d.counts]));
  const series = (key) => ({ label: label(key), values: days.map((d) => (perDay[d] || {})[key] || 0) });
  out.append(
    h(
      "div",
      { class: "charts" },
      barChart(t("chart_methods"), days, [series("method:phone_otp"), series("method:personal_id")]),
      barChart(t("chart_guardian"), days, [series("guardian_managed"), series("commercial_livestream")]),
      barChart(t("chart_locks"), days, [series("lockouts"), series("account_locks")]),
      barChart(t("chart_sms"), days, [series("event:code_send_failed")]),
    ),
  );
  const rows = Object.keys(counts).sort().map((key) =>
    h("tr", {}, h("th", { scope: "row" }, label(key), key !== label(key) ? h("small", {}, ` ${key}`) : null), h("td", { "data-key": key, "data-value": counts[key] }, number(counts[key]))),
  );
  out.append(
    h("h2", {}, t("all_counts")),
    h("table", { class: "counts" }, h("thead", {}, h("tr", {}, h("th", {}, t("key")), h("th", {}, t("count")))), h("tbody", {}, rows)),
  );
}

async function agingOut(main) {
  main.append(h("h1", {}, t("aging_title")), h("p", { class: "note" }, rich(t("aging_note"))));
  const out = h("div", { id: "aging" });
  const first = today();
  const { form, run } = periodForm(first, addDays(first, 30), async (period) => {
    clear(out).append(h("p", { class: "muted" }, t("loading")));
    const ids = [];
    try {
      let token = "";
      do {
        const page = await getJson("aging-out", { from: period.from, to: period.to, page_size: 1000, page_token: token });
        ids.push(...page.account_ids);
        token = page.next_page_token;
      } while (token && ids.length < 10000);
      clear(out).append(
        h("p", { class: "figure-line" }, h("span", { "data-count": "aging_out", "data-value": ids.length }, t("aging_count", { n: number(ids.length) }))),
        h("ul", { class: "accounts" }, ids.map((id) => h("li", {}, h("a", { href: `#/account/${encodeURIComponent(id)}` }, id)))),
      );
    } catch (e) {
      clear(out);
      showError(out, e);
    }
  });
  main.append(form, out);
  run();
}

async function account(main, id) {
  main.append(h("h1", {}, t("account_title")));
  const input = h("input", { name: "account", value: id || "", required: true, maxlength: 128, spellcheck: "false" });
  const form = h("form", { class: "period" }, h("label", {}, t("account_id"), input), h("button", { type: "submit" }, t("show")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/account/${encodeURIComponent(input.value.trim())}`;
  });
  const out = h("div", { id: "history" });
  main.append(form, out);
  if (!id) return;
  out.append(h("p", { class: "muted" }, t("loading")));
  try {
    const { checkpoint, why } = await checkedCheckpoint();
    const size = checkpoint ? checkpoint.size : 0;
    const records = [];
    let token = "";
    do {
      const page = await getJson("records", { account: id, tree_size: size || "", page_size: 200, page_token: token });
      records.push(...page.records);
      token = page.next_page_token;
    } while (token && records.length < 5000);
    clear(out);
    await renderRecords(out, records, checkpoint, why);
  } catch (e) {
    clear(out);
    showError(out, e);
  }
}

async function renderRecords(out, records, checkpoint, why) {
  const states = [];
  for (const r of records) {
    if (!checkpoint) states.push("not-verified");
    else if (r.index >= checkpoint.size) states.push("pending");
    else states.push((await verifyRecord(r, checkpoint)) ? "verified" : "not-verified");
  }
  const bad = states.filter((x) => x === "not-verified").length;
  const pending = states.filter((x) => x === "pending").length;
  if (!checkpoint) out.append(verdict("not-verified", t("verdict_bad", { why })));
  else if (bad) out.append(verdict("not-verified", t("verdict_bad_records", { bad, n: records.length })));
  else out.append(verdict("verified", t("verdict_ok", { size: number(checkpoint.size), n: records.length - pending })));
  if (checkpoint && pending) out.append(h("p", { class: "note" }, t("verdict_pending", { n: pending })));
  if (!records.length) {
    out.append(h("p", {}, t("no_records")));
    return;
  }
  const rows = records.map((r, i) => {
    let fields = {};
    try {
      fields = JSON.parse(r.record);
    } catch {
      fields = {};
    }
    return h(
      "tr",
      { "data-index": r.index, "data-state": states[i] },
      h("td", { class: "num" }, String(r.index)),
      h("td", {}, fields.time ? dateTime(fields.time) : ""),
      h("td", {}, code(fields.event || "")),
      h("td", {}, fields.outcome || ""),
      h("td", {}, fields.reason || ""),
      h("td", {}, badge(states[i])),
      h(
        "td",
        {},
        h(
          "details",
          {},
          h("summary", {}, t("record")),
          h("pre", { class: "record" }, r.record),
          h("p", {}, t("proof"), ` (${(r.proof || []).length})`),
          h("ol", { class: "proof" }, (r.proof || []).map((p) => h("li", {}, code(p)))),
        ),
      ),
    );
  });
  out.append(
    h(
      "table",
      { class: "records" },
      h("thead", {}, h("tr", {}, ["index", "time", "event", "outcome", "reason", "state", "record"].map((k) => h("th", {}, t(k))))),
      h("tbody", {}, rows),
    ),
  );
}

async function logPage(main) {
  main.append(h("h1", {}, t("log_title")));
  const head = h("div", { id: "checkpoint" }, h("p", { class: "muted" }, t("loading")));
  const out = h("div", { id: "log" });
  const last = today();
  const { form, run } = periodForm(addDays(last, -29), last, async (period) => {
    clear(out);
    try {
      const history = await getJson("log", { from: period.from, to: period.to });
      const days = daysBetween(...period.days);
      const byDay = Object.fromEntries(history.days.map((d) => [d.day, d.tree_size]));
      let carry = 0;
      const sizes = days.map((d) => (carry = byDay[d] ?? carry));
      out.append(
        h("p", { class: "figure-line" }, t("log_size"), ": ", h("strong", { "data-count": "log_size", "data-value": history.log_size }, number(history.log_size))),
        ...(history.problem ? [h("p", { class: "error" }, t("problem", { problem: history.problem }))] : []),
        lineChart(t("chart_tree"), days, t("tree_size"), sizes),
      );
    } catch (e) {
      showError(out, e);
    }
  });
  main.append(head, form, out);
  try {
    const { served, checkpoint, seen, why } = await checkedCheckpoint();
    const pinned = session.pinned();
    // What the verified note says; the server's own fields only when it did not verify.
    const shown = checkpoint
      ? { origin: checkpoint.origin, size: checkpoint.size, root: b64encode(checkpoint.root) }
      : { origin: served.origin, size: served.tree_size, root: served.root_hash };
    clear(head).append(
      checkpoint
        ? verdict("verified", t("verdict_ok_cp", { size: number(checkpoint.size) }))
        : verdict("not-verified", t("verdict_bad", { why })),
      ...(checkpoint && seen ? [h("p", { class: "note", id: "consistency" }, t("consistent_with", { size: number(seen.size), at: dateTime(seen.at) }))] : []),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, t("origin")),
        h("dd", {}, code(shown.origin)),
        h("dt", {}, t("tree_size")),
        h("dd", { "data-count": "tree_size", "data-value": shown.size }, number(shown.size)),
        h("dt", {}, t("root_hash")),
        h("dd", {}, code(shown.root)),
        h("dt", {}, t("signed_at")),
        h("dd", {}, dateTime(served.signed_at)),
        h("dt", {}, t("pinned_key")),
        h("dd", {}, code(pinned || "—")),
        h("dt", {}, t("server_key")),
        h("dd", {}, code(served.verifier_key), " ", h("small", {}, served.verifier_key === pinned ? t("keys_match") : t("keys_differ"))),
      ),
      h("h2", {}, t("signature")),
      h("pre", { class: "note-text", id: "note" }, served.note),
    );
  } catch (e) {
    clear(head);
    showError(head, e);
  }
  run();
}

function download(blob, name) {
  const link = h("a", { href: URL.createObjectURL(blob), download: name, class: "hidden" });
  document.body.append(link);
  link.click();
  setTimeout(() => {
    URL.revokeObjectURL(link.href);
    link.remove();
  }, 0);
}

async function exportPage(main) {
  main.append(h("h1", {}, t("export_title")), h("p", { class: "note" }, rich(t("export_note"))));
  const status = h("div", { id: "export-status" });
  const last = today();
  const { form } = periodForm(addDays(last, -6), last, async (period) => {
    clear(status);
    try {
      const { blob, range } = await getBlob("export", { from: period.from, to: period.to });
      download(blob, `audit-${me.platform}-${period.days[0]}-${period.days[1]}.jsonl`);
      status.append(h("p", { "data-range": range }, t("exported", { range })));
    } catch (e) {
      showError(status, e);
    }
  });
  form.querySelector("button").textContent = t("export_period");
  const all = h("button", { type: "button", id: "export-all" }, t("export_all"));
  all.addEventListener("click", async () => {
    clear(status);
    try {
      const { blob, range } = await getBlob("export", {});
      download(blob, `audit-${me.platform}-all.jsonl`);
      status.append(h("p", { "data-range": range }, t("exported", { range })));
    } catch (e) {
      showError(status, e);
    }
  });
  const note = h("button", { type: "button", id: "export-checkpoint" }, t("export_checkpoint"));
  note.addEventListener("click", async () => {
    clear(status);
    try {
      const served = await getJson("checkpoint");
      download(new Blob([served.note], { type: "text/plain" }), `checkpoint-${me.platform}-${served.tree_size}.txt`);
    } catch (e) {
      showError(status, e);
    }
  });
  main.append(form, h("p", { class: "actions" }, all, " ", note), status);
}

// ------------------------------------------------------------------------ frame, sign-in

const PAGES = {
  overview: ["nav_overview", overview],
  aging: ["nav_aging", agingOut],
  account: ["nav_account", account],
  log: ["nav_log", logPage],
  export: ["nav_export", exportPage],
};

function langButton() {
  const button = h("button", { type: "button", class: "lang", id: "lang" }, t("lang_switch"));
  button.addEventListener("click", () => {
    setLanguage(language() === "vi" ? "en" : "vi");
    render();
  });
  return button;
}

function signIn(error) {
  document.title = t("title");
  const key = h("input", { type: "password", name: "api-key", id: "api-key", autocomplete: "off", required: true, spellcheck: "false" });
  const vkey = h("input", { type: "text", name: "verifier-key", id: "verifier-key", value: session.pinned(), spellcheck: "false" });
  const message = h("div", { id: "sign-in-error" });
  if (error) showError(message, error);
  const form = h(
    "form",
    { class: "sign-in", id: "sign-in" },
    h("label", {}, t("api_key"), key, h("small", {}, t("api_key_hint"))),
    h("label", {}, t("vkey"), vkey, h("small", {}, rich(t("vkey_hint")))),
    h("button", { type: "submit" }, t("sign_in")),
    message,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(message);
    try {
      me = await getJson("session", {}, key.value.trim());
      session.setKey(key.value.trim());
      if (vkey.value.trim()) session.pin(vkey.value);
      if (!location.hash || location.hash === "#/") location.hash = "#/overview";
      render();
    } catch (e) {
      session.clear();
      showError(message, e);
    }
  });
  clear(root).append(h("header", { class: "top" }, h("span", { class: "brand" }, t("title")), langButton()), h("main", {}, form));
}

async function render() {
  document.documentElement.lang = language();
  if (!session.key()) return signIn();
  if (!me) {
    try {
      me = await getJson("session");
    } catch (e) {
      session.clear();
      return signIn(e);
    }
  }
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const page = PAGES[name] ? name : "overview";
  document.title = `${t(PAGES[page][0])} · ${t("title")}`;
  const out = h("button", { type: "button", id: "sign-out" }, t("sign_out"));
  out.addEventListener("click", () => {
    session.clear();
    me = null;
    location.hash = "";
    render();
  });
  const nav = h(
    "nav",
    {},
    Object.entries(PAGES).map(([key, [label]]) => h("a", { href: `#/${key}`, class: key === page ? "current" : null, "aria-current": key === page ? "page" : null }, t(label))),
  );
  const main = h("main", { "data-page": page });
  clear(root).append(
    h("header", { class: "top" }, h("span", { class: "brand" }, t("title")), h("span", { class: "who" }, t("signed_in_as", { platform: me.platform, key: me.key_id })), langButton(), out),
    nav,
    main,
  );
  await PAGES[page][1](main, decodeURIComponent(rest.join("/")));
  main.setAttribute("data-ready", "true");
}

window.addEventListener("hashchange", () => render());
render();
