// The portal's page logic: reads the node's public, unsigned JSON endpoints and checks the
// log's proofs in the browser with rfc6962.js. Those endpoints give block headers, transaction
// ids and positions, never what a transaction does or who signed it (health metadata about
// pseudonymous patients, shown to consortium members only), and the page needs no more.
//
// Two rules keep the page honest:
// - Everything the node returns is rendered with textContent, never parsed as HTML, so no
//   server or ledger string can inject markup or script (the CSP forbids inline script too).
// - A proof is checked against roots the page already holds (from /v1/head and block headers
//   it fetched earlier) and against leaf hashes it computes itself (a transaction id is its
//   leaf hash), never only against what the same proof response claims. Where the page has to
//   fall back on a root from the response, it says so.

import { bytesToHex, hashingAvailable, hexToBytes, verifyConsistency, verifyInclusion } from "./rfc6962.js";

const REFRESH_MS = 5000;
const BLOCKS_SHOWN = 20;
// Blocks are immutable once finalized, so they are cached; the bound keeps a tab left open
// for days from growing without limit.
const BLOCK_CACHE_MAX = 200;
const HEX64 = /^[0-9a-f]{64}$/;
const DECIMAL = /^(0|[1-9][0-9]*)$/;

const state = {
  firstHead: null,
  lastHead: null,
  // log size (decimal string) -> { root (hex), source }: every root this page has seen, so that
  // later proofs are checked against roots obtained before them.
  roots: new Map(),
  blocks: new Map(),
  watch: { checks: 0, failed: [], from: null },
  shownBlock: null,
  timer: null,
  refreshing: false,
};

// ---- small helpers ----

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes, never HTML). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function setContent(target, ...children) {
  target.replaceChildren(...children.flat().filter((c) => c !== undefined && c !== null));
}

function short(hex) {
  return typeof hex === "string" && hex.length > 16 ? `${hex.slice(0, 8)}…${hex.slice(-6)}` : String(hex);
}

/** A hash shown shortened (full value in the title and in what Copy puts on the clipboard). */
function hashView(hex, { full = false } = {}) {
  const code = el("code", { class: full ? "hash break" : "hash", title: hex }, full ? hex : short(hex));
  const button = el("button", { type: "button", class: "copy", "aria-label": "Copy the full value" }, "Copy");
  button.addEventListener("click", () => copy(hex, button));
  return el("span", { class: "hash-wrap" }, code, button);
}

async function copy(text, button) {
  try {
    // The Clipboard API needs a secure context, as WebCrypto does.
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => {
    button.textContent = "Copy";
  }, 1500);
}

function utc(ms) {
  if (typeof ms !== "number") return "–";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "");
}

