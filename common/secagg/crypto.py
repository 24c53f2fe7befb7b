"""The cryptographic primitives of SecAgg+, all from `cryptography` (no home-made cipher).

- X25519 key agreement: every client makes two key pairs per round, one ("c") whose agreed secret encrypts
  the Shamir shares it sends, one ("s") whose agreed secret seeds the pairwise masks (Bell et al. 2020, Alg. 1).
- HKDF-SHA256 turns an agreed secret into a 32-byte key; `info` names what the key is for (share transport,
  or a pairwise mask of one named vector), so one agreement yields independent keys per purpose and per bank.
- AES-256-GCM carries the shares; the associated data binds sender, receiver, run, round and stage, so a
  ciphertext replayed from another round, another run or another pair of clients fails authentication.
- AES-256-CTR over zero bytes is the PRG that expands a 32-byte seed into a mask vector of 64-bit words.
- Ed25519 signatures under each client's long-lived identity key (common/secagg/identity.py): a client signs
  its key advertisement and the survivor list it is given, so that a server relaying keys or lists cannot
  substitute or split them without the peers noticing.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.secagg.errors import ProtocolError

KEY_BYTES = 32
NONCE_BYTES = 12
PUBLIC_KEY_BYTES = 32


def new_private_key() -> bytes:
    """A fresh X25519 private key as its 32 raw bytes (what is Shamir-shared for the mask key)."""
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def exchange(private: bytes, peer_public: bytes) -> bytes:
    """The raw X25519 shared secret (feed it to `derive`, never use it as a key); symmetric in the two parties.

    A malformed peer key (wrong length, or a low-order point whose agreed secret is all zeros) raises
    ProtocolError rather than yielding a predictable key."""
    if len(peer_public) != PUBLIC_KEY_BYTES:
        raise ProtocolError(f"public key has {len(peer_public)} bytes, expected {PUBLIC_KEY_BYTES}")
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise ProtocolError(f"key agreement failed: {exc}") from exc


def agree(private: bytes, peer_public: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256(X25519(private, peer_public)) -> 32 bytes for the purpose `info`."""
    return derive(exchange(private, peer_public), salt, info)


def derive(secret: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 of `secret` into a 32-byte key for the purpose named by `info`."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(secret)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM: random 96-bit nonce || ciphertext+tag, authenticated together with `associated`."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, blob: bytes, associated: bytes) -> bytes:
    """Inverse of `encrypt`; ProtocolError when the key, the bytes or the associated data do not match."""
    if len(blob) < NONCE_BYTES + 16:
        raise ProtocolError(f"ciphertext of {len(blob)} bytes is too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated)
    except InvalidTag:
        raise ProtocolError("share ciphertext failed authentication (wrong sender, receiver, run, round or "
                            "stage, or altered bytes)") from None


def prg_words(seed: bytes, length: int) -> np.ndarray:
    """`length` pseudo-random uint64 words: AES-256-CTR keystream under key `seed` (zero nonce: each seed is
    used for one vector only, since every seed is derived with the round, the vector name and the pair)."""
    if len(seed) != KEY_BYTES:
        raise ValueError(f"PRG seed must have {KEY_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(8 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64, copy=False)


SIGNATURE_BYTES = 64


def identity_public_key(private: bytes) -> bytes:
    """The 32 raw bytes of the Ed25519 public key of a raw 32-byte identity private key."""
    return Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def sign(private: bytes, message: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of `message` under a raw identity private key."""
    return Ed25519PrivateKey.from_private_bytes(private).sign(message)


def verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """Whether `signature` is a valid Ed25519 signature of `message` under `public` (False on any malformed
    input: a wrong-length key or signature is simply not valid)."""
    if len(public) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
