// RFC 9421 signing and verifying with an independent Node implementation, the npm
// package `http-message-signatures` (its `httpbis` module), for
// tests/test_rfc9421_interop.py.
//
// Run as `node rfc9421.js` with NODE_PATH pointing at the node_modules directory
// where the tests installed the package (tests/interop/peers.py).  Each line of
// standard input is one job in JSON; each job gets one line of JSON on standard
// output, in order, so that one process serves a whole test module.  A job that
// fails gives {"error": "..."}.
//
// Messages:
//   request:  {"method", "url", "headers": [[name, value], ...], "body_b64"?}
//   response: {"status", "headers": [...], "request": <request>}
// Keys: {"alg": "hmac-sha256", "keyid", "secret_b64"} or {"alg": "ed25519", "keyid", "pem"}
// (a private key to sign, a public key to verify).
//
// Jobs:
//   {"op": "sign", "message", "key", "label", "components": [id, ...],
//    "params": {"created", "expires", "nonce", "keyid", "alg", "tag"}} (those given)
//     -> {"content_digest"?, "signature_input", "signature", "base"}: a request
//        with a body gets a Content-Digest (sha-256, RFC 9530) first; then the two
//        header values and the signature base the package signed.
//   {"op": "verify", "message", "keys": [key, ...], "label", "tag",
//    "required_components": [name, ...], "required_params": [name, ...]}
//     -> {"ok": true, "base"} or {"ok": false, "reason", "base"?}.  The policy is
//        the one an application would write around the package: only the signature
//        under `label` is looked at (the package verifies every label it has a key
//        for), its key must be one of `keys` by keyid and its tag `tag` (when given),
//        and when the message has a body, a covered Content-Digest must have a
//        sha-256 member that matches it (the package leaves digests to the
//        application).
//   {"op": "thumbprint", "pem"} -> {"thumbprint"}: RFC 7638 JWK SHA-256 thumbprint
//        of a public key, base64url without padding.
'use strict';

const crypto = require('crypto');
const readline = require('readline');
const { httpbis, createSigner, createVerifier } = require('http-message-signatures');
const sh = require('structured-headers');

function headerObject(pairs) {
  // The package takes headers as {name: value | [values]}; repeated names become lists.
  const out = {};
  const seen = {};
  for (const [name, value] of pairs) {
    const lower = name.toLowerCase();
    if (lower in seen) {
      const first = seen[lower];
      out[first] = [].concat(out[first], value);
    } else {
      seen[lower] = name;
      out[name] = value;
    }
  }
  return out;
}

function request(message) {
  return { method: message.method, url: message.url, headers: headerObject(message.headers) };
}

function messages(message) {
  // [message, request] as the package's functions take them (a response is bound to
  // its request through the second argument).
  if (message.status !== undefined) {
    const res = { status: message.status, headers: headerObject(message.headers) };
    return [res, message.request ? request(message.request) : undefined];
  }
  return [request(message), undefined];
}

function keyMaterial(key, kind) {
  if (key.alg === 'hmac-sha256') return Buffer.from(key.secret_b64, 'base64');
  if (key.alg === 'ed25519') {
    return kind === 'private' ? crypto.createPrivateKey(key.pem) : crypto.createPublicKey(key.pem);
  }
  throw new Error('unknown algorithm ' + key.alg);
}

function baseOf(fields, signatureParams, message, req) {
  // The signature base the package builds for these components and parameters.
  const base = httpbis.createSignatureBase({ fields }, message, req);
  base.push(['"@signature-params"', [signatureParams]]);
  return httpbis.formatSignatureBase(base);
}

async function sign(job) {
  const [message, req] = messages(job.message);
  let contentDigest;
  if (job.message.body_b64 !== undefined) {
    // RFC 9530: the body's sha-256 digest, as a Structured Fields Dictionary.
    const digest = crypto.createHash('sha256').update(Buffer.from(job.message.body_b64, 'base64')).digest();
    const bytes = digest.buffer.slice(digest.byteOffset, digest.byteOffset + digest.byteLength);
    contentDigest = sh.serializeDictionary(new Map([['sha-256', [bytes, new Map()]]]));
    message.headers['Content-Digest'] = contentDigest;
  }
  const params = job.params;
  // The parameters given, in this order (ours; any order verifies).
  const names = ['created', 'expires', 'nonce', 'keyid', 'alg', 'tag'].filter((name) => name in params);
  const paramValues = {};
  for (const name of names) {
    paramValues[name] = name === 'created' || name === 'expires' ? new Date(params[name] * 1000) : params[name];
  }
  const config = {
    key: createSigner(keyMaterial(job.key, 'private'), job.key.alg),
    name: job.label,
    params: names,
    fields: job.components,
    paramValues,
  };
  const signed = await httpbis.signMessage(config, message, req);
  const headers = Object.fromEntries(
    Object.entries(signed.headers).map(([name, value]) => [name.toLowerCase(), value]));
  const input = sh.parseDictionary(headers['signature-input']).get(job.label);
  return {
    content_digest: contentDigest,
    signature_input: headers['signature-input'],
    signature: headers.signature,
    base: baseOf(job.components, sh.serializeInnerList(input), message, req),
  };
}

