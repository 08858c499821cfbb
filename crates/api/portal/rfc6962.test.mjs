// Checks the portal's rfc6962.js, the very file the browser loads, against the project's
// RFC 6962 vectors (testdata/vectors/merkle, the same files crates/merkle/tests/vectors.rs
// reads) and against an independent recursive construction of proofs for every index and
// size of small trees.
//
// Run: node crates/api/portal/rfc6962.test.mjs [testdata/vectors]
//      node crates/api/portal/rfc6962.test.mjs --api FILE
// The second form checks proofs a real node served (JSON collected by crates/api/tests/portal.rs:
// its blocks, and inclusion and consistency proof responses) the way the portal does: leaves
// are the transaction ids, roots come from the block headers, never from the proof responses.
// Driven by crates/api/tests/portal.rs. Exits non-zero, naming each failure, if anything
// disagrees; prints one summary line otherwise.

import { readFileSync, readdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import {
  bytesToHex,
  hashingAvailable,
  hexToBytes,
  leafHash,
  nodeHash,
  verifyConsistency,
  verifyInclusion,
} from "./rfc6962.js";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const apiFile = args[0] === "--api" ? args[1] : null;
const vectors = (apiFile ? null : args[0]) ?? join(here, "../../../testdata/vectors");
const failures = [];
const counts = {};

function count(name) {
  counts[name] = (counts[name] ?? 0) + 1;
}

function check(cond, what) {
  if (!cond) failures.push(what);
}

function jsonFiles(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...jsonFiles(p));
    else if (name.endsWith(".json")) out.push(p);
  }
  return out.sort();
}

// Probe sizes and indices reach 2^64 - 1, which JSON.parse would round to a double: quote
// them first so they reach toU64 as exact decimal strings.
function readProbe(file) {
  const text = readFileSync(file, "utf8").replace(/"(leafIdx|treeSize|size1|size2)"\s*:\s*([0-9]+)/g, '"$1": "$2"');
  return JSON.parse(text);
}

// Go's encoder omits zero values: a missing hash is empty, a missing size is zero.
const b64 = (v) => (v == null ? new Uint8Array() : new Uint8Array(Buffer.from(v, "base64")));
const b64List = (v) => (v == null ? [] : v.map(b64));
const int = (v) => (v == null ? "0" : v);

async function inclusionProbes() {
  const files = jsonFiles(join(vectors, "merkle/testdata/inclusion"));
  check(files.length >= 90, `expected the full inclusion probe set, found ${files.length}`);
  for (const file of files) {
    const p = readProbe(file);
    const got = await verifyInclusion(b64(p.leafHash), int(p.leafIdx), int(p.treeSize), b64List(p.proof), b64(p.root));
    check(got.ok === !p.wantErr, `${file} (${p.desc}): wantErr ${p.wantErr}, got ${JSON.stringify(got.reason ?? "ok")}`);
    count(p.wantErr ? "inclusion refused" : "inclusion verified");
  }
}

async function consistencyProbes() {
  const files = jsonFiles(join(vectors, "merkle/testdata/consistency"));
  check(files.length >= 90, `expected the full consistency probe set, found ${files.length}`);
  for (const file of files) {
    const p = readProbe(file);
    const got = await verifyConsistency(int(p.size1), int(p.size2), b64List(p.proof), b64(p.root1), b64(p.root2));
    check(got.ok === !p.wantErr, `${file} (${p.desc}): wantErr ${p.wantErr}, got ${JSON.stringify(got.reason ?? "ok")}`);
    count(p.wantErr ? "consistency refused" : "consistency verified");
  }
}