function age(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

function verdict(ok, text) {
  return el("span", { class: ok ? "badge good" : "badge bad" }, ok ? "✓ Verified" : "✗ Failed", " ", text);
}

function note(text, kind = "") {
  return el("p", { class: `notice ${kind}` }, text);
}

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** GET a JSON endpoint of this node; non-2xx answers become ApiError with the node's message. */
async function getJSON(path) {
  const response = await fetch(path, { headers: { accept: "application/json" }, cache: "no-store" });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body?.error?.message ?? `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message, body);
  }
  return body;
}

async function getText(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new ApiError(response.status, `${response.status} ${response.statusText}`);
  return response.text();
}

function errorText(e) {
  return e instanceof ApiError ? e.message : `the node could not be reached (${e.message})`;
}

// ---- roots the page has seen ----

/**
 * Remembers `root` for log `size`. A different root for a size already seen means the node
 * has shown two different logs: that is reported, never silently replaced.
 */
function rememberRoot(size, root, source) {
  const key = String(size);
  const known = state.roots.get(key);
  if (known && known.root !== root) {
    state.watch.failed.push(
      `log size ${key} has two roots: ${short(known.root)} (${known.source}) and ${short(root)} (${source})`,
    );
    renderWatch();
    return;
  }
  if (!known) state.roots.set(key, { root, source });
}

// ---- status and blocks ----

async function refresh() {
  clearTimeout(state.timer);
  // A refresh already under way reschedules itself when done.
  if (state.refreshing) return;
  state.refreshing = true;
  try {
    await refreshOnce();
    setContent($("connection"), `Connected · updated ${new Date().toLocaleTimeString()}`);
    $("connection").className = "connection";
  } catch (e) {
    setContent($("connection"), `Cannot read the node: ${errorText(e)}. Retrying.`);
    $("connection").className = "connection bad";
  } finally {
    state.refreshing = false;
  }
  state.timer = setTimeout(tick, REFRESH_MS);
}

function tick() {
  // A hidden tab does not poll; it catches up as soon as it is shown again.
  if (document.visibilityState === "visible") refresh();
  else state.timer = setTimeout(tick, REFRESH_MS);
}

async function refreshOnce() {
  const [health, head] = await Promise.all([healthOf(), getJSON("/v1/head")]);
  renderHealth(health);
  const previous = state.lastHead;
  state.lastHead = head;
  if (!state.firstHead) {
    state.firstHead = head;
    prefillConsistency(head);
  }
  rememberRoot(head.log_size, head.log_root, `/v1/head at height ${head.height}`);
  renderStatus(head);
  if (!previous || previous.height !== head.height) {
    await Promise.all([refreshBlocks(head), refreshCheckpoint()]);
  }
  if (previous && previous.log_size !== head.log_size) {
    await watchGrowth(previous, head);
  }
}

async function healthOf() {
  // 503 carries a JSON body too ({"status":"halted","reason"}), so read it either way.
  const response = await fetch("/v1/health", { cache: "no-store" });
  try {
    return await response.json();
  } catch {
    return { status: `HTTP ${response.status}` };
  }
}

function renderHealth(health) {
  if (health.status === "ok") {
    setContent($("health"), el("span", { class: "badge good" }, "● running"));
  } else {
    setContent($("health"), el("span", { class: "badge bad" }, `● ${health.status}`), " ", health.reason ?? "");
  }
}

function renderStatus(head) {
  setContent($("chain-id"), hashView(head.chain_id));
  setContent($("height"), String(head.height));
  setContent($("head-hash"), hashView(head.block_hash));
  setContent($("head-time"), `${utc(head.timestamp_ms)} UTC (${age(head.timestamp_ms)})`);
  setContent($("log-size"), `${head.log_size} transactions`);
  setContent($("log-root"), hashView(head.log_root));
}

async function fetchBlock(height) {
  const key = String(height);
  if (state.blocks.has(key)) return state.blocks.get(key);
  const block = await getJSON(`/v1/blocks/${key}`);
  state.blocks.set(key, block);
  rememberRoot(block.log_size, block.log_root, `header of block ${block.height}`);
  if (state.blocks.size > BLOCK_CACHE_MAX) {
    const oldest = [...state.blocks.keys()].map(Number).sort((a, b) => a - b)[0];
    state.blocks.delete(String(oldest));
  }
  return block;
}

async function refreshBlocks(head) {
  const heights = [];
  // Height 0 is the genesis anchor, which is not served as a block.
  for (let h = head.height; h >= 1 && heights.length < BLOCKS_SHOWN; h--) heights.push(h);
  const blocks = await Promise.all(heights.map((h) => fetchBlock(h).catch(() => null)));
  const rows = blocks.map((b, i) => blockRow(b, heights[i]));
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No blocks yet.")));
  // Re-rendering replaces the buttons; keyboard focus stays on the same block's button.
  const focused = document.activeElement?.closest?.("#blocks") ? document.activeElement.dataset.height : undefined;
  setContent($("blocks"), rows);
  if (focused) focusBlockButton(focused);
}

function focusBlockButton(height) {
  $("blocks").querySelector(`button[data-height="${CSS.escape(String(height))}"]`)?.focus();
}

function blockRow(block, height) {
  if (!block) {
    return el("tr", {}, el("td", {}, String(height)), el("td", { colspan: 5, class: "muted" }, "could not be read"));
  }
  const open = state.shownBlock === block.height;
  const button = el(
    "button",
    {
      type: "button",
      class: "link",
      "data-height": block.height,
      "aria-expanded": open ? "true" : "false",
      "aria-controls": "block-detail",
    },
    `#${block.height}`,
  );
  button.addEventListener("click", () => showBlock(block.height));
  return el(
    "tr",
    { class: open ? "selected" : undefined },
    el("td", {}, button),
    el("td", { class: "nowrap" }, utc(block.timestamp_ms)),
    el("td", { class: "num" }, String(block.tx_count)),
    el("td", { class: "num" }, String(block.log_size)),
    el("td", {}, el("code", { class: "hash", title: block.proposer }, short(block.proposer))),
    el("td", {}, el("code", { class: "hash", title: block.hash }, short(block.hash))),
  );
}

