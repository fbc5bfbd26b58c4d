"""Eigenbases of the Kronecker factors: first basis, periodic refresh, adaptive rank.

Everything here works on ONE side of ONE block, in fp32, and is pure: it takes tensors and
returns a :class:`Basis`, or raises :class:`BasisError` (with a reason) when the numbers
cannot be trusted; the caller then keeps the old basis and counts the reason. The batched per-step math lives in
``groups.py``; the owner/async machinery in ``shard/refresh.py``.

Notation: ``L`` is the EMA factor of one side (``G G^T`` for rows, ``G^T G`` for columns),
``Q`` (d x k) its tracked orthonormal eigenvectors, sorted by decreasing eigenvalue.

* **Dense sides** (d <= ``full_factor_dim``) hold the whole factor, in the frame of their
  current (full) basis: ``Q^T L Q``, nearly diagonal, which is what lets it live in int8 without
  losing the small eigenvalues (see ``quant.encode_corr``). The first basis is
  ``torch.linalg.eigh(L)``; a refresh is SOAP's: sort the columns of ``Q`` by the Rayleigh
  quotients, one power step and a QR (the second moment is permuted with the sort, not
  rotated). Dense sides keep every eigenvector: their d x d factor costs as much as the basis,
  and on a small GPT truncating them at 99% of the trace cost 0.12 nats (DESIGN.md section 5's
  warning, measured: BENCHMARKS.md).
* **Stream sides** (d > ``full_factor_dim``) never hold ``L``. Between refreshes they keep
  ``P = EMA(L Qh)`` for the fixed tracked basis ``Qh = [Q, Omega]`` (k basis columns plus p
  probes), one extra thin matmul per step, O(d (k+p)) memory. A refresh recovers the top
  eigenpairs of ``L`` from ``(Qh, P)`` with the stabilised single-pass Nystrom approximation
  (Tropp, Yurtsever, Udell, Cevher 2017, alg. 3): ``L ~ P (Qh^T P)^+ P^T``. Like Frequent
  Directions (Sketchy, Feinberg et al. 2023) it costs O(d k) memory; unlike FD it needs no SVD
  per step. The part of ``L`` outside ``span(Qh)`` at a refresh is carried as an isotropic
  model ``rho (I - Q Q^T)`` with ``rho`` the untracked trace per dimension.
* **Adaptive rank** (stream sides): keep the fewest leading eigenvectors whose eigenvalues
  hold at least ``spectral_mass`` of ``trace(L)``, clamped to ``[rank_min, rank_max]``. 0.95 is
  too little (DESIGN.md section 5: SOAP cut at 95% lost most of its edge over AdamW; 99%
  matched full rank), so the default is 0.99.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor


class BasisError(Exception):
    """No trustworthy basis from these numbers; ``reason`` names the step that failed.

    Callers keep the previous basis (the identity before the first one) and count the reason.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Basis:
    """A new basis for one side: columns sorted by decreasing eigenvalue estimate."""

    q: Tensor  # (d, k) orthonormal columns
    eig: Tensor  # (k,) eigenvalue estimates
    perm: Tensor | None = None  # SOAP path: new column i continues old column perm[i]
    overlap: Tensor | None = None  # other paths: (k_new, k_old) = Q_new^T Q_old
    probes: Tensor | None = None  # stream sides: (d, p) probe directions for the next period
    sketch: Tensor | None = None  # stream sides: (d, k+p) initial P = L_model [Q, probes]
    rotation: Tensor | None = None  # dense sides: Z = Q_old^T Q_new, moves the stored factor to the new frame


def seeded_normal(shape: tuple[int, ...], seed: int, device: torch.device) -> Tensor:
    """Gaussian matrix drawn from a generator seeded by ``seed`` (reproducible on resume)."""
    gen = torch.Generator(device="cpu").manual_seed(seed & 0x7FFFFFFFFFFFFFFF)
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device)


