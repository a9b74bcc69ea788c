"""Authorship of a release: Ed25519 signatures (RFC 8032) over its ``config.json``.

Integrity alone (``fundusfm.signature.digest``, a SHA-256 of the config with the SHA-256 of
every release file inside it) shows that nothing changed *by accident*; anyone can
recompute it after an edit. Authorship needs a secret: ``fundusfm export --sign-key KEY``
signs the same canonical bytes with an Ed25519 private key, and ``fundusfm predict
--trusted-key PUB`` / ``load_model(..., trusted_keys=[PUB])`` (or the keyring named by
:data:`KEYRING_ENV`) refuse a release that no trusted key signed.

Why Ed25519 through ``cryptography``: the PyCA library is maintained, audited, already a
dependency of MLflow's stack, works offline and reads the key files ``openssl`` and
``ssh-keygen`` write; Ed25519 signatures are deterministic (the same release gives the
same bytes, so release digests stay reproducible) and small. The OpenSSF model-signing
format (sigstore) was considered: its keyless mode needs an online identity provider and
transparency log, which a hospital's offline machines do not reach, and its key mode
brings a larger dependency for the same primitive.

Keys: a private key as PKCS#8 PEM (``openssl genpkey -algorithm ed25519 -out key.pem``,
optionally encrypted: the password from :data:`PASSWORD_ENV`) or OpenSSH
(``ssh-keygen -t ed25519``); a public key as PEM (``openssl pkey -in key.pem -pubout``)
or an OpenSSH ``ssh-ed25519 AAAA...`` line. ``fundusfm keygen`` writes a pair.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

ALGORITHM = "ed25519"
KEYRING_ENV = "FUNDUSFM_TRUSTED_KEYS"  # files or folders of public keys, os.pathsep-separated
PASSWORD_ENV = "FUNDUSFM_SIGN_KEY_PASSWORD"
UNSIGNED = "integrity only, unsigned"
PUBLIC_SUFFIXES = (".pub", ".pem")


class SigningKeyError(ValueError):
    """A key file cannot be read as an Ed25519 key (the message names the file)."""


@dataclass(frozen=True)
class TrustedKey:
    """A public key and where it came from."""

    key: object  # cryptography Ed25519PublicKey
    source: str

    @property
    def key_id(self) -> str:
        return key_id(self.key)


def _raw_public(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key) -> str:
    """``ed25519:<first 16 hex digits of the SHA-256 of the raw 32-byte public key>``."""
    return f"{ALGORITHM}:{hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]}"


def load_private_key(path: str | os.PathLike):
    """An Ed25519 private key from a PEM (PKCS#8) or OpenSSH file; an encrypted PEM reads
    its password from :data:`PASSWORD_ENV`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SigningKeyError(f"signing key {path}: cannot read it ({e.strerror or e})") from None
    password = os.environ.get(PASSWORD_ENV)
    password = password.encode() if password else None
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password)
        else:
            key = serialization.load_pem_private_key(data, password)
    except TypeError as e:  # encrypted and no password, or a password for a plain key
        raise SigningKeyError(f"signing key {path}: {e} (the password comes from ${PASSWORD_ENV})") from None
    except Exception as e:  # noqa: BLE001 - cryptography raises by format
        raise SigningKeyError(f"signing key {path}: not a readable PEM or OpenSSH private key ({type(e).__name__}: "
                        f"{e}); make one with `fundusfm keygen` or `openssl genpkey -algorithm ed25519`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"signing key {path}: a {type(key).__name__.replace('_', '')}, not an Ed25519 key; make one "
                        "with `fundusfm keygen` or `openssl genpkey -algorithm ed25519`")
    return key


def load_public_key(path: str | os.PathLike):
    """An Ed25519 public key from a PEM file or an OpenSSH ``ssh-ed25519`` line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SigningKeyError(f"trusted key {path}: cannot read it ({e.strerror or e})") from None
    try:
        if data.lstrip().startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except Exception as e:  # noqa: BLE001
        hint = " (that is a private key: give its public half, `openssl pkey -in KEY -pubout`)" \
            if b"PRIVATE KEY" in data else ""
        raise SigningKeyError(f"trusted key {path}: not a readable PEM or OpenSSH public key{hint} "
                        f"({type(e).__name__}: {e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"trusted key {path}: not an Ed25519 public key ({type(key).__name__})")
    return key


def keyring(paths=(), use_env: bool = True) -> list[TrustedKey]:
    """The trusted public keys: each of ``paths`` (a key file, or a folder whose ``*.pub`` /
    ``*.pem`` files are keys), then those of :data:`KEYRING_ENV` when ``use_env``."""
    items = [str(p) for p in (paths or ())]
    if use_env:
        items += [p for p in os.environ.get(KEYRING_ENV, "").split(os.pathsep) if p.strip()]
    keys: list[TrustedKey] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in PUBLIC_SUFFIXES)
            if not files:
                raise SigningKeyError(f"trusted keys folder {p} holds no *.pub / *.pem public key")
            keys += [TrustedKey(load_public_key(f), str(f)) for f in files]
        else:
            keys.append(TrustedKey(load_public_key(p), str(p)))
    return keys


def sign(message: bytes, private_key) -> dict:
    """The ``ed25519`` block of a release signature: key id, public key, signature."""
    pub = private_key.public_key()
    return {"algorithm": ALGORITHM, "key_id": key_id(pub),
            "public_key": base64.b64encode(_raw_public(pub)).decode(),
            "signature": base64.b64encode(private_key.sign(message)).decode()}


def verify(message: bytes, block: dict, keys: list[TrustedKey]) -> TrustedKey | None:
    """The trusted key whose Ed25519 signature ``block`` is over ``message``, else ``None``
    (a malformed block, an unknown key, or a signature that does not verify)."""
    from cryptography.exceptions import InvalidSignature

    try:
        sig = base64.b64decode(block["signature"], validate=True)
    except (KeyError, TypeError, ValueError):
        return None
    for k in keys:
        try:
            k.key.verify(sig, message)
            return k
        except InvalidSignature:
            continue
    return None


def generate(out: str | os.PathLike) -> tuple[Path, Path]:
    """A new key pair: ``<out>.pem`` (private, PKCS#8 PEM, mode 0600) and ``<out>.pub``
    (public, PEM). Refuses to overwrite either."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out)
    priv_path, pub_path = out.with_name(out.name + ".pem"), out.with_name(out.name + ".pub")
    for p in (priv_path, pub_path):
        if p.exists():
            raise SigningKeyError(f"{p} exists; choose another name (a key is never overwritten)")
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(priv)
    pub_path.write_bytes(pub)
    return priv_path, pub_path