async function showBlock(height) {
  const detail = $("block-detail");
  state.shownBlock = height;
  detail.hidden = false;
  setContent(detail, note(`Loading block ${height}…`));
  let block;
  try {
    block = await fetchBlock(height);
  } catch (e) {
    setContent(detail, note(`Block ${height}: ${errorText(e)}`, "bad"));
    return;
  }
  if (state.lastHead) await refreshBlocks(state.lastHead);
  const first = block.log_size - block.transactions.length;
  const txRows = block.transactions.map((tx, i) =>
    el(
      "tr",
      {},
      el("td", { class: "num" }, String(i)),
      el("td", { class: "num" }, String(first + i)),
      el("td", {}, hashView(tx.tx_id)),
      el("td", {}, el(
          "button",
          { type: "button", "aria-label": `Prove transaction ${i} is in the log`, onclick: () => checkTx(tx.tx_id) },
          "Prove",
        )),
    ),
  );
  setContent(
    detail,
    el("h3", {}, `Block ${block.height}`),
    el(
      "dl",
      { class: "facts" },
      fact("Hash", hashView(block.hash)),
      fact("Parent", hashView(block.parent)),
      fact("Time", `${utc(block.timestamp_ms)} UTC`),
      fact("Proposer", hashView(block.proposer)),
      fact("Transactions root", hashView(block.txs_root)),
      fact("Log size after", String(block.log_size)),
      fact("Log root after", hashView(block.log_root)),
    ),
    block.transactions.length === 0
      ? note("This block has no transactions.")
      : el(
          "div",
          { class: "scroll" },
          el(
            "table",
            {},
            el("caption", { class: "visually-hidden" }, `Transactions of block ${block.height}`),
            el(
              "thead",
              {},
              el(
                "tr",
                {},
                ["#", "Log index", "Transaction id", ""].map((h) =>
                  el("th", { scope: "col" }, h),
                ),
              ),
            ),
            el("tbody", {}, txRows),
          ),
        ),
    block.transactions.length === 0 ? null : membersOnly(),
    el("button", { type: "button", class: "secondary", onclick: hideBlock }, "Close"),
  );
  detail.focus();
}

function hideBlock() {
  const shown = state.shownBlock;
  state.shownBlock = null;
  $("block-detail").hidden = true;
  if (state.lastHead) refreshBlocks(state.lastHead).then(() => focusBlockButton(shown));
}

/** Why the page shows ids and positions only. */
function membersOnly() {
  return el(
    "p",
    { class: "muted" },
    "What a transaction does and who signed it are shown to consortium members only: they describe pseudonymous patients' care. The id is all a proof needs.",
  );
}

function fact(label, ...values) {
  return el("div", {}, el("dt", {}, label), el("dd", {}, values));
}

// ---- transaction lookup and inclusion proof ----

async function checkTx(id) {
  $("tx-id").value = id;
  $("tx-title").scrollIntoView({ behavior: "smooth", block: "start" });
  await lookupTx();
}

async function lookupTx() {
  const out = $("tx-result");
  const id = $("tx-id").value.trim().toLowerCase();
  if (!HEX64.test(id)) {
    setContent(out, note("A transaction id is 64 hexadecimal characters (0-9, a-f).", "bad"));
    return;
  }
  setContent(out, note("Looking up…"));
  let tx;
  try {
    tx = await getJSON(`/v1/transactions/${id}`);
  } catch (e) {
    const unknown = e instanceof ApiError && e.status === 404 && e.body?.status === "unknown";
    setContent(out, note(unknown ? "This node does not know that transaction." : errorText(e), "bad"));
    return;
  }
  const facts = [fact("Status", tx.status)];
  if (tx.status !== "committed") {
    if (tx.reason) facts.push(fact("Reason", tx.reason));
    const extra =
      tx.status === "pending"
        ? note("Accepted but not yet in a finalized block; check again after the next block.")
        : note("Rejected transactions are not in the log, so there is nothing to prove.");
    setContent(out, el("dl", { class: "facts" }, facts), extra);
    return;
  }
  facts.push(
    fact("Block", String(tx.height)),
    fact("Position in block", String(tx.index)),
    fact("Log index", String(tx.log_index)),
  );
  const proofOut = el("div", {}, note("Checking the inclusion proof…"));
  setContent(out, el("dl", { class: "facts" }, facts), membersOnly(), proofOut);
  setContent(proofOut, await proveInclusion(id, tx.log_index));
}