def select_rank(eig: Tensor, total: float, spectral_mass: float, rank_min: int, rank_max: int) -> int:
    """Fewest leading eigenvalues holding ``spectral_mass`` of ``total``, clamped.

    ``eig`` is sorted descending; if even all of them fall short of the target, all are kept
    (the next refresh's probes can grow the basis).
    """
    n = eig.numel()
    hi = max(1, min(rank_max, n))
    if spectral_mass >= 1.0 or total <= 0.0:
        k = n
    else:
        cum = torch.cumsum(eig.clamp_min(0.0).double().cpu(), 0)
        k = int(torch.searchsorted(cum, torch.tensor([spectral_mass * total], dtype=cum.dtype)).item()) + 1
    return max(min(rank_min, hi), min(k, hi))


def _finite(*ts: Tensor) -> bool:
    """All entries of all (floating) ``ts`` finite: one float64 sum per tensor and one host sync per
    device (a NaN or inf survives the sums; float64 cannot overflow on fp32 data)."""
    sums: dict[torch.device, list[Tensor]] = {}
    for t in ts:
        sums.setdefault(t.device, []).append(t.sum(dtype=torch.float64))
    return all(math.isfinite(float(torch.stack(v).sum())) for v in sums.values())


def safe_eigh(a: Tensor, checked: bool = False) -> tuple[Tensor, Tensor]:
    """Eigenpairs of symmetric ``a`` sorted descending (in ``a``'s precision, fp32 retried in
    float64, as distributed_shampoo does). Raises :class:`BasisError`.

    ``checked=True``: the caller vouches for ``a`` and checks the result itself (no host syncs
    here, unless an fp32 result must be checked before a float64 retry)."""
    if not checked and not _finite(a):
        raise BasisError("eigh: non-finite input")
    dtypes = (torch.float64,) if a.dtype == torch.float64 else (torch.float32, torch.float64)
    for n, dtype in enumerate(dtypes, 1):
        try:
            vals, vecs = torch.linalg.eigh(a.to(dtype))
        except RuntimeError:  # torch._C._LinAlgError subclasses RuntimeError
            continue
        if (checked and n == len(dtypes)) or _finite(vals, vecs):
            return vals.flip(0).to(a.dtype), vecs.flip(1).to(a.dtype)
    raise BasisError("eigh: did not converge")


def safe_qr(a: Tensor) -> Tensor:
    """``Q`` of ``a = QR``. Raises :class:`BasisError`."""
    try:
        q = torch.linalg.qr(a).Q
    except RuntimeError as e:
        raise BasisError("qr: failed") from e
    if not _finite(q):
        raise BasisError("qr: non-finite result")
    return q


def fast_qr(a: Tensor) -> Tensor:
    """``Q`` of ``a = QR`` (``a`` d x k, k <= d, full rank), by Cholesky-QR twice in float64.

    Scaling the columns first leaves ``Q`` unchanged (``R`` absorbs the scales) and makes the
    nearly diagonal factors of a refresh well conditioned; two passes of ``X <- X chol(X^T X)^-1``
    then give ``Q`` orthonormal to float64 rounding: the same ``Q`` as Householder up to column
    signs, in a few launches instead of cuSOLVER's panel loop (the largest GPU cost of a dense
    refresh on an H100). Anything it cannot do (rank deficiency, condition above ~1e7, non-finite
    input) goes to :func:`safe_qr`, decided with one host sync.
    """
    x = a.double()
    x = x / torch.linalg.vector_norm(x, dim=0).clamp_min(torch.finfo(torch.float64).tiny)
    bad = torch.zeros((), dtype=torch.int32, device=a.device)
    for _ in range(2):
        r, info = torch.linalg.cholesky_ex(x.mT @ x, upper=True)
        bad = bad + info.abs()
        x = torch.linalg.solve_triangular(r, x, upper=True, left=False)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    err = (x.mT @ x - eye).abs().max()
    if bool((bad == 0) & (err < 1e-10)):  # NaN compares False
        return x.to(a.dtype)
    return safe_qr(a)


def complement_probes(q: Tensor, p: int, seed: int) -> Tensor:
    """``p`` orthonormal random directions orthogonal to the columns of ``q`` (d x k)."""
    d, k = q.shape
    p = min(p, d - k)
    if p <= 0:
        return q.new_zeros(d, 0)
    w = seeded_normal((d, p), seed, q.device)
    for _ in range(2):  # twice is enough (Kahan)
        w = w - q @ (q.T @ w)
    try:
        return safe_qr(w)  # thin: one panel, cheap as it is
    except BasisError:
        return q.new_zeros(d, 0)


