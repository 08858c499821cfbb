// RFC 6962 / RFC 9162 Merkle proof verification for the portal, in the browser and in Node.
//
// Pure functions of their arguments: no network, no DOM, no state. Hashing goes through
// `globalThis.crypto.subtle` (WebCrypto), which browsers and Node 20 both provide, so the
// exact code the portal runs is the code `rfc6962.test.mjs` checks against the
// transparency-dev probes. Browsers only expose WebCrypto in a secure context (https, or
// http on localhost / 127.0.0.1); `hashingAvailable` lets the page say so instead of failing
// obscurely.
//
// Sizes and indices are uint64 in the log, beyond the 2^53 a JS number holds exactly, so all
// tree arithmetic is done on BigInt. Hashes are Uint8Arrays.
//
// Results are `{ ok: true, ... }` or `{ ok: false, reason }`: a proof that does not verify is
// an expected outcome the page displays, not an exception. Arguments of the wrong type are
// programming errors and throw TypeError.

const U64_MAX = (1n << 64n) - 1n;
const HASH_BYTES = 32;

/** Whether SHA-256 via WebCrypto is available here (not in an insecure browser context). */
export function hashingAvailable() {
  return Boolean(globalThis.crypto && globalThis.crypto.subtle);
}

async function sha256(bytes) {
  if (!hashingAvailable()) {
    throw new Error("WebCrypto is unavailable: open the portal over https or on localhost");
  }
  return new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", bytes));
}

function concat(prefix, ...parts) {
  const out = new Uint8Array(1 + parts.reduce((n, p) => n + p.length, 0));
  out[0] = prefix;
  let at = 1;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** RFC 6962 leaf hash: SHA-256(0x00 || data). */
export function leafHash(data) {
  return sha256(concat(0x00, bytes(data, "leaf data")));
}

/** RFC 6962 interior node hash: SHA-256(0x01 || left || right). */
export function nodeHash(left, right) {
  return sha256(concat(0x01, bytes(left, "left"), bytes(right, "right")));
}

function bytes(value, name) {
  if (!(value instanceof Uint8Array)) {
    throw new TypeError(`${name} must be a Uint8Array`);
  }
  return value;
}

/** A uint64 as BigInt from a BigInt, a safe-integer number or a canonical decimal string. */
export function toU64(value, name) {
  let v;
  if (typeof value === "bigint") {
    v = value;
  } else if (typeof value === "number" && Number.isSafeInteger(value)) {
    v = BigInt(value);
  } else if (typeof value === "string" && /^(0|[1-9][0-9]*)$/.test(value)) {
    v = BigInt(value);
  } else {
    throw new TypeError(`${name} must be a non-negative integer, got ${String(value)}`);
  }
  if (v < 0n || v > U64_MAX) {
    throw new TypeError(`${name} ${v} is outside uint64`);
  }
  return v;
}

function hashList(proof) {
  if (!Array.isArray(proof)) {
    throw new TypeError("proof must be an array of Uint8Array");
  }
  return proof.map((p, i) => bytes(p, `proof[${i}]`));
}

function isHash(h) {
  return h.length === HASH_BYTES;
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  // Everything compared here is public, so an early exit leaks nothing worth hiding.
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) return false;
  }
  return true;
}

function fail(reason) {
  return { ok: false, reason };
}

/**
 * Checks that `leafHash` is leaf `index` of the tree of `size` leaves whose root is `root`,
 * given the audit path `proof` (leaf side first). RFC 9162 §2.1.3.2.
 *
 * Resolves to `{ ok: true, root }` (the recomputed root) or `{ ok: false, reason, root? }`.
 */
