"""Eigenbases of the Kronecker factors: first basis, periodic refresh, adaptive rank.

Everything here works on ONE side of a BATCH of blocks (the blocks of a group whose refresh
falls due at the same step: one launch per operation for all of them), in fp32/float64, and is
pure: it takes tensors and returns a :class:`Basis` plus, per block, ``None`` or the reason it has
no trustworthy basis (the caller then keeps that block's old basis and counts the reason; the
others are unaffected). The batched per-step math lives in ``groups.py``; the owner/async
machinery in ``shard/refresh.py``.

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

import bisect
import itertools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
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
    """New bases for one side of a batch of blocks (the leading dim of every tensor): columns sorted by
    decreasing eigenvalue estimate. Blocks may keep different ranks: ``q`` is as wide as the widest,
    a block's columns past its own rank are zero (and so are its ``eig`` and ``overlap`` rows)."""

    q: Tensor  # (b, d, k) orthonormal columns, k = max(ranks)
    eig: Tensor  # (b, k) eigenvalue estimates
    ranks: list[int]  # per block: its valid columns of q
    perm: Tensor | None = None  # (b, d) SOAP path: new column i continues old column perm[i]
    overlap: Tensor | None = None  # (b, k, k_old) other paths: Q_new^T Q_old
    probes: Tensor | None = None  # (b, d, p) stream sides: probe directions for the next period
    sketch: Tensor | None = None  # (b, d, k + p) stream sides: initial P = L_model [Q, probes]
    rotation: Tensor | None = None  # (b, d, d) dense sides: Z = Q_old^T Q_new, moves the factor to the new frame

    def rows(self, sel: list[int]) -> Basis:
        """The blocks ``sel`` of the batch (their own width: as wide as their widest rank)."""
        k = max(self.ranks[j] for j in sel)
        ix = torch.tensor(sel, device=self.q.device)

        def take(t: Tensor | None, cols: bool = False) -> Tensor | None:
            if t is None:
                return None
            t = t.index_select(0, ix)
            return t[..., :k] if cols else t

        sketch = None
        if self.sketch is not None:
            kk = self.q.shape[-1]
            sketch = torch.cat([take(self.sketch[..., :kk], cols=True), take(self.sketch[..., kk:])], dim=-1)
        overlap = take(self.overlap)
        return Basis(
            q=take(self.q, cols=True),
            eig=take(self.eig, cols=True),
            ranks=[self.ranks[j] for j in sel],
            perm=take(self.perm),
            overlap=overlap[:, :k] if overlap is not None else None,
            probes=take(self.probes),
            sketch=sketch,
            rotation=take(self.rotation),
        )

    @staticmethod
    def cat(parts: list[Basis]) -> Basis:
        """One batch from several (the inverse of :meth:`rows`): widths padded with zero columns."""
        k = max(b.q.shape[-1] for b in parts)

        def cat(name: str, widen: bool = False) -> Tensor | None:
            ts = [getattr(b, name) for b in parts]
            if ts[0] is None:
                return None
            if widen:
                ts = [torch.nn.functional.pad(t, (0, k - t.shape[-1])) for t in ts]
            return torch.cat(ts)

        overlap = None
        if parts[0].overlap is not None:
            w = max(b.overlap.shape[-1] for b in parts)
            pad = [(0, w - b.overlap.shape[-1], 0, k - b.overlap.shape[-2]) for b in parts]
            overlap = torch.cat([torch.nn.functional.pad(b.overlap, p) for b, p in zip(parts, pad)])
        sketch = None
        if parts[0].sketch is not None:
            sketch = torch.cat([widen_head(b.sketch, b.q.shape[-1], k) for b in parts])
        return Basis(
            q=cat("q", widen=True),
            eig=cat("eig", widen=True),
            ranks=[r for b in parts for r in b.ranks],
            perm=cat("perm"),
            overlap=overlap,
            probes=cat("probes"),
            sketch=sketch,
            rotation=cat("rotation"),
        )


