"""Who signed a package, as an operator sees it: real packages signed by our
own ``ovfconverter export --sign KEY --cert CERT``, real certificates made
here (a throwaway CA, an intermediate, a leaf; a forged "VMware, Inc."
certificate naming a real system CA as its issuer), and ``ovfconverter
import/verify/info`` run as subprocesses: messages and exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from make_fixtures import Appliance, DiskSpec

from ganeti_ovf import cli, trust

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "data" / "ganeti-export" / "kvm" / "config.ini"
NOW = datetime.now(UTC)
TAIL = ("; the signature proves only that the manifest is unchanged since someone with that "
        "key signed it)")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "ovfconverter"), *args],
                          capture_output=True, text=True, env=e, timeout=120)


def cn(text: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, text)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def certificate(key, subject: x509.Name, issuer: x509.Name, issuer_key, *, ca: bool,
                eku: bool = False) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
    return b.sign(issuer_key, hashes.SHA256())


def write_pem(path: Path, *objs) -> str:
    out = b""
    for o in objs:
        if isinstance(o, x509.Certificate):
            out += o.public_bytes(serialization.Encoding.PEM)
        else:
            out += o.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    path.write_bytes(out)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An export directory and, signed by our exporter from it: a package by
    a CA-issued leaf (with its intermediate), one by a self-signed
    publisher, one by a forged 'VMware, Inc.', and an unsigned one."""
    d = tmp_path_factory.mktemp("signing")
    src = d / "src"
    src.mkdir()
    shutil.copy(SAMPLE, src / "config.ini")
    dump = next(ln.split("=", 1)[1].strip() for ln in SAMPLE.read_text().splitlines()
                if ln.startswith("disk0_dump"))
    (src / dump).write_bytes(os.urandom(1 << 20) * 8)

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    root_key, int_key, leaf_key, self_key, forged_key = key(), key(), key(), key(), key()
    root = certificate(root_key, cn("Test Root CA"), cn("Test Root CA"), root_key, ca=True)
    inter = certificate(int_key, cn("Test Intermediate CA"), root.subject, root_key, ca=True)
    leaf = certificate(leaf_key, cn("Appliance Publisher"), inter.subject, int_key, ca=False,
                       eku=True)
    own = certificate(self_key, cn("Own Publisher"), cn("Own Publisher"), self_key, ca=False)
    system = trust.default_bundle()
    digicert = [a.cert for a in trust.load_store().anchors
                if a.cert.subject.rfc4514_string().startswith("CN=DigiCert Global Root CA")]
    issuer = digicert[0].subject if digicert else cn("DigiCert Global Root CA", "DigiCert Inc")
    forged = certificate(forged_key, cn("VMware, Inc.", "VMware, Inc."), issuer, key(),
                         ca=False, eku=True)
    w = {"dir": d, "root": write_pem(d / "root.pem", root),
         "own": write_pem(d / "own.pem", own), "system": system, "forged_cert": forged,
         "digicert": bool(digicert)}
    for name, k, chain in (("chain", leaf_key, (leaf, inter)), ("self", self_key, (own,)),
                           ("forged", forged_key, (forged,)), ("unsigned", None, ())):
        args = ["export", str(src), "-n", name, "--ova", "--output-dir", str(d / "pkgs"), "-q"]
        if k is not None:
            args += ["--sign", write_pem(d / f"{name}.key", k),
                     "--cert", write_pem(d / f"{name}.crt", *chain)]
        p = run(*args)
        assert p.returncode == 0, p.stderr
        w[name] = str(d / "pkgs" / f"{name}.ova")
    return w


@pytest.fixture
def env(tmp_path, os_path):
    """A Ganeti dir whose OS search path is the test's OS dir (no cluster)."""
    from conftest import make_ganeti_dir

    return make_ganeti_dir(tmp_path, os_path)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def forged_subject(world) -> str:
    return world["forged_cert"].subject.rfc4514_string()


def forged_reason(world) -> str:
    issuer = world["forged_cert"].issuer.rfc4514_string()
    if world["digicert"] and world["system"]:
        return f"the signature of {forged_subject(world)} by {issuer} does not verify"
    return f"no trusted certificate issued it (issuer {issuer})"


# ------------------------------------------------------------------ forged signer