export async function verifyInclusion(leaf, index, size, proof, root) {
  bytes(leaf, "leaf hash");
  bytes(root, "root");
  const path = hashList(proof);
  const idx = toU64(index, "index");
  const n = toU64(size, "size");
  if (idx >= n) return fail(`leaf index ${idx} is not below tree size ${n}`);
  if (!isHash(leaf)) return fail(`leaf hash is ${leaf.length} bytes, not ${HASH_BYTES}`);
  if (!isHash(root)) return fail(`root is ${root.length} bytes, not ${HASH_BYTES}`);
  if (!path.every(isHash)) return fail(`every proof hash must be ${HASH_BYTES} bytes`);

  // fn walks up from the leaf, sn from the last leaf; the path ends where they meet the root.
  let fn = idx;
  let sn = n - 1n;
  let r = leaf;
  for (const p of path) {
    if (sn === 0n) return fail(`proof has ${path.length} hashes, more than the tree needs`);
    if ((fn & 1n) === 1n || fn === sn) {
      // p is a left sibling, or fn is the last node of its level: p is whatever subtree sits
      // to the left, and levels where fn is a lone right-most child are skipped.
      r = await nodeHash(p, r);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) return fail(`proof has ${path.length} hashes, fewer than the tree needs`);
  if (!equal(r, root)) return { ok: false, reason: "recomputed root does not match", root: r };
  return { ok: true, root: r };
}

function isPowerOfTwo(v) {
  return v !== 0n && (v & (v - 1n)) === 0n;
}

/**
 * Checks that the tree of `size2` leaves with `root2` is an append-only extension of the tree
 * of `size1` leaves with `root1`. RFC 9162 §2.1.4.2. As in the reference implementation and
 * the project's Rust verifier, `size1 == 0` is refused (it proves nothing), and equal sizes
 * need an empty proof and byte-equal roots.
 *
 * Resolves to `{ ok: true }` or `{ ok: false, reason }`.
 */
export async function verifyConsistency(size1, size2, proof, root1, root2) {
  bytes(root1, "root1");
  bytes(root2, "root2");
  const path = hashList(proof);
  const m = toU64(size1, "size1");
  const n = toU64(size2, "size2");
  if (m === 0n) return fail("a consistency proof from the empty tree proves nothing");
  if (m > n) return fail(`size1 ${m} is larger than size2 ${n}`);
  if (m === n) {
    if (path.length !== 0) return fail("equal sizes need an empty proof");
    return equal(root1, root2) ? { ok: true } : fail("equal sizes but the roots differ");
  }
  if (path.length === 0) return fail("the proof is empty");
  if (!isHash(root1) || !isHash(root2)) return fail(`roots must be ${HASH_BYTES} bytes`);
  if (!path.every(isHash)) return fail(`every proof hash must be ${HASH_BYTES} bytes`);

  // When size1 is a power of two the old tree is a complete subtree of the new one; its root
  // is then the starting node, which the proof leaves out because the verifier holds it.
  const nodes = isPowerOfTwo(m) ? [root1, ...path] : path;
  let fn = m - 1n;
  let sn = n - 1n;
  // Skip the levels where the old tree's last node is a right child: they are inside the
  // subtree the first proof node already stands for.
  while ((fn & 1n) === 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  // fr rebuilds the old root, sr the new one, from the same starting node.
  let fr = nodes[0];
  let sr = nodes[0];
  for (const c of nodes.slice(1)) {
    if (sn === 0n) return fail(`proof has ${path.length} hashes, more than the trees need`);
    if ((fn & 1n) === 1n || fn === sn) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      // Only the new tree has this node to the right.
      sr = await nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) return fail(`proof has ${path.length} hashes, fewer than the trees need`);
  if (!equal(fr, root1)) return fail("the proof does not lead to the old root");
  if (!equal(sr, root2)) return fail("the proof does not lead to the new root");
  return { ok: true };
}

/** Lowercase hex (the API's encoding) to bytes; throws TypeError on anything else. */
export function hexToBytes(hex) {
  if (typeof hex !== "string" || hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new TypeError("expected an even number of hex digits");
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  }
  return out;
}

/** Bytes to lowercase hex. */
export function bytesToHex(b) {
  return Array.from(bytes(b, "bytes"), (x) => x.toString(16).padStart(2, "0")).join("");
}