function onlyLabel(message, label) {
  // The message with its Signature and Signature-Input reduced to `label`'s member.
  const headers = {};
  let input = null;
  for (const [name, value] of Object.entries(message.headers)) {
    const lower = name.toLowerCase();
    if (lower !== 'signature' && lower !== 'signature-input') {
      headers[name] = value;
      continue;
    }
    const dict = sh.parseDictionary([].concat(value).join(', '));
    if (!dict.has(label)) throw new Error('no signature labelled ' + label);
    headers[name] = sh.serializeDictionary(new Map([[label, dict.get(label)]]));
    if (lower === 'signature-input') input = dict.get(label);
  }
  if (input === null) throw new Error('no Signature-Input');
  return [{ ...message, headers }, input];
}

function checkDigest(message, input, bodyB64) {
  // RFC 9530: a covered Content-Digest whose sha-256 member is the body's digest
  // (an empty body may have none).
  const entry = Object.entries(message.headers).find(([name]) => name.toLowerCase() === 'content-digest');
  if (!entry && bodyB64 === '') return;
  const covered = input[0].map(([name]) => name);
  if (!covered.includes('content-digest')) throw new Error('content-digest is not covered');
  if (!entry) throw new Error('no Content-Digest');
  const member = sh.parseDictionary([].concat(entry[1]).join(', ')).get('sha-256');
  if (!member || !(member[0] instanceof ArrayBuffer)) throw new Error('Content-Digest has no sha-256 member');
  const expected = crypto.createHash('sha256').update(Buffer.from(bodyB64, 'base64')).digest();
  const got = Buffer.from(member[0]);
  if (got.length !== expected.length || !crypto.timingSafeEqual(got, expected)) {
    throw new Error('Content-Digest does not match the body');
  }
}

async function verify(job) {
  let [message, req] = messages(job.message);
  let input;
  let base;
  try {
    [message, input] = onlyLabel(message, job.label);
    base = baseOf(input[0].map((item) => sh.serializeItem(item)), sh.serializeInnerList(input), message, req);
  } catch (err) {
    return { ok: false, reason: err.message };
  }
  const keys = job.keys.map((key) => ({
    id: key.keyid,
    algs: [key.alg],
    verify: createVerifier(keyMaterial(key, 'public'), key.alg),
  }));
  const config = {
    keyLookup: async (params) => {
      if (job.tag != null && params.tag !== job.tag) return null;
      return keys.find((key) => key.id === params.keyid) || null;
    },
    requiredParams: job.required_params || [],
    requiredFields: job.required_components || [],
  };
  try {
    const result = await httpbis.verifyMessage(config, message, req);
    if (result !== true) {
      return { ok: false, reason: result === null ? 'no signature with a known key and tag' : 'bad signature', base };
    }
    if (job.message.body_b64 !== undefined) checkDigest(message, input, job.message.body_b64);
  } catch (err) {
    return { ok: false, reason: (err.name || 'Error') + ': ' + err.message, base };
  }
  return { ok: true, base };
}

function thumbprint(job) {
  const jwk = crypto.createPublicKey(job.pem).export({ format: 'jwk' });
  // RFC 7638: the required members in lexicographic order, no whitespace.
  const canonical = JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x });
  return { thumbprint: crypto.createHash('sha256').update(canonical).digest('base64url') };
}

const OPS = { sign, verify, thumbprint };

async function main() {
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let result;
    try {
      const job = JSON.parse(line);
      if (!(job.op in OPS)) throw new Error('unknown op ' + job.op);
      result = await OPS[job.op](job);
    } catch (err) {
      result = { error: (err.name || 'Error') + ': ' + err.message };
    }
    process.stdout.write(JSON.stringify(result) + '\n');
  }
}

main().catch((err) => {
  process.stderr.write(String((err && err.stack) || err) + '\n');
  process.exit(2);
});
