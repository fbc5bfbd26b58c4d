"""Small int8 codecs for optimizer state (plain torch; the Triton kernels match these bit for bit).

Four codecs, each a pair of pure functions ``encode``/``decode``:

* :func:`encode_signed` / :func:`decode_signed` — first moments. Groups of :data:`GROUP` values
  share one bf16 scale ``s = max|x|`` (rounded *up* to bf16, so ``|x|/s <= 1``). The normalised
  value ``y = x/s`` is companded with a softsign, ``phi = 2y / (1 + |y|)``, and stored as
  ``q = round(127 phi)`` in int8. The softsign doubles the resolution near zero, where most
  momentum entries live. Bound: ``|x - x_hat| <= s/127`` (and ``<= s/508`` for ``|y| -> 0``).
* :func:`encode_sqrt` / :func:`decode_sqrt` — second moments (non-negative). Stored as
  ``q = round(255 sqrt(v)/s)`` in uint8 with ``s = max sqrt(v)`` per group. The square root is
  what keeps an 8-bit second moment from diverging (a linear 4/8-bit ``v`` flushes small entries).
  Bound: ``|sqrt(v) - sqrt(v_hat)| <= s/510``. ``floor_zero=True`` decodes a zero code to half a
  step instead of 0: a coordinate whose ``v`` rounded to zero then cannot divide by ``eps`` alone.
  :func:`decode_root` gives the root itself (Adam's denominator needs no square and no square root).
* :func:`encode_corr` / :func:`decode_corr` — symmetric psd Kronecker factors ``L`` (d x d),
  stored as the int8 correlation ``C_ij = L_ij / sqrt(L_ii L_jj)`` plus the exact fp32 diagonal.
  The error of an entry scales with the two rows it couples, so rows (or eigen-directions) that
  differ by orders of magnitude each keep their relative precision (a per-tensor or per-row scale
  flushes the small ones). Rounding is *stochastic* with a counter-based hash
  (:func:`hash_uniform`) so the EMA ``L <- b L + (1-b) G G^T`` is unbiased: with round-to-nearest
  an entry smaller than ``0.5/(1-b)`` steps can never leave zero. The hash makes the dither
  deterministic (resume is bit-exact and no RNG state is saved). Bound off the diagonal:
  ``|L - L_hat| <= sqrt(L_ii L_jj) / 127``; the diagonal is exact.
* :func:`split_master` / :func:`join_master` — bf16 weights with error-correction bits. The fp32
  value ``x`` is stored as ``w = bf16(x)`` plus ``rho = round(R * e / (ulp(w)/2))`` with
  ``e = x - w`` and ``R = 127`` (int8) or ``32767`` (int16). ``x_hat = w + rho ulp(w) / (2R)``,
  so ``|x - x_hat| <= ulp(w) / (4R)``: 1/508 ulp with int8 bits, about 24 significant bits.

All functions take ``(..., N)`` tensors and work per trailing row; the leading dims are batch.

Divisions by constants are written as multiplications by the reciprocal (``q * (1/127)``): CUDA
torch turns a division by a Python scalar into exactly that while CPU torch divides, so this
spelling makes CPU torch, CUDA torch and the Triton kernels (:mod:`scao_dist.kernels`) agree bit
for bit. Divisions by tensors stay true (IEEE) divisions everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

GROUP = 32
"""Values per scale for the moment codecs."""

_M32 = 0xFFFFFFFF


def n_groups(n: int, group: int = GROUP) -> int:
    """Number of scale groups for ``n`` values."""
    return (n + group - 1) // group


def _grouped(x: Tensor, group: int) -> Tensor:
    """View ``(..., N)`` as ``(..., G, group)``, zero-padding the tail group."""
    n = x.shape[-1]
    pad = n_groups(n, group) * group - n
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], x.shape[-1] // group, group)


def sqrt_rn(x: Tensor) -> Tensor:
    """Correctly rounded fp32 square root (IEEE, as CUDA's ``sqrtf`` and Triton's ``sqrt_rn``).

    Taken in float64 and rounded once to fp32, which is exact for sqrt. Plain ``torch.sqrt`` on
    CPU goes through MKL's vector math and is up to 1 ulp off for ~17% of inputs, which would
    make CPU results differ from the GPU and from the kernels.
    """
    return x.double().sqrt().float()


def bf16_scale_up(s: Tensor) -> Tensor:
    """Round fp32 scales to bf16 *upwards*, so ``|x| / scale <= 1`` after rounding.

    fp16 scales (the FlashOptim paper's choice) underflow below ~6e-5 and flush small-gradient
    groups to zero; bf16 has fp32's exponent range.
    """
    sb = s.to(torch.bfloat16)  # no host sync (``if low.any()``): this also runs on the refresh thread
    return torch.where(sb.float() < s, torch.nextafter(sb, torch.full_like(sb, float("inf"))), sb)


# ----------------------------------------------------------------------------- first moment
def encode_signed(x: Tensor, group: int = GROUP) -> tuple[Tensor, Tensor]:
    """fp32 ``(..., N)`` -> (int8 codes ``(..., G*group)``, bf16 scales ``(..., G)``)."""
    xg = _grouped(x.float(), group)
    scale = bf16_scale_up(xg.abs().amax(dim=-1))
    s = scale.float().unsqueeze(-1)
    y = torch.where(s > 0, xg / torch.where(s > 0, s, 1.0), 0.0).clamp_(-1.0, 1.0)
    phi = 2.0 * y / (1.0 + y.abs())
    q = torch.round(phi * 127.0).to(torch.int8)
    return q.reshape(*x.shape[:-1], -1), scale


def decode_signed(q: Tensor, scale: Tensor, n: int, group: int = GROUP) -> Tensor:
    """Inverse of :func:`encode_signed`; returns fp32 ``(..., n)``."""
    phi = q.float().reshape(*q.shape[:-1], q.shape[-1] // group, group) * (1.0 / 127.0)
    y = phi / (2.0 - phi.abs())
    x = y * scale.float().unsqueeze(-1)
    return x.reshape(*q.shape)[..., :n]


# ---------------------------------------------------------------------------- second moment
V_MIN = 2.0**-100
"""Where :func:`encode_sqrt` clamps ``v`` from below: the root of anything smaller, ``2^-50``, is far under any
Adam ``eps``, and a square root of an operand at least this large needs no rescaling of a subnormal (the
kernels' :func:`scao_dist.kernels.common.sqrt_fast`)."""


def encode_sqrt(v: Tensor, group: int = GROUP) -> tuple[Tensor, Tensor]:
    """Non-negative fp32 ``(..., N)`` -> (uint8 codes of ``sqrt(clamp(v, V_MIN, FMAX))``, bf16 scales
    ``(..., G)``; the tail group's padding codes as 0)."""
    ug = _grouped(sqrt_rn(v.float().clamp(V_MIN, torch.finfo(torch.float32).max)), group)
    scale = bf16_scale_up(ug.amax(dim=-1))
    s = scale.float().unsqueeze(-1)
    r = torch.where(s > 0, ug / torch.where(s > 0, s, 1.0), 0.0).clamp_(0.0, 1.0)
    q = torch.round(r * 255.0).to(torch.uint8)
    return q.reshape(*v.shape[:-1], -1), scale


def decode_sqrt(q: Tensor, scale: Tensor, n: int, group: int = GROUP, floor_zero: bool = False) -> Tensor:
    """Inverse of :func:`encode_sqrt`; returns fp32 ``v`` of shape ``(..., n)``."""
    c = q.float()
    if floor_zero:
        c = c.clamp_min(0.5)
    u = c.reshape(*q.shape[:-1], q.shape[-1] // group, group) * (1.0 / 255.0) * scale.float().unsqueeze(-1)
    return (u * u).clamp_max_(torch.finfo(torch.float32).max).reshape(*q.shape)[..., :n]


def decode_root(q: Tensor, k: Tensor, n: int, group: int = GROUP) -> Tensor:
    """``max(q, 1/2) k``: the root ``sqrt(v)`` of :func:`encode_sqrt`'s codes with the zero-code floor, times a
    factor, for a per-group ``k = (s/255) c`` (``(..., G)``, as ``scale.float() * (1/255) * c``); fp32
    ``(..., n)``. Adam's denominator ``sqrt(v/bc2)`` is this with ``c = sqrt(1/bc2)``: one product a value."""
    c = q.float().clamp_min(0.5).reshape(*q.shape[:-1], q.shape[-1] // group, group)
    return (c * k.unsqueeze(-1)).reshape(*q.shape)[..., :n]


# ---------------------------------------------------------------------------------- factors
def hash_uniform(index: Tensor, seed: Tensor | int) -> Tensor:
    """Counter-based uniform numbers in [0, 1): a 32-bit integer hash of ``(index, seed)``.

    Pure integer arithmetic modulo 2^32 (multipliers < 2^31 so int64 products never overflow),
    so the torch and Triton versions agree bit for bit on every device.
    """
    seed_t = torch.as_tensor(seed, dtype=torch.int64, device=index.device) & _M32
    x = (index.to(torch.int64) * 0x2C1B3C6D + seed_t * 0x297A2D39 + 0x68E31DA4) & _M32
    x = x ^ (x >> 16)
    x = (x * 0x5BD1E995) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x27D4EB2F) & _M32
    x = x ^ (x >> 16)
    return (x >> 8).to(torch.float32) * (1.0 / 16777216.0)


def encode_corr(a: Tensor, seed: Tensor | int) -> tuple[Tensor, Tensor]:
    """Symmetric psd ``(..., d, d)`` -> (int8 correlation codes, fp32 diagonal ``(..., d)``).

    ``C_ij = A_ij / sqrt(A_ii A_jj)`` lies in [-1, 1] and is stored as ``floor(127 C + u)``,
    clamped to [-127, 127], with the dither ``u = hash_uniform(i*d + j, seed_b)`` for element
    (i, j) of batch entry b (``seed`` is an int or an int64 tensor broadcastable to
    ``a.shape[:-2]``); the diagonal ``max(A_ii, 0)`` is kept exactly (a row with a zero diagonal
    encodes as zeros). The error of an entry is below ``sqrt(A_ii A_jj) / 127``: it scales with
    the two rows it couples, so when ``A`` is held in its own (approximate) eigenbasis, as SCAO
    holds its factors, the directions with small eigenvalues keep their relative precision
    instead of drowning in the error of the largest row (which is what a per-row or per-tensor
    scale does).
    """
    d = a.shape[-1]
    diag = torch.diagonal(a, dim1=-2, dim2=-1).clamp_min(0.0)
    inv = torch.where(diag > 0, 1.0 / sqrt_rn(torch.where(diag > 0, diag, 1.0)), 0.0)
    c = a * inv.unsqueeze(-1) * inv.unsqueeze(-2)
    idx = torch.arange(d * d, device=a.device, dtype=torch.int64).reshape(d, d)
    seed_t = torch.as_tensor(seed, dtype=torch.int64, device=a.device)
    seed_t = seed_t.reshape(*seed_t.shape, 1, 1) if seed_t.ndim else seed_t
    q = torch.floor(c * 127.0 + hash_uniform(idx, seed_t)).clamp_(-127, 127).to(torch.int8)
    return q, diag


def decode_corr(q: Tensor, diag: Tensor) -> Tensor:
    """Inverse of :func:`encode_corr` (the diagonal comes back exactly)."""
    r = sqrt_rn(diag)
    out = q.float() * (1.0 / 127.0) * r.unsqueeze(-1) * r.unsqueeze(-2)
    torch.diagonal(out, dim1=-2, dim2=-1).copy_(diag)
    return out


# ---------------------------------------------------------------------------- master weights
def correction_range(bits: int) -> int:
    """Largest code ``R`` of the error-correction bits (127 for int8, 32767 for int16)."""
    if bits not in (8, 16):
        raise ValueError(f"correction_bits must be 8 or 16, got {bits}")
    return 127 if bits == 8 else 32767


def bf16_ulp(w: Tensor) -> Tensor:
    """Spacing of bf16 numbers at ``w`` (fp32): ``2^(E - 7)`` for biased exponent E (E=0 -> 1)."""
    e = ((w.float().view(torch.int32) >> 23) & 0xFF).clamp_min(1)
    # 2^(E-134) built from its bits (exact on every device, no pow): a normal fp32 with biased
    # exponent E-7 for E > 7, else the subnormal 2^(E+15) * 2^-149
    normal = ((e - 7) << 23).view(torch.float32)
    sub = (torch.ones_like(e) << (e + 15).clamp_max(30)).view(torch.float32)
    return torch.where(e > 7, normal, sub)


def split_master(x: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """fp32 value -> (bf16 weight, int8/int16 correction ``rho``)."""
    r = correction_range(bits)
    w = x.to(torch.bfloat16)
    err = x - w.float()
    rho = torch.round(err * (2.0 * r) / bf16_ulp(w)).clamp_(-r, r)
    return w, rho.to(torch.int8 if bits == 8 else torch.int16)


def join_master(w: Tensor, rho: Tensor) -> Tensor:
    """(bf16 weight, correction) -> fp32 value."""
    r = 127 if rho.dtype == torch.int8 else 32767
    return w.float() + rho.float() * (bf16_ulp(w) * (1.0 / (2.0 * r)))
