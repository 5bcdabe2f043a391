"""Where the CPU of a signed request goes (the floor behind the "signed" target).

Runs in the project's virtualenv, in one process pinned to CPU 0 with the
backend (like figure 1 of run.py), and measures the in-process CPU time of a
1 KB GET for four variants of the same WSGIProxyApp, interleaved round by
round so that machine noise hits them alike:

  unsigned     WSGIProxyApp(href)
  signed       WSGIProxyApp(href, secret_file=...)
  signed, HMAC free
               the same, with the HMAC replaced by a constant: what the
               rest of signing (canonical form, nonce, header) costs
  signed, signing free
               the signing function replaced by a constant header value: the
               signed request's path without any signing work

The differences give the cost of HMAC-SHA256 (OpenSSL, through hmac) and of
the Python part of signing in the same conditions as the benchmark.

--format chooses the signature format of the signed variants: v1 (the
default: X-WSGIProxy-Signature), rfc9421 (hmac-sha256 with the same secret),
or rfc9421-ed25519 (an Ed25519 private key; its "HMAC free" variant replaces
the Ed25519 signing instead).

  .venv/bin/python bench/signing_cost.py [--rounds 9] [--n 3000] [--format v1]
"""
import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cpu_worker
import subjects

VARIANTS = ("unsigned", "signed", "signed, HMAC free", "signed, signing free")
FIXED_SIGNATURE = ("v1 kid=0000000000000000, ts=1700000000, nonce=" + "0" * 32
                   + ", body=-, headers=x-forwarded-for;x-forwarded-scheme;x-forwarded-server;"
                   "x-wsgiproxy-version, sig=" + "A" * 43)
FIXED_RFC9421 = [
    ("Signature-Input", 'wsgiproxy=("@method" "@authority" "@path" "@query" "x-forwarded-for" '
     '"x-forwarded-scheme" "x-forwarded-server" "x-wsgiproxy-version");created=1700000000;'
     'expires=1700000300;nonce="%s";keyid="0000000000000000";alg="hmac-sha256";'
     'tag="wsgiproxy"' % ("0" * 32)),
    ("Signature", "wsgiproxy=:%s=:" % ("A" * 43))]
FORMATS = ("v1", "rfc9421", "rfc9421-ed25519")


def ed25519_key_file(directory):
    """A fresh Ed25519 private key (PEM) in ``directory``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    path = os.path.join(directory, "key.pem")
    with open(path, "wb") as f:
        f.write(ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return path


class _ConstantMacs(dict):
    """In place of signature._keyed_hmacs: every secret's HMAC is a constant."""

    def __init__(self, digest):
        super().__init__()
        self.mac = lambda message: digest

    def get(self, secret, default=None):
        return self.mac


class Patches:
    """Replaces the signature (or only its cryptography) by constants, per variant."""

    def __init__(self, signature_format):
        from wsgiproxy.keys import PrivateKey
        from wsgiproxy.protocol import rfc9421, signature
        self.format = signature_format
        # Patched where signing looks them up: v1 takes the HMAC of its secret from
        # signature._keyed_hmacs, RFC 9421 from the signer (HMACKeys keeps the one it
        # made for its key, so patching hmac_for would not reach it); the app calls
        # signature.sign and rfc9421.sign themselves.
        self.targets = [(signature, "_keyed_hmacs"), (signature, "sign"),
                        (rfc9421.HMACKeys, "signer"), (rfc9421, "sign"),
                        (PrivateKey, "signer")]
        self.real = [getattr(obj, name) for obj, name in self.targets]
        real_hmac_signer, real_signer = rfc9421.HMACKeys.signer, PrivateKey.signer
        constant = bytes(64)
        self.free = {
            (signature, "_keyed_hmacs"): _ConstantMacs(constant[:32]),
            (signature, "sign"): lambda *a, **k: FIXED_SIGNATURE,
            (rfc9421.HMACKeys, "signer"): lambda self: real_hmac_signer(self)[:2] + (
                lambda data: constant[:32],),
            (rfc9421, "sign"): lambda *a, **k: list(FIXED_RFC9421),
            (PrivateKey, "signer"): lambda self: real_signer(self)[:2] + (
                lambda data: constant,)}

    def apply(self, variant):
        self.restore()
        crypto = {"v1": [0], "rfc9421": [2], "rfc9421-ed25519": [4]}[self.format]
        signing = [1] if self.format == "v1" else [3]
        chosen = crypto if variant == "signed, HMAC free" else (
            signing if variant == "signed, signing free" else [])
        for i in chosen:
            obj, name = self.targets[i]
            setattr(obj, name, self.free[obj, name])

    def restore(self):
        for (obj, name), value in zip(self.targets, self.real):
            setattr(obj, name, value)