async function knownAnswers() {
  const ka = JSON.parse(readFileSync(join(vectors, "merkle/known_answers.json"), "utf8"));
  const leaves = await Promise.all(ka.leaf_inputs.map((h) => leafHash(hexToBytes(h))));
  for (const p of ka.inclusion_proofs) {
    const got = await verifyInclusion(
      leaves[p.index],
      p.index,
      p.size,
      p.proof.map(hexToBytes),
      hexToBytes(ka.roots[p.size]),
    );
    check(got.ok, `known answer inclusion ${p.index}/${p.size}: ${got.reason}`);
    count("known answers");
  }
  for (const p of ka.consistency_proofs) {
    const got = await verifyConsistency(
      p.size1,
      p.size2,
      p.proof.map(hexToBytes),
      hexToBytes(ka.roots[p.size1]),
      hexToBytes(ka.roots[p.size2]),
    );
    check(got.ok, `known answer consistency ${p.size1}->${p.size2}: ${got.reason}`);
    count("known answers");
  }
  for (const h of ka.hasher) {
    if (h.leaf_data_utf8 !== undefined) {
      const got = bytesToHex(await leafHash(new TextEncoder().encode(h.leaf_data_utf8)));
      check(got === h.leaf_hash, `known answer leaf hash of ${JSON.stringify(h.leaf_data_utf8)}: ${got}`);
      count("known answers");
    }
  }
}

// ---- independent reference: RFC 6962 §2.1 recursive definitions over a leaf list ----