def to_device(values: Tensor | list, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """Small host data (a list or a CPU tensor) on ``device`` without waiting for it: on CUDA through
    pinned memory and a non-blocking copy (a plain ``torch.tensor(..., device=cuda)`` synchronises
    the stream, which on the refresh worker stalls its Python until its queued kernels finish)."""
    t = values if isinstance(values, Tensor) else torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return t.to(device)
    try:
        t = t.pin_memory()
    except RuntimeError:  # no pinned memory to be had: a synchronous copy, still correct
        return t.to(device)
    return t.to(device, non_blocking=True)


def widen_head(x: Tensor, k: int, width: int) -> Tensor:
    """``x`` laid out ``[k basis columns | probes]`` with the basis part zero-padded to ``width``
    columns (the stored layout of a stream side's ``qh`` and sketch, whose width is the group's)."""
    if k >= width:
        return x
    return torch.cat([torch.nn.functional.pad(x[..., :k], (0, width - k)), x[..., k:]], dim=-1)


def rank_mask(ranks: list[int], width: int, device: torch.device) -> Tensor:
    """``(b, width)`` bool: column ``c`` of block ``j`` is inside its rank ``ranks[j]``."""
    return torch.arange(width, device=device) < to_device(list(ranks), device)[:, None]


def to_host(t: Tensor) -> Tensor:
    """A copy of ``t`` on the host: the one place a refresh waits for the device (a copy even of a
    CPU tensor, so the tests count these transfers on CPU as they happen on a GPU)."""
    return t.to("cpu", copy=True)


def _finite_rows(*ts: Tensor) -> list[bool]:
    """Per block (leading dim): are all entries of all ``ts`` finite? One float64 sum per tensor and
    one host transfer (a NaN or inf survives the sums; float64 cannot overflow on fp32 data)."""
    sums = torch.stack([t.sum(dim=tuple(range(1, t.ndim)), dtype=torch.float64) for t in ts]).sum(0)
    return [math.isfinite(x) for x in to_host(sums).tolist()]


def seeded_normal(shape: tuple[int, ...], seed: int, device: torch.device) -> Tensor:
    """Gaussian matrix drawn on ``device`` from a generator seeded by ``seed`` (reproducible on resume;
    CUDA's generator draws other numbers than the CPU's). Drawn where it is used: drawn on the host,
    pinned and copied, the probes of the 405M GPT's stream refreshes cost the refresh worker over 4 ms
    of host time per step (``torch.randn`` alone 4.0 ms, cProfile in BENCHMARKS.md §0d) while the GPU
    waited for them."""
    gen = torch.Generator(device=device).manual_seed(seed & 0x7FFFFFFFFFFFFFFF)
    return torch.randn(shape, generator=gen, dtype=torch.float32, device=device)


def select_rank(eig: Tensor | Sequence[float], total: float, spectral_mass: float, rank_min: int, rank_max: int) -> int:
    """Fewest leading eigenvalues holding ``spectral_mass`` of ``total``, clamped.

    ``eig`` is sorted descending; if even all of them fall short of the target, all are kept
    (the next refresh's probes can grow the basis). Plain Python on the host (a refresh calls this
    per block after its one transfer; torch ops here cost the worker ~15 dispatches per block): the
    running sum in float64, one addition after another, and the first index reaching the target.
    """
    vals = eig.tolist() if isinstance(eig, Tensor) else list(eig)
    n = len(vals)
    hi = max(1, min(rank_max, n))
    if spectral_mass >= 1.0 or total <= 0.0:
        k = n
    else:
        cum = list(itertools.accumulate(max(float(x), 0.0) for x in vals))
        k = bisect.bisect_left(cum, spectral_mass * total) + 1
    return max(min(rank_min, hi), min(k, hi))


def _finite(*ts: Tensor) -> bool:
    """All entries of all (floating) ``ts`` finite: one float64 sum per tensor and one host sync per
    device (a NaN or inf survives the sums; float64 cannot overflow on fp32 data)."""
    sums: dict[torch.device, list[Tensor]] = {}
    for t in ts:
        sums.setdefault(t.device, []).append(t.sum(dtype=torch.float64))
    return all(math.isfinite(float(torch.stack(v).sum())) for v in sums.values())


def safe_eigh(a: Tensor, checked: bool = False) -> tuple[Tensor, Tensor]:
    """Eigenpairs of symmetric ``a`` (or a batch) sorted descending (in ``a``'s precision, fp32 retried in
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
            return vals.flip(-1).to(a.dtype), vecs.flip(-1).to(a.dtype)
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


def fast_qr(a: Tensor) -> tuple[Tensor, list[str | None]]:
    """``Q`` of ``a = QR`` for a batch ``a`` (b x d x k, k <= d, full rank), by Cholesky-QR twice in
    float64; with it, per block, ``None`` or why no ``Q`` could be computed (its rows are then zero).

    Scaling the columns first leaves ``Q`` unchanged (``R`` absorbs the scales) and makes the
    nearly diagonal factors of a refresh well conditioned; two passes of ``X <- X chol(X^T X)^-1``
    then give ``Q`` orthonormal to float64 rounding: the same ``Q`` as Householder up to column
    signs, in a few launches instead of cuSOLVER's panel loop (the largest GPU cost of a dense
    refresh on an H100). A block it cannot do (rank deficiency, condition above ~1e7, non-finite
    input) goes to :func:`safe_qr` on its own, decided with one host sync for the batch.
    """
    x = a.double()
    x = x / torch.linalg.vector_norm(x, dim=-2, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    bad = torch.zeros(a.shape[0], dtype=torch.int32, device=a.device)
    for _ in range(2):
        r, info = torch.linalg.cholesky_ex(x.mT @ x, upper=True)
        bad = bad + info.abs()
        x = torch.linalg.solve_triangular(r, x, upper=True, left=False)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    err = (x.mT @ x - eye).abs().amax(dim=(-2, -1))
    ok = to_host((bad == 0) & (err < 1e-10)).tolist()  # NaN compares False
    q = x.to(a.dtype)
    reasons: list[str | None] = [None] * a.shape[0]
    for j in (j for j, good in enumerate(ok) if not good):
        try:
            q[j] = safe_qr(a[j])
        except BasisError as e:
            q[j] = 0.0
            reasons[j] = e.reason
    return q, reasons


def complement_probes(q: Tensor, p: int, seeds: list[int]) -> Tensor:
    """``p`` orthonormal random directions orthogonal to the columns of ``q`` (b x d x k, zero columns
    allowed), block ``j``'s drawn from ``seeds[j]``; a block whose probes come out non-finite gets
    zero probes (no probe directions until its next refresh)."""
    b, d, k = q.shape
    if p > d - k:
        raise ValueError(f"complement_probes: {p} probes do not fit beside {k} columns in dimension {d}")
    w = torch.stack([seeded_normal((d, p), s, q.device) for s in seeds])
    for _ in range(2):  # twice is enough (Kahan)
        w = w - q @ (q.mT @ w)
    try:
        probes = torch.linalg.qr(w).Q  # thin: one panel, cheap as it is
    except RuntimeError:
        return w.new_zeros(b, d, p)
    ok = _finite_rows(probes)
    if not all(ok):
        probes = probes * torch.tensor(ok, dtype=probes.dtype, device=probes.device)[:, None, None]
        probes = probes.nan_to_num(0.0, 0.0, 0.0)
    return probes


# --------------------------------------------------------------------------------- dense
def first_basis_dense(fac: Tensor) -> Basis:
    """``eigh`` of the factor of ONE block (held in the identity frame before the first basis)."""
    total = float(torch.diagonal(fac).sum())
    if not total > 0.0:  # all-zero gradient (e.g. LoRA A while B = 0): nothing to learn a basis from
        raise BasisError("zero factor" if total == 0.0 else "non-finite factor")
    vals, vecs = safe_eigh(fac)
    vecs = vecs.contiguous()[None]
    return Basis(q=vecs, eig=vals[None].clone(), ranks=[fac.shape[-1]], rotation=vecs)


def refresh_dense(fac_rot: Tensor, q: Tensor) -> tuple[Basis, list[str | None]]:
    """SOAP's refresh of a batch of dense sides, carried out in the current eigenbasis frame.

    ``fac_rot = Q^T L Q`` (b x d x d) is the factor as SCAO stores it (in the frame of the current
    basis ``Q``). SOAP sorts ``Q``'s columns by their Rayleigh quotients ``diag(Q^T L Q)``, takes one
    power step ``L Q_sorted`` and a QR. Since ``L Q_sorted = Q fac_rot[:, perm]`` and ``Q`` is
    orthonormal, that is ``Q_new = Q Z`` with ``Z = qr(fac_rot[:, perm])``: the same basis from a
    d x d QR of the rotated factor. The factor moves to the new frame as ``Z^T fac_rot Z``.
    Returns the bases and, per block, ``None`` or why it keeps its old basis.
    """
    est = torch.diagonal(fac_rot, dim1=-2, dim2=-1)
    perm = torch.argsort(est, dim=-1, descending=True)
    z, reasons = fast_qr(torch.take_along_dim(fac_rot, perm[:, None, :], dim=-1))  # its one host sync
    for j, why in enumerate(reasons):  # also sees a non-finite factor
        if why is not None and not _finite(fac_rot[j], q[j]):
            reasons[j] = "dense refresh: non-finite factor or basis"
    eig = (z * (fac_rot @ z)).sum(-2)
    return Basis(q=q @ z, eig=eig, ranks=[fac_rot.shape[-1]] * fac_rot.shape[0], perm=perm, rotation=z), reasons


# -------------------------------------------------------------------------------- stream
HOST_EIGH_MAX = int(os.environ.get("SCAO_HOST_EIGH_MAX", "0"))
"""Nystrom Grams up to this size (``k + p``) are diagonalised on the host; by default none.
Measured on an H100 (43M GPT, ``python -m bench.step_profile --size small``): host LAPACK on the
refresh thread made ``step()`` 72.5 ms against 36.6 ms with the device's eigh (BENCHMARKS.md)."""
GRAM_EIGH_STREAMS = int(os.environ.get("SCAO_GRAM_EIGH_STREAMS", "4"))
"""Host threads (each with its own CUDA stream) that diagonalise a batch of Nystrom Grams on the GPU
in parallel; 1 = one after the other. cuSOLVER's ``syevd`` does one small matrix at a time on a
single thread block and ``torch.linalg.eigh`` waits for it, so a batch ran serially: 16 Grams of
144 x 144 took 17.3 ms on an H200, 7.9 ms over 4 streams (``python -m bench.eigh_probe``,
BENCHMARKS.md). A float32 ``eigh`` is no help: torch runs Jacobi (``syevj``) for it, 61 ms."""
_EIGH_POOLS: dict[int, ThreadPoolExecutor] = {}
_EIGH_STREAMS: dict[tuple[int, int], torch.cuda.Stream] = {}