async function proveInclusion(id, logIndex) {
  if (!hashingAvailable()) return insecureContext();
  let head;
  let proof;
  try {
    // A fresh head: the proof is fetched for exactly its log size, so the two agree even if
    // a block lands in between.
    head = await getJSON("/v1/head");
    rememberRoot(head.log_size, head.log_root, `/v1/head at height ${head.height}`);
    proof = await getJSON(`/v1/proofs/inclusion?index=${logIndex}&size=${head.log_size}`);
  } catch (e) {
    return note(`Could not fetch the proof: ${errorText(e)}`, "bad");
  }
  let result;
  try {
    // The leaf hash is the id the user asked about, not the proof's leaf_hash field: a node
    // answering with some other leaf must not make this check pass.
    result = await verifyInclusion(hexToBytes(id), logIndex, head.log_size, proof.proof.map(hexToBytes), hexToBytes(head.log_root));
  } catch (e) {
    return note(`The node's answer is malformed: ${e.message}`, "bad");
  }
  const explain = result.ok
    ? `Transaction ${short(id)} is entry ${logIndex} of the log of ${head.log_size} entries whose root /v1/head reports.`
    : `The proof does not connect this transaction to the published root: ${result.reason}.`;
  return el(
    "div",
    {},
    el("p", {}, verdict(result.ok, explain)),
    el(
      "dl",
      { class: "facts" },
      fact("Leaf hash (the transaction id)", hashView(id)),
      fact("Log size", String(head.log_size)),
      fact("Root from /v1/head", hashView(head.log_root)),
      fact("Root recomputed here", result.root ? hashView(bytesToHex(result.root)) : "–"),
      fact("Proof hashes", String(proof.proof.length)),
    ),
    el(
      "p",
      { class: "muted" },
      "This proves the transaction is in the log this node publishes. To know that everyone sees the same log, compare the root with another member's node or a signed checkpoint.",
    ),
  );
}

function insecureContext() {
  return note(
    "This browser offers no SHA-256 (WebCrypto) on this page because it is not served over https or from localhost, so proofs cannot be checked here. Open the portal on localhost or over https, or use `medledger prove`.",
    "bad",
  );
}

// ---- consistency ----

// From the size seen at page load to whatever the size is when the check runs (an empty "to").
function prefillConsistency(head) {
  $("from-size").value = String(head.log_size);
}

async function checkConsistency() {
  const out = $("consistency-result");
  const from = $("from-size").value.trim();
  let to = $("to-size").value.trim();
  if (to === "" && state.lastHead) to = String(state.lastHead.log_size);
  if (!DECIMAL.test(from) || !DECIMAL.test(to)) {
    setContent(out, note("Sizes are whole numbers of log entries, for example 10 and 18.", "bad"));
    return;
  }
  if (from === "0") {
    setContent(out, note("The empty log is consistent with everything; choose a size of at least 1.", "bad"));
    return;
  }
  if (!hashingAvailable()) {
    setContent(out, insecureContext());
    return;
  }
  setContent(out, note("Checking…"));
  let proof;
  try {
    proof = await getJSON(`/v1/proofs/consistency?from=${from}&to=${to}`);
  } catch (e) {
    setContent(out, note(`Could not fetch the proof: ${errorText(e)}`, "bad"));
    return;
  }
  // Prefer roots this page saw before asking for the proof; otherwise use the response's own
  // and say so, since a proof can then only show the node is consistent with itself.
  const held1 = state.roots.get(from);
  const held2 = state.roots.get(to);
  const root1 = held1 ? held1.root : proof.root_from;
  const root2 = held2 ? held2.root : proof.root_to;
  const problems = [];
  if (held1 && held1.root !== proof.root_from) problems.push(`the node now reports another root for size ${from}`);
  if (held2 && held2.root !== proof.root_to) problems.push(`the node now reports another root for size ${to}`);
  let result;
  try {
    result = await verifyConsistency(from, to, proof.proof.map(hexToBytes), hexToBytes(root1), hexToBytes(root2));
  } catch (e) {
    setContent(out, note(`The node's answer is malformed: ${e.message}`, "bad"));
    return;
  }
  const ok = result.ok && problems.length === 0;
  const explain = ok
    ? `The log at size ${to} extends the log at size ${from} without changing any of its first ${from} entries.`
    : [result.ok ? null : result.reason, ...problems].filter(Boolean).join("; ") + ".";
  if (!result.ok || problems.length) rememberFailure(`consistency ${from} → ${to}: ${explain}`);
  setContent(
    out,
    el("p", {}, verdict(ok, explain)),
    el(
      "dl",
      { class: "facts" },
      fact(`Root at size ${from}`, hashView(root1), sourceNote(held1)),
      fact(`Root at size ${to}`, hashView(root2), sourceNote(held2)),
      fact("Proof hashes", String(proof.proof.length)),
    ),
    ok && (!held1 || !held2)
      ? note(
          "At least one root came from the same response as the proof, so this shows the node is consistent with itself. To check it against the past, use sizes this page saw earlier (the size at page load, or a block's log size).",
        )
      : null,
  );
}