// Largest power of two strictly below n (n > 1).
function split(n) {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

async function mth(leaves) {
  if (leaves.length === 1) return leaves[0];
  const k = split(leaves.length);
  return nodeHash(await mth(leaves.slice(0, k)), await mth(leaves.slice(k)));
}

async function path(m, leaves) {
  if (leaves.length === 1) return [];
  const k = split(leaves.length);
  if (m < k) return [...(await path(m, leaves.slice(0, k))), await mth(leaves.slice(k))];
  return [...(await path(m - k, leaves.slice(k))), await mth(leaves.slice(0, k))];
}

async function subproof(m, leaves, complete) {
  const n = leaves.length;
  if (m === n) return complete ? [] : [await mth(leaves)];
  const k = split(n);
  if (m <= k) return [...(await subproof(m, leaves.slice(0, k), complete)), await mth(leaves.slice(k))];
  return [...(await subproof(m - k, leaves.slice(k), false)), await mth(leaves.slice(0, k))];
}

function flipped(proof, i) {
  return proof.map((h, j) => {
    if (j !== i) return h;
    const c = new Uint8Array(h);
    c[0] ^= 1;
    return c;
  });
}

// Every index of every size up to MAX, and every pair of sizes, must verify; each proof with
// one hash altered, dropped or added, or checked against a wrong leaf, index or root, must
// not. (A wrong size alone is no negative: a proof need not pin the size it was made for.)
async function exhaustive() {
  const MAX = 33;
  const leaves = [];
  for (let i = 0; i < MAX; i++) leaves.push(await leafHash(new TextEncoder().encode(`leaf ${i}`)));
  const roots = [null];
  for (let n = 1; n <= MAX; n++) roots.push(await mth(leaves.slice(0, n)));
  const extra = await leafHash(new Uint8Array([0xff]));

  for (let n = 1; n <= MAX; n++) {
    for (let m = 0; m < n; m++) {
      const proof = await path(m, leaves.slice(0, n));
      const ok = await verifyInclusion(leaves[m], m, n, proof, roots[n]);
      check(ok.ok, `inclusion ${m}/${n}: ${ok.reason}`);
      count("exhaustive verified");
      const bad = [
        ["other leaf", () => verifyInclusion(leaves[(m + 1) % n], m, n, proof, roots[n]), n > 1],
        ["index + 1", () => verifyInclusion(leaves[m], m + 1, n, proof, roots[n]), true],
        ["the previous root", () => verifyInclusion(leaves[m], m, n, proof, roots[n - 1]), n > 1],
        ["extra hash", () => verifyInclusion(leaves[m], m, n, [...proof, extra], roots[n]), true],
        ["hash dropped", () => verifyInclusion(leaves[m], m, n, proof.slice(1), roots[n]), proof.length > 0],
        ...proof.map((_, i) => [`hash ${i} altered`, () => verifyInclusion(leaves[m], m, n, flipped(proof, i), roots[n]), true]),
      ];
      for (const [what, result, applies] of bad) {
        if (!applies) continue;
        check(!(await result()).ok, `inclusion ${m}/${n} with ${what} verified`);
        count("exhaustive refused");
      }
    }
    for (let m = 1; m <= n; m++) {
      const proof = await subproof(m, leaves.slice(0, n), true);
      const ok = await verifyConsistency(m, n, proof, roots[m], roots[n]);
      check(ok.ok, `consistency ${m}->${n}: ${ok.reason}`);
      count("exhaustive verified");
      const bad = [
        ["swapped roots", () => verifyConsistency(m, n, proof, roots[n], roots[m]), m !== n],
        ["extra hash", () => verifyConsistency(m, n, [...proof, extra], roots[m], roots[n]), true],
        ["hash dropped", () => verifyConsistency(m, n, proof.slice(1), roots[m], roots[n]), proof.length > 0],
        ["another old root", () => verifyConsistency(m, n, proof, roots[m - 1], roots[n]), m > 1],
        ["another new root", () => verifyConsistency(m, n, proof, roots[m], roots[n - 1]), n - 1 > m],
        ...proof.map((_, i) => [`hash ${i} altered`, () => verifyConsistency(m, n, flipped(proof, i), roots[m], roots[n]), true]),
      ];
      for (const [what, result, applies] of bad) {
        if (!applies) continue;
        check(!(await result()).ok, `consistency ${m}->${n} with ${what} verified`);
        count("exhaustive refused");
      }
    }
  }
}

// Indices and sizes beyond 2^53 stay exact: a proof for the last leaf of a 2^60-leaf tree
// whose right-most path is known.
async function bigSizes() {
  const size = 1n << 60n;
  let r = await leafHash(new Uint8Array([1]));
  const leaf = r;
  const proof = [];
  for (let i = 0; i < 60; i++) {
    const sibling = await leafHash(new Uint8Array([2, i]));
    proof.push(sibling);
    r = await nodeHash(sibling, r);
  }
  const ok = await verifyInclusion(leaf, size - 1n, size, proof, r);
  check(ok.ok, `inclusion of the last leaf of 2^60: ${ok.reason}`);
  const off = await verifyInclusion(leaf, size - 2n, size, proof, r);
  check(!off.ok, "inclusion at 2^60 - 2 with the proof for 2^60 - 1 verified");
  count("big sizes");
}

async function apiProofs(file) {
  const served = JSON.parse(readFileSync(file, "utf8"));
  const leaves = served.blocks.flatMap((b) => b.transactions.map((tx) => tx.tx_id));
  const roots = new Map(served.blocks.map((b) => [b.log_size, b.log_root]));
  check(leaves.length === served.blocks.at(-1).log_size, "the blocks' transactions do not add up to the log size");
  for (const p of served.inclusion) {
    const root = roots.get(p.size);
    check(p.root === root, `inclusion ${p.index}/${p.size}: response root differs from the block header's`);
    const got = await verifyInclusion(hexToBytes(leaves[p.index]), p.index, p.size, p.proof.map(hexToBytes), hexToBytes(root));
    check(got.ok, `served inclusion ${p.index}/${p.size}: ${got.reason}`);
    count("served inclusion verified");
  }
  for (const p of served.consistency) {
    const [r1, r2] = [roots.get(p.from), roots.get(p.to)];
    check(p.root_from === r1 && p.root_to === r2, `consistency ${p.from}->${p.to}: response roots differ from headers`);
    const got = await verifyConsistency(p.from, p.to, p.proof.map(hexToBytes), hexToBytes(r1), hexToBytes(r2));
    check(got.ok, `served consistency ${p.from}->${p.to}: ${got.reason}`);
    count("served consistency verified");
  }
  check(served.inclusion.length > 0 && served.consistency.length > 0, "no served proofs to check");
}

if (!hashingAvailable()) {
  console.error("globalThis.crypto.subtle is missing: Node 20 or newer is needed");
  process.exit(2);
}
if (apiFile) {
  await apiProofs(apiFile);
} else {
  await inclusionProbes();
  await consistencyProbes();
  await knownAnswers();
  await exhaustive();
  await bigSizes();
}

if (failures.length > 0) {
  for (const f of failures) console.error(`FAIL ${f}`);
  console.error(`${failures.length} failure(s)`);
  process.exit(1);
}
console.log(
  `rfc6962.js OK: ${Object.entries(counts)
    .map(([k, v]) => `${v} ${k}`)
    .join(", ")}`,
);