def eigh_in_parallel(gram: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """:func:`safe_eigh` (``checked``) of a batch cut into ``n`` chunks, each on its own host thread and,
    for CUDA, its own stream (ordered after the current one, which then waits for them all). Each
    matrix gets the same solver call as in one batch, so the results are the same bits. A chunk's
    :class:`BasisError` is raised here."""
    n = min(n, gram.shape[0])
    if n <= 1:
        return safe_eigh(gram, checked=True)
    pool = _EIGH_POOLS.get(n) or _EIGH_POOLS.setdefault(n, ThreadPoolExecutor(n, thread_name_prefix="scao-eigh"))
    cuda = gram.device.type == "cuda"
    here = torch.cuda.current_stream(gram.device) if cuda else None

    def stream(j: int) -> torch.cuda.Stream:
        key = (gram.device.index or 0, j)
        return _EIGH_STREAMS.get(key) or _EIGH_STREAMS.setdefault(key, torch.cuda.Stream(gram.device))

    def one(j: int, part: Tensor) -> tuple[Tensor, Tensor]:
        if not cuda:
            return safe_eigh(part, checked=True)
        stream(j).wait_stream(here)  # the Grams are ready
        with torch.cuda.stream(stream(j)):
            vals, vecs = safe_eigh(part, checked=True)
        for t in (vals, vecs):
            t.record_stream(here)  # made on the chunk's stream, used on ``here``
        return vals, vecs

    futures = [pool.submit(one, j, part) for j, part in enumerate(gram.chunk(n))]
    wait(futures)  # all chunks done before a failing one raises: none still runs when the caller retries
    parts = [f.result() for f in futures]
    if cuda:
        for j in range(len(futures)):  # ``chunk`` may give fewer than ``n`` parts
            here.wait_stream(stream(j))
    return torch.cat([v for v, _ in parts]), torch.cat([q for _, q in parts])


NYSTROM_SHIFTS = 6
"""Tries of the Nystrom shift, tenfold each: the last is 1e5 x the first (fp32 rounding of ``P``),
about half of ``||P||_F`` at d = 2048 — a last resort that keeps only the dominant directions."""


def _gram_eigh(gram: Tensor) -> tuple[Tensor, Tensor, list[int]]:
    """Descending eigenpairs of a batch of float64 Grams (see :data:`GRAM_EIGH_STREAMS`), and the blocks
    LAPACK could not do.

    A batch LAPACK rejects is retried block by block, so one bad block cannot fail the others; a
    block that fails alone gets zero eigenvalues and identity vectors (its result is discarded)."""
    on = gram.device
    if gram.shape[-1] <= HOST_EIGH_MAX:
        gram = gram.cpu()
    try:
        vals, vecs = eigh_in_parallel(gram, GRAM_EIGH_STREAMS if gram.device.type == "cuda" else 1)
        return vals.to(on), vecs.to(on), []
    except BasisError:
        pass
    vals, vecs = torch.zeros(gram.shape[:-1], dtype=gram.dtype), torch.eye(gram.shape[-1], dtype=gram.dtype)
    vals, vecs = vals.to(gram.device), vecs.to(gram.device).repeat(gram.shape[0], 1, 1)
    failed = []
    for j, g in enumerate(gram):
        try:
            vals[j], vecs[j] = safe_eigh(g, checked=True)
        except BasisError:
            failed.append(j)
    return vals.to(on), vecs.to(on), failed


def nystrom(qh: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor, list[str | None]]:
    """Top eigenpairs of psd ``L`` from ``P = L Qh`` for a batch (``Qh`` b x d x s with orthonormal
    or zero columns; zero columns of ``Qh`` must have zero columns of ``P``). Descending.

    ``F = (P + nu Qh) C^-T`` with ``C C^T = Qh^T (P + nu Qh)`` gives ``L ~ F F^T``; its eigenpairs
    come from the s x s Gram ``F^T F = V S^2 V^T`` (``U = F V / S``), in float64, instead of an SVD
    of the tall ``F`` (slow on GPUs). Directions with ``S`` at rounding level get zero columns, and
    so do the zero columns of ``Qh`` (an identity block in ``C``: the others' result is unchanged).

    The shift ``nu`` starts at fp32 rounding of ``P`` (Tropp et al.) and grows tenfold, per block,
    while ``Qh^T (P + nu Qh)`` is not positive definite, up to ``NYSTROM_SHIFTS`` tries: the stored
    sketch carries more error than that (bf16 storage of ``Qh`` and ``P``, TF32 products on GPUs,
    which made every refresh of the 405M GPT fail on an H100), and eigenvalues below the shift
    are noise anyway (they come back as zero).

    Returns eigenvalues (b x s), vectors (b x d x s), per block on the device the number of nonzero
    columns of ``Qh`` where both are finite and -1 where not (for the caller's one transfer), and per
    block ``None`` or why it has no result.
    """
    b, d, s = qh.shape
    y0, q = p.double(), qh.double()
    reasons: list[str | None] = [None] * b
    norms = torch.linalg.vector_norm(y0, dim=(-2, -1))
    for j, norm in enumerate(to_host(norms).tolist()):  # the one sync before the loop; a bad qh shows at the end
        if not math.isfinite(norm):
            reasons[j] = "nystrom: non-finite sketch"
        elif not norm > 0.0:
            reasons[j] = "nystrom: zero sketch"
    nu = torch.finfo(torch.float32).eps * d**0.5 * norms
    dead = [j for j, why in enumerate(reasons) if why is not None]
    if dead:  # a stand-in (L = I) keeps the batched math finite; the block's result is discarded
        ix = torch.tensor(dead, device=q.device)
        y0 = y0.index_copy(0, ix, q.index_select(0, ix))
        nu = nu.index_fill(0, ix, 1.0)
    nu = nu[:, None, None]
    zero_cols = q.abs().amax(dim=-2) == 0
    unused = torch.diag_embed(zero_cols.to(q.dtype))  # zero columns: identity rows of the Cholesky
    for _ in range(NYSTROM_SHIFTS):
        y = y0 + nu * q
        bm = q.mT @ y
        c, info = torch.linalg.cholesky_ex(0.5 * (bm + bm.mT) + unused)
        failing = info != 0
        if not bool(failing.any()):
            break
        nu = torch.where(failing[:, None, None], 10.0 * nu, nu)
    else:
        for j in to_host(failing).nonzero().flatten().tolist():
            reasons[j] = reasons[j] or "nystrom: cholesky"
        eye = torch.eye(s, dtype=c.dtype, device=c.device)
        c = torch.where(failing[:, None, None], eye, c)
        y = torch.where(failing[:, None, None], q, y)
    f = torch.linalg.solve_triangular(c, y.mT, upper=False).mT  # y C^{-T}
    s2, v, failed = _gram_eigh(f.mT @ f)  # float64 in, float64 out; checked below
    for j in failed:
        reasons[j] = reasons[j] or "eigh: did not converge"
    s2 = s2.clamp_min(0.0)
    sig = s2.sqrt()
    keep = sig > sig[:, :1] * 1e-7
    u = (f @ v) * torch.where(keep, 1.0 / torch.where(keep, sig, 1.0), 0.0)[:, None, :]
    vals = (s2 - nu[:, :, 0]).clamp_min(0.0).float()
    u = u.float()
    finite = torch.isfinite(vals).all(-1) & torch.isfinite(u.sum(dim=(-2, -1), dtype=torch.float64))
    live = torch.where(finite, (~zero_cols).sum(-1), -1)
    return vals, u, live, reasons


def refresh_stream(
    qh: Tensor,
    p: Tensor,
    trace: Tensor,
    k_old: list[int],
    spectral_mass: float,
    rank_min: int,
    rank_max: int,
    oversample: int,
    seeds: list[int],
) -> tuple[Basis, list[str | None]]:
    """Refresh of a batch of stream sides from their tracked bases ``qh`` (b x d x s) and ``P ~ L qh``.

    Block ``j``'s previous basis is its first ``k_old[j]`` columns of ``qh`` (0 at the first refresh,
    when ``qh`` holds random probes only); its columns from there up to ``max(k_old)`` must be zero
    (the stored layout: bases padded to the group's width, then the probes). ``trace`` (``tr L``,
    b) comes to the host with the eigenvalues, in the one transfer the rank choice needs. Returns
    the bases and, per block, ``None`` or why it keeps its old basis.
    """
    b, d, s = qh.shape
    vals, u, live, reasons = nystrom(qh, p)
    host = to_host(torch.cat([vals.double(), trace.double().reshape(b, 1), live.double().reshape(b, 1)], 1))
    ks, rhos = [], []
    for j, row in enumerate(host.tolist()):  # Python floats: no torch dispatch per block
        n_live = int(row[s + 1])  # the block's own columns: the rest are padding (zero eigenvalues)
        eig, total = row[: max(n_live, 1)], row[s]
        if reasons[j] is None and n_live < 0:
            reasons[j] = "nystrom: non-finite result"
        if reasons[j] is None and not total > 0.0:
            reasons[j] = "stream: zero trace" if total == 0.0 else "stream: non-finite trace"
        k = select_rank(eig, total, spectral_mass, rank_min, rank_max) if reasons[j] is None else rank_min
        ks.append(k)
        rhos.append(max(total - math.fsum(eig[:k]), 0.0) / max(d - k, 1) if reasons[j] is None else 0.0)
    kmax = max(ks)
    live = rank_mask(ks, kmax, u.device)  # (b, kmax)
    qn = torch.where(live[:, None, :], u[..., :kmax], 0.0).nan_to_num(0.0, 0.0, 0.0)
    lam = torch.where(live, vals[:, :kmax], 0.0).nan_to_num(0.0, 0.0, 0.0)
    probes = complement_probes(qn, oversample, seeds)
    rho = to_device(rhos, qn.device, qn.dtype)[:, None, None]
    sketch = torch.cat([qn * lam[:, None, :], rho * probes], dim=-1)
    w = max(k_old)
    overlap = qn.mT @ qh[..., :w] if w else None
    return Basis(q=qn, eig=lam, ranks=ks, overlap=overlap, probes=probes, sketch=sketch), reasons


def first_probe_stream(d: int, s: int, seed: int, device: torch.device) -> Tensor:
    """Random orthonormal ``(d, s)`` probe used to sketch the first factor of a stream side."""
    return safe_qr(seeded_normal((d, min(s, d)), seed, device))  # full rank with probability one


# ----------------------------------------------------------------------- second moment
def transport_second_moment(v: Tensor, basis: Basis, axis: int, fill: Tensor) -> Tensor:
    """Carry a batch of rotated second moments ``v`` (b x r x c) across a basis change along ``axis``
    (1: rows, 2: columns); ``fill`` is per block (b).

    SOAP path (``basis.perm``): permute. Otherwise each new direction inherits the old entries
    weighted by its squared overlaps with the old directions (a permutation when the bases only
    reorder), and the rest of its weight (the part that came from the complement) is ``fill``.
    The result has ``basis.q``'s width along ``axis``; entries past a block's rank are left to the
    caller to clear.
    """
    vt = v.movedim(axis, 1)
    k_new = basis.q.shape[-1]
    if basis.perm is not None:
        out = torch.take_along_dim(vt, basis.perm.reshape(*basis.perm.shape, *([1] * (vt.ndim - 2))), dim=1)
    elif basis.overlap is not None and basis.overlap.numel():
        w = basis.overlap.square()  # (b, k_new, k_old)
        k_old = w.shape[-1]
        flat = vt[:, :k_old].reshape(vt.shape[0], k_old, -1)
        out = (w @ flat).reshape(vt.shape[0], k_new, *vt.shape[2:])
        rest = (1.0 - w.sum(-1)).clamp_min(0.0) * fill.reshape(-1, 1)
        out = out + rest.reshape(*rest.shape, *([1] * (vt.ndim - 2)))
    else:
        out = fill.to(v.dtype).reshape(-1, *([1] * (vt.ndim - 1))).expand(vt.shape[0], k_new, *vt.shape[2:]).clone()
    return out.movedim(1, axis).contiguous()
