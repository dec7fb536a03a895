// Verification in the browser, trusting nothing the server says: RFC 6962 / RFC 9162 Merkle
// hashes and inclusion proofs (SHA-256), C2SP signed notes with Ed25519 signatures and C2SP
// verifier keys, C2SP tlog-checkpoint bodies. The same formats as
// xacthuc/domain/merkle.py and checkpoint.py, which `xacthuc audit verify` uses.

const encoder = new TextEncoder();
const SIG_PREFIX = "\u2014 "; // em dash, space
const ED25519 = 0x01;

export class VerifyError extends Error {
  constructor(code, detail = "") {
    super(detail ? `${code}: ${detail}` : code);
    this.code = code; // an i18n key: why it is not verified
  }
}

/** Strict, canonical standard base64 (padding required, no spaces). */
export function b64decode(text) {
  if (typeof text !== "string" || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) {
    throw new VerifyError("bad_base64");
  }
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  if (b64encode(out) !== text) throw new VerifyError("bad_base64");
  return out;
}

export function b64encode(bytes) {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

/** RFC 6962 leaf hash of a record's UTF-8 bytes: SHA-256(0x00 || record). */
export async function leafHash(recordText) {
  return sha256(concat(Uint8Array.of(0), encoder.encode(recordText)));
}

async function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(1), left, right));
}

/** RFC 9162 section 2.1.3.2: true when `proof` binds `leaf` at `index` to `root` of a tree
 * of `size` leaves. Sizes are below 2**53: plain arithmetic, not 32-bit bit operations. */