def start_backend():
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "backend.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit("the backend did not start: %r" % line)
    os.sched_setaffinity(proc.pid, {0})
    return proc, int(line.split()[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--n", type=int, default=3000, help="timed requests per variant and round")
    ap.add_argument("--format", choices=FORMATS, default="v1",
                    help="signature format of the signed variants")
    args = ap.parse_args()
    from wsgiproxy.app import WSGIProxyApp
    patches = Patches(args.format)

    os.sched_setaffinity(0, {0})
    backend, port = start_backend()
    secret_dir = tempfile.mkdtemp(prefix="bench-secret-")
    secret_file = os.path.join(secret_dir, "secret")
    with open(secret_file, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    os.chmod(secret_file, 0o600)  # (a file others can read is warned about)
    signing = {"v1": dict(secret_file=secret_file),
               "rfc9421": dict(secret_file=secret_file, signature_format="rfc9421"),
               "rfc9421-ed25519": dict(private_key_file=ed25519_key_file(secret_dir),
                                       signature_format="rfc9421")}[args.format]
    try:
        base = subjects.base_environ("127.0.0.1", port)
        href = "http://127.0.0.1:%d" % port
        loops = {}
        for variant in VARIANTS:
            app = WSGIProxyApp(href, **({} if variant == "unsigned" else signing))
            one, check, _ = cpu_worker.wsgi_request_fn(app, base, "get1k")
            check()
            loops[variant] = one
        cpu = {variant: [] for variant in VARIANTS}
        for _ in range(args.rounds):
            for variant, one in loops.items():
                patches.apply(variant)
                for _ in range(300):
                    one()
                start = time.process_time()
                for _ in range(args.n):
                    one()
                cpu[variant].append((time.process_time() - start) / args.n * 1e6)
    finally:
        patches.restore()
        backend.kill()
        backend.wait()
        for name in os.listdir(secret_dir):
            os.unlink(os.path.join(secret_dir, name))
        os.rmdir(secret_dir)

    med = {variant: statistics.median(values) for variant, values in cpu.items()}
    print("CPU us per 1 KB GET, in-process, pinned to CPU 0; median (min-max) of %d rounds "
          "x %d requests; signature format %s" % (args.rounds, args.n, args.format))
    for variant in VARIANTS:
        values = cpu[variant]
        print("  %-22s %6.1f  (%.1f-%.1f)" % (variant, med[variant], min(values), max(values)))
    # Each round measures the variants one after the other: the ratio within a round is
    # spared the drift between rounds, so its median is the figure to quote.
    shares = sorted(100.0 * (signed - unsigned) / unsigned
                    for signed, unsigned in zip(cpu["signed"], cpu["unsigned"]))
    print("signing adds:               %+.0f %% of unsigned (median of the rounds' ratios; "
          "%+.0f to %+.0f), %.1f us" % (statistics.median(shares), shares[0], shares[-1],
                                       med["signed"] - med["unsigned"]))
    print("  HMAC-SHA256 (or Ed25519):  %5.1f us" % (med["signed"] - med["signed, HMAC free"]))
    print("  the rest (canonical form, nonce, header value): %.1f us"
          % (med["signed, HMAC free"] - med["signed, signing free"]))
    print("  the signing call and the header(s) sent: %.1f us"
          % (med["signed, signing free"] - med["unsigned"]))

if __name__ == "__main__":
    main()
