"""An Ed25519 key pair as PEM files, as a release signer or a member keeps one (shared by the signing and
remote tests)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519


def pem_key_pair(folder: Path, name: str) -> tuple[Path, bytes]:
    """Write ``name.pem`` (private, PKCS8) and ``name.pub.pem`` in ``folder``; return the private key's
    path and the public key's PEM bytes."""
    private = ed25519.Ed25519PrivateKey.generate()
    path = folder / f"{name}.pem"
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    (folder / f"{name}.pub.pem").write_bytes(public)
    return path, public