def test_forged_vmware_signer_is_named_in_a_warning_at_import(world, tmp_path, env):
    """The review's case: without any option, import still succeeds (the
    signature holds) but says plainly, without -v, that the signer is not
    trusted."""
    out = tmp_path / "out"
    p = run("import", world["forged"], "-o", "noop", "--output-dir", str(out), env=env)
    assert p.returncode == cli.EXIT_SUCCESS, p.stderr
    want = (f"ovfconverter: WARNING: {world['forged']}: forged.cert: signer "
            f"{forged_subject(world)} does not chain to a trusted certificate "
            f"({forged_reason(world)}{TAIL}")
    assert want in lines(p.stderr), p.stderr
    assert (out / "forged" / "config.ini").is_file()


def test_forged_signer_refused_with_require_signature(world, tmp_path, env):
    out = tmp_path / "out"
    out.mkdir()
    p = run("import", world["forged"], "-o", "noop", "--output-dir", str(out),
            "--require-signature", env=env)
    assert p.returncode == cli.EXIT_VERIFY
    err = lines(p.stderr)
    assert err == [f"ovfconverter: error: {world['forged']}: signer {forged_subject(world)} "
                   f"does not chain to a trusted certificate ({forged_reason(world)}) and "
                   "--require-signature is given"], p.stderr
    assert os.listdir(out) == []  # nothing written


def test_verify_forged_signer(world):
    p = run("verify", world["forged"])
    assert p.returncode == cli.EXIT_SUCCESS
    assert f"ok: certificate {forged_subject(world)}: signature over the manifest holds" \
        in p.stdout
    assert lines(p.stderr) == [
        f"ovfconverter: warning: {world['forged']}: forged.cert: signer {forged_subject(world)}"
        f" does not chain to a trusted certificate ({forged_reason(world)}{TAIL}"]
    p = run("verify", world["forged"], "--require-signature")
    assert p.returncode == cli.EXIT_VERIFY
    assert "does not chain to a trusted certificate" in p.stderr
    assert "--require-signature is given" in p.stderr
    p = run("verify", world["forged"], "--json")
    data = json.loads(p.stdout)
    assert data["ok"] is True and len(data["warnings"]) == 1


def test_info_forged_signer(world):
    p = run("info", world["forged"])
    assert p.returncode == cli.EXIT_SUCCESS
    assert "  NOT TRUSTED: forged.cert: signer " in p.stdout
    p = run("info", world["forged"], "--json")
    t = json.loads(p.stdout)["certificate"]["trust"]
    assert t["trusted"] is False and t["reason"] == forged_reason(world)
    p = run("info", world["forged"], "--require-signature")
    assert p.returncode == cli.EXIT_VERIFY
    assert lines(p.stderr)[-1] == (
        f"ovfconverter: error: {world['forged']}: the package has a signer that does not "
        "chain to a trusted certificate and --require-signature is given")


# ------------------------------------------------------------------ trusted signers

def test_chain_to_trusted_root_is_said_without_verbose(world, tmp_path, env):
    p = run("import", world["chain"], "-o", "noop", "--output-dir", str(tmp_path / "o"),
            "--trusted-cert", world["root"], "--require-signature", "--trust-ganeti-section",
            env=env)
    assert p.returncode == cli.EXIT_SUCCESS, p.stderr
    assert "WARNING" not in p.stderr
    assert (f"ovfconverter: {world['chain']}: chain.cert: signer CN=Appliance Publisher "
            "chains to the trusted certificate CN=Test Root CA via CN=Test Intermediate CA "
            f"(--trusted-cert {world['root']})") in lines(p.stderr)
    q = run("import", world["chain"], "-o", "noop", "--output-dir", str(tmp_path / "q"),
            "--trusted-cert", world["root"], "-q", "--trust-ganeti-section", env=env)
    assert q.returncode == 0 and q.stderr == ""  # -q: quiet when all is well


def test_chain_to_ca_bundle(world):
    p = run("verify", world["chain"], "--ca-bundle", world["root"], "--require-signature")
    assert p.returncode == cli.EXIT_SUCCESS, p.stderr
    assert (f"ok: chain.cert: signer CN=Appliance Publisher chains to the trusted certificate "
            f"CN=Test Root CA via CN=Test Intermediate CA (CA bundle {world['root']})"
            ) in p.stdout
    assert p.stderr == ""