# --------------------------------------------------------------------------------- dense
def first_basis_dense(fac: Tensor) -> Basis:
    """``eigh`` of the factor (held in the identity frame before the first basis)."""
    total = float(torch.diagonal(fac).sum())
    if not total > 0.0:  # all-zero gradient (e.g. LoRA A while B = 0): nothing to learn a basis from
        raise BasisError("zero factor" if total == 0.0 else "non-finite factor")
    vals, vecs = safe_eigh(fac)
    return Basis(q=vecs.contiguous(), eig=vals.clone(), rotation=vecs.contiguous())


def refresh_dense(fac_rot: Tensor, q: Tensor) -> Basis:
    """SOAP's refresh, carried out in the current eigenbasis frame.

    ``fac_rot = Q^T L Q`` is the factor as SCAO stores it (in the frame of the current basis
    ``Q``). SOAP sorts ``Q``'s columns by their Rayleigh quotients ``diag(Q^T L Q)``, takes one
    power step ``L Q_sorted`` and a QR. Since ``L Q_sorted = Q fac_rot[:, perm]`` and ``Q`` is
    orthonormal, that is ``Q_new = Q Z`` with ``Z = qr(fac_rot[:, perm])``: the same basis from a
    d x d QR of the rotated factor. The factor moves to the new frame as ``Z^T fac_rot Z``.
    """
    est = torch.diagonal(fac_rot)
    perm = torch.argsort(est, descending=True)
    try:
        z = fast_qr(fac_rot[:, perm])  # its one host sync also sees a non-finite factor
    except BasisError:
        if not _finite(fac_rot, q):
            raise BasisError("dense refresh: non-finite factor or basis") from None
        raise  # (``q`` is the stored basis: finite since the refresh that made it)
    eig = (z * (fac_rot @ z)).sum(0)
    return Basis(q=q @ z, eig=eig, perm=perm, rotation=z)


# -------------------------------------------------------------------------------- stream
HOST_EIGH_MAX = int(os.environ.get("SCAO_HOST_EIGH_MAX", "0"))
"""Nystrom Grams up to this size (``k + p``) are diagonalised on the host; by default none.
Measured on an H100 (43M GPT, ``python -m bench.step_profile --size small``): host LAPACK on the
refresh thread made ``step()`` 72.5 ms against 36.6 ms with the device's eigh (BENCHMARKS.md)."""
NYSTROM_SHIFTS = 6
"""Tries of the Nystrom shift, tenfold each: the last is 1e5 x the first (fp32 rounding of ``P``),
about half of ``||P||_F`` at d = 2048 — a last resort that keeps only the dominant directions."""