export async function verifyInclusion(leaf, index, size, proof, root) {
  if (!(Number.isSafeInteger(index) && Number.isSafeInteger(size) && index >= 0 && index < size)) {
    return false;
  }
  if (leaf.length !== 32 || root.length !== 32 || proof.some((p) => p.length !== 32)) return false;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0) return false; // too long
    if (fn % 2 === 1 || fn === sn) {
      r = await nodeHash(p, r);
      while (fn % 2 === 0 && fn !== 0) {
        fn = Math.floor(fn / 2);
        sn = Math.floor(sn / 2);
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 && equal(r, root);
}

function validName(name) {
  return name.length > 0 && !name.includes("+") && !/[\s\u0000-\u001f]/u.test(name);
}

async function keyId(name, publicKey) {
  const digest = await sha256(concat(encoder.encode(name + "\n"), Uint8Array.of(ED25519), publicKey));
  return digest.slice(0, 4);
}

/** A C2SP verifier key `<name>+<8 hex key id>+<base64(0x01 || Ed25519 key)>`, checked. */
export async function parseVerifierKey(vkey) {
  const text = (vkey || "").trim();
  const first = text.indexOf("+");
  const second = first < 0 ? -1 : text.indexOf("+", first + 1);
  if (second < 0) throw new VerifyError("bad_key");
  const name = text.slice(0, first);
  const id = text.slice(first + 1, second);
  if (!validName(name) || !/^[0-9a-f]{8}$/.test(id)) throw new VerifyError("bad_key");
  const raw = b64decode(text.slice(second + 1));
  if (raw.length !== 33 || raw[0] !== ED25519) throw new VerifyError("bad_key");
  const publicKey = raw.slice(1);
  if (hex(await keyId(name, publicKey)) !== id) throw new VerifyError("bad_key");
  return { name, id, publicKey };
}

/** Open a C2SP signed note with the key: its text when a signature by that key verifies;
 * signatures by other keys are ignored; a failing one by this key is an error. */
export async function openNote(note, key) {
  if (typeof note !== "string" || /[\u0000-\u0009\u000b-\u001f]/.test(note)) {
    throw new VerifyError("bad_note");
  }
  const split = note.lastIndexOf("\n\n");
  if (split < 0) throw new VerifyError("bad_note");
  const text = note.slice(0, split + 1);
  const sigs = note.slice(split + 2);
  if (!sigs || !sigs.endsWith("\n")) throw new VerifyError("bad_note");
  const wantId = await keyId(key.name, key.publicKey);
  const message = encoder.encode(text);
  const cryptoKey = await crypto.subtle.importKey("raw", key.publicKey, { name: "Ed25519" }, false, [
    "verify",
  ]);
  let verified = false;
  for (const line of sigs.slice(0, -1).split("\n")) {
    if (!line.startsWith(SIG_PREFIX)) throw new VerifyError("bad_note");
    const rest = line.slice(SIG_PREFIX.length);
    const space = rest.indexOf(" ");
    if (space <= 0) throw new VerifyError("bad_note");
    const name = rest.slice(0, space);
    const blob = b64decode(rest.slice(space + 1));
    if (blob.length < 5) throw new VerifyError("bad_note");
    if (name !== key.name || !equal(blob.slice(0, 4), wantId)) continue; // another key
    if (blob.length !== 68) throw new VerifyError("bad_signature");
    const ok = await crypto.subtle.verify({ name: "Ed25519" }, cryptoKey, blob.slice(4), message);
    if (!ok) throw new VerifyError("bad_signature");
    verified = true;
  }
  if (!verified) throw new VerifyError("no_signature");
  return text;
}

/** A C2SP tlog-checkpoint body: origin, tree size, base64 root hash, extension lines. */
export function parseCheckpoint(body) {
  if (!body.endsWith("\n")) throw new VerifyError("bad_checkpoint");
  const lines = body.slice(0, -1).split("\n");
  if (lines.length < 3) throw new VerifyError("bad_checkpoint");
  const [origin, sizeText, rootText] = lines;
  if (!/^(0|[1-9][0-9]*)$/.test(sizeText)) throw new VerifyError("bad_checkpoint");
  const size = Number(sizeText);
  if (!Number.isSafeInteger(size)) throw new VerifyError("bad_checkpoint");
  const root = b64decode(rootText);
  if (root.length !== 32) throw new VerifyError("bad_checkpoint");
  return { origin, size, root };
}

/** The checkpoint the signed note commits to, when it verifies with the pinned verifier key
 * and its origin is the key's log; throws VerifyError otherwise. */
export async function verifyCheckpoint(note, pinnedKey) {
  if (!pinnedKey) throw new VerifyError("no_key");
  const key = await parseVerifierKey(pinnedKey);
  const checkpoint = parseCheckpoint(await openNote(note, key));
  if (checkpoint.origin !== key.name) throw new VerifyError("wrong_origin", checkpoint.origin);
  return checkpoint;
}

/** Whether a record, as shown, is in the verified checkpoint's tree at its index. */
export async function verifyRecord(record, checkpoint) {
  if (!checkpoint || !Array.isArray(record.proof) || record.index >= checkpoint.size) return false;
  try {
    const proof = record.proof.map(b64decode);
    return await verifyInclusion(await leafHash(record.record), record.index, checkpoint.size, proof, checkpoint.root);
  } catch {
    return false;
  }
}

/** RFC 9162 section 2.1.4.2, as merkle.verify_consistency (stricter: size1 0 is refused):
 * true when the tree of `size2` leaves with `root2` extends the tree of `size1` with `root1`. */
export async function verifyConsistency(size1, size2, proof, root1, root2) {
  if (!(Number.isSafeInteger(size1) && Number.isSafeInteger(size2)) || size1 < 1 || size1 > size2) {
    return false;
  }
  if (root1.length !== 32 || root2.length !== 32 || proof.some((p) => p.length !== 32)) return false;
  if (size1 === size2) return proof.length === 0 && equal(root1, root2);
  if (proof.length === 0) return false;
  const path = [...proof];
  if (Number.isInteger(Math.log2(size1))) path.unshift(root1); // the old root is a node
  let fn = size1 - 1;
  let sn = size2 - 1;
  while (fn % 2 === 1) {
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0) return false; // too long
    if (fn % 2 === 1 || fn === sn) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      while (fn % 2 === 0 && fn !== 0) {
        fn = Math.floor(fn / 2);
        sn = Math.floor(sn / 2);
      }
    } else {
      sr = await nodeHash(sr, c);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 && equal(fr, root1) && equal(sr, root2);
}