def test_chain_not_trusted_by_the_system_store(world, tmp_path, env):
    p = run("import", world["chain"], "-o", "noop", "--output-dir", str(tmp_path / "o"),
            env=env)
    assert p.returncode == cli.EXIT_SUCCESS
    assert "chain.cert: signer CN=Appliance Publisher does not chain to a trusted " \
        "certificate (no trusted certificate issued CN=Test Intermediate CA (issuer CN=Test Root " \
        "CA);" in p.stderr


def test_self_signed_publisher_trusted_directly(world, tmp_path, env):
    """A pinned self-signed certificate: no 'self-signed' warning either."""
    p = run("import", world["self"], "-o", "noop", "--output-dir", str(tmp_path / "o"),
            "--trusted-cert", world["own"], "--require-signature", "--trust-ganeti-section",
            env=env)
    assert p.returncode == cli.EXIT_SUCCESS, p.stderr
    assert "WARNING" not in p.stderr
    assert (f"ovfconverter: {world['self']}: self.cert: signer CN=Own Publisher is the "
            f"trusted certificate (--trusted-cert {world['own']})") in lines(p.stderr)
    p = run("import", world["self"], "-o", "noop", "--output-dir", str(tmp_path / "p"),
            env=env)
    assert p.returncode == cli.EXIT_SUCCESS
    assert "self-signed" in p.stderr and "does not chain to a trusted certificate" in p.stderr
    p = run("info", world["self"], "--trusted-cert", world["own"])
    assert "  Trusted: self.cert: signer CN=Own Publisher is the trusted certificate" \
        in p.stdout


def test_trusting_a_different_certificate_does_not_help(world, tmp_path, env):
    p = run("import", world["forged"], "-o", "noop", "--output-dir", str(tmp_path / "o"),
            "--trusted-cert", world["own"], "--ca-bundle", world["root"],
            "--require-signature", env=env)
    assert p.returncode == cli.EXIT_VERIFY
    assert "does not chain to a trusted certificate" in p.stderr


# ------------------------------------------------------------------ unsigned packages

def test_unsigned_package_and_require_signature(world, tmp_path, env, build):
    out = tmp_path / "o"
    out.mkdir()
    p = run("import", world["unsigned"], "-o", "noop", "--output-dir", str(out), env=env)
    assert p.returncode == cli.EXIT_SUCCESS and "chain" not in p.stderr  # as before
    p = run("import", world["unsigned"], "-o", "noop", "--output-dir", str(out),
            "--require-signature", env=env)
    assert p.returncode == cli.EXIT_VERIFY
    assert lines(p.stderr) == [
        f"ovfconverter: error: {world['unsigned']}: the package is not signed (no certificate "
        "'unsigned.cert') and --require-signature is given"]
    bare, _ = build(Appliance(name="bare", disks=[DiskSpec(1 << 20, "raw")]), manifest=None)
    p = run("import", bare, "-o", "noop", "--output-dir", str(out), "--require-signature",
            env=env)
    assert p.returncode == cli.EXIT_VERIFY
    assert "the package is not signed (no manifest, no certificate)" in p.stderr
    assert os.listdir(out) == ["unsigned"]  # only the first, unconditioned import
    p = run("verify", world["unsigned"], "--require-signature")
    assert p.returncode == cli.EXIT_VERIFY and "not signed" in p.stderr
    p = run("info", world["unsigned"], "--require-signature")
    assert p.returncode == cli.EXIT_VERIFY
    assert "has no signature that verifies" in p.stderr


# ------------------------------------------------------------------ usage errors

@pytest.mark.parametrize("command", ["import", "verify", "info"])
def test_trust_files_that_do_not_load(world, tmp_path, command, env):
    missing = tmp_path / "missing.pem"
    p = run(command, world["chain"], "--trusted-cert", str(missing), env=env)
    assert p.returncode == cli.EXIT_USAGE
    err = lines(p.stderr)
    assert len(err) == 1 and err[0].startswith(
        f"ovfconverter: error: {missing}: --trusted-cert: cannot read: No such file")
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    p = run(command, world["chain"], "--ca-bundle", str(junk), env=env)
    assert p.returncode == cli.EXIT_USAGE
    assert lines(p.stderr)[0].startswith(
        f"ovfconverter: error: {junk}: --ca-bundle: no PEM certificate in it")


def test_require_signature_excludes_no_verify(world, env):
    p = run("import", world["chain"], "-o", "noop", "--no-verify", "--require-signature",
            env=env)
    assert p.returncode == cli.EXIT_USAGE
    assert "--require-signature and --no-verify exclude each other" in p.stderr