def nystrom(qh: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """Top eigenpairs of psd ``L`` from ``P = L Qh`` (Qh orthonormal d x s). Descending.

    ``F = (P + nu Qh) C^-T`` with ``C C^T = Qh^T (P + nu Qh)`` gives ``L ~ F F^T``; its eigenpairs
    come from the s x s Gram ``F^T F = V S^2 V^T`` (``U = F V / S``), in float64, instead of an SVD
    of the tall ``F`` (slow on GPUs). Directions with ``S`` at rounding level get zero columns.

    The shift ``nu`` starts at fp32 rounding of ``P`` (Tropp et al.) and grows tenfold while
    ``Qh^T (P + nu Qh)`` is not positive definite, up to ``NYSTROM_SHIFTS`` tries: the stored
    sketch carries more error than that (bf16 storage of ``Qh`` and ``P``, TF32 products on GPUs,
    which made every refresh of the 405M GPT fail on an H100), and eigenvalues below the shift
    are noise anyway (they come back as zero).
    """
    y0, q = p.double(), qh.double()
    norm = float(torch.linalg.vector_norm(y0))  # the one sync before the loop; a bad qh shows at the end
    if not math.isfinite(norm):
        raise BasisError("nystrom: non-finite sketch")
    nu = torch.finfo(torch.float32).eps * qh.shape[0] ** 0.5 * norm
    if not nu > 0.0:
        raise BasisError("nystrom: zero sketch")
    for _ in range(NYSTROM_SHIFTS):
        y = y0 + nu * q
        b = q.T @ y
        c, info = torch.linalg.cholesky_ex(0.5 * (b + b.T))
        if int(info) == 0:
            break
        nu *= 10.0
    else:
        raise BasisError("nystrom: cholesky")
    f = torch.linalg.solve_triangular(c, y.T, upper=False).T  # y C^{-T}
    gram = f.T @ f
    if gram.shape[0] <= HOST_EIGH_MAX:
        s2, v = (t.to(f.device) for t in safe_eigh(gram.cpu(), checked=True))
    else:
        s2, v = safe_eigh(gram, checked=True)  # float64 in, float64 out; checked below
    s2 = s2.clamp_min(0.0)
    sig = s2.sqrt()
    keep = sig > sig[0] * 1e-7
    u = (f @ v) * torch.where(keep, 1.0 / torch.where(keep, sig, 1.0), 0.0)
    vals = (s2 - nu).clamp_min(0.0).float()
    u = u.float()
    if not _finite(vals, u):
        raise BasisError("nystrom: non-finite result")
    return vals, u


def refresh_stream(
    qh: Tensor,
    p: Tensor,
    trace: float | Tensor,
    k_old: int,
    spectral_mass: float,
    rank_min: int,
    rank_max: int,
    oversample: int,
    seed: int,
) -> Basis:
    """Refresh of a stream side from its tracked basis ``qh`` (d x s) and ``P ~ L qh``.

    ``k_old`` is how many leading columns of ``qh`` are the previous basis (0 at the first
    refresh, when ``qh`` holds random probes only). ``trace`` (``tr L``) may be a device scalar:
    it comes to the host with the eigenvalues, in the one transfer the rank choice needs.
    """
    if not isinstance(trace, Tensor) and not trace > 0.0:
        raise BasisError("stream: zero trace" if trace == 0.0 else "stream: non-finite trace")
    vals, u = nystrom(qh, p)
    tr = torch.as_tensor(trace, dtype=torch.float64, device=vals.device).reshape(1)
    host = torch.cat([vals.double(), tr]).cpu()
    total, eig = float(host[-1]), host[:-1]
    if not total > 0.0:
        raise BasisError("stream: zero trace" if total == 0.0 else "stream: non-finite trace")
    k = select_rank(eig, total, spectral_mass, rank_min, rank_max)
    qn, lam = u[:, :k].contiguous(), vals[:k].clone()
    probes = complement_probes(qn, oversample, seed)
    d = qn.shape[0]
    rho = max(total - float(eig[:k].sum()), 0.0) / max(d - k, 1)
    sketch = torch.cat([qn * lam, rho * probes], dim=1)
    overlap = qn.T @ qh[:, :k_old] if k_old else None
    return Basis(q=qn, eig=lam, overlap=overlap, probes=probes, sketch=sketch)


def first_probe_stream(d: int, s: int, seed: int, device: torch.device) -> Tensor:
    """Random orthonormal ``(d, s)`` probe used to sketch the first factor of a stream side."""
    return safe_qr(seeded_normal((d, min(s, d)), seed, device))  # full rank with probability one


# ----------------------------------------------------------------------- second moment
def transport_second_moment(v: Tensor, basis: Basis, axis: int, k_new: int, fill: float | Tensor) -> Tensor:
    """Carry the rotated second moment ``v`` across a basis change along ``axis``.

    SOAP path (``basis.perm``): permute. Otherwise each new direction inherits the old entries
    weighted by its squared overlaps with the old directions (a permutation when the bases only
    reorder), and the rest of its weight (the part that came from the complement) is ``fill``.
    """
    vt = v.movedim(axis, 0)
    if basis.perm is not None:
        out = vt.index_select(0, basis.perm)
    elif basis.overlap is not None and basis.overlap.numel():
        w = basis.overlap.square()  # (k_new, k_old)
        k_old = w.shape[1]
        flat = vt[:k_old].reshape(k_old, -1)
        out = (w @ flat).reshape(k_new, *vt.shape[1:])
        out = out + (1.0 - w.sum(1)).clamp_min(0.0).reshape(-1, *([1] * (vt.ndim - 1))) * fill
    else:
        out = torch.as_tensor(fill, dtype=v.dtype, device=v.device).expand(k_new, *vt.shape[1:]).clone()
    return out.movedim(0, axis).contiguous()