function sourceNote(held) {
  return el("span", { class: "muted" }, held ? ` seen earlier in ${held.source}` : " as reported in this proof response");
}

function rememberFailure(text) {
  state.watch.failed.push(text);
  renderWatch();
}

/** Each time the log grows, checks that the new head extends the previous one. */
async function watchGrowth(previous, head) {
  if (previous.log_size === 0 || !hashingAvailable()) return;
  if (head.log_size < previous.log_size) {
    rememberFailure(`the log shrank from ${previous.log_size} to ${head.log_size} entries`);
    return;
  }
  if (state.watch.from === null) state.watch.from = previous.log_size;
  try {
    const proof = await getJSON(`/v1/proofs/consistency?from=${previous.log_size}&to=${head.log_size}`);
    const result = await verifyConsistency(
      previous.log_size,
      head.log_size,
      proof.proof.map(hexToBytes),
      hexToBytes(previous.log_root),
      hexToBytes(head.log_root),
    );
    state.watch.checks += 1;
    if (!result.ok) rememberFailure(`log growth ${previous.log_size} → ${head.log_size}: ${result.reason}`);
  } catch (e) {
    // A transient network error proves nothing either way; the next growth is checked anew.
    if (!(e instanceof ApiError)) return;
    rememberFailure(`log growth ${previous.log_size} → ${head.log_size}: ${e.message}`);
  }
  renderWatch();
}

function renderWatch() {
  const out = $("watch");
  const { checks, failed, from } = state.watch;
  if (failed.length > 0) {
    setContent(out, el("span", { class: "badge bad" }, "✗ Problem"), " ", failed.join(" · "));
  } else if (checks > 0) {
    setContent(
      out,
      verdict(
        true,
        `append-only while this page was open: ${checks} growth${checks === 1 ? "" : "s"} of the log (from ${from} to ${state.lastHead.log_size} entries) each proven consistent with the one before.`,
      ),
    );
  }
}

// ---- checkpoint ----

async function refreshCheckpoint() {
  let text;
  let key;
  try {
    [text, key] = await Promise.all([getText("/v1/checkpoint"), getText("/v1/checkpoint/key")]);
  } catch {
    return;
  }
  setContent($("checkpoint"), text);
  setContent($("checkpoint-key"), key.trim());
  // Body lines: origin (the chain name), log size, base64 root (docs/format.md).
  const [origin, size, rootB64] = text.split("\n");
  setContent($("chain-name"), origin || "–");
  let rootHex;
  try {
    rootHex = bytesToHex(Uint8Array.from(atob(rootB64), (c) => c.charCodeAt(0)));
  } catch {
    setContent($("checkpoint-match"), el("span", { class: "badge bad" }, "✗ The checkpoint's root is not base64."));
    return;
  }
  rememberRoot(size, rootHex, "the signed checkpoint");
  const held = state.roots.get(size);
  if (held && held.root === rootHex) {
    setContent(
      $("checkpoint-match"),
      el("span", { class: "badge good" }, "✓ Matches"),
      ` the root this page saw for size ${size} (${held.source}).`,
    );
  }
}

// ---- start ----

function start() {
  $("tx-form").addEventListener("submit", (e) => {
    e.preventDefault();
    lookupTx();
  });
  $("consistency-form").addEventListener("submit", (e) => {
    e.preventDefault();
    checkConsistency();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") refresh();
  });
  // A link such as /#tx=<id> opens straight onto that transaction's proof.
  const fromHash = /^#tx=([0-9a-fA-F]{64})$/.exec(location.hash);
  refresh().then(() => {
    if (fromHash) checkTx(fromHash[1].toLowerCase());
  });
}

start();
