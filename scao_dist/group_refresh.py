"""The eigenbasis refresh of a :class:`~scao_dist.groups.KronGroup`, for a batch of its blocks.

A refresh falls due for the blocks of a group that share a refresh phase (``shard/plan.py``):

* :meth:`RefreshMixin.refresh_inputs` snapshots what they need (device copies, one per state
  tensor for the whole batch, no host sync: it runs on the main thread);
* :meth:`RefreshMixin.compute_refresh` turns the snapshot into new bases (``precond``) and the
  state they imply (the second moment transported into the new bases; for dense sides the factor,
  first moment and diagonal statistics turned with the frame) — pure, it runs on the worker;
* :meth:`RefreshMixin.apply_bases` swaps the result in (copies only, unless a block stepped since).

A block whose numbers fail gets its own result in which that side keeps its old basis; the
others are unaffected. ``shard/refresh.py`` decides when each of the three runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import precond, quant
from .config import Hyper
from .stacked import block_rows, block_seed, is_run, pad_last, pad_to

if TYPE_CHECKING:
    from .groups import Side


@dataclass
class Refresh:
    """New bases for a batch of a group's blocks (``idx``), the steps of the snapshot they came from,
    and the state they imply."""

    idx: list[int]
    bases: list[precond.Basis | None]  # per side; None: that side keeps its bases
    steps: list[int]
    prepared: dict[str, Tensor] | None
    failures: list[str] = field(default_factory=list)  # why a side kept its old basis


def _inside_ranks(v: Tensor, rows: Sequence[int], cols: Sequence[int]) -> Tensor:
    """``v`` (b, r, c) with block ``j``'s entries outside ``rows[j] x cols[j]`` zeroed."""
    r, c = v.shape[-2:]
    return v * (precond.rank_mask(rows, r, v.device)[:, :, None] & precond.rank_mask(cols, c, v.device)[:, None, :])


def _snap_rows(snap: Any, sel: list[int]) -> Any:
    """The blocks ``sel`` (positions in the batch) of a refresh snapshot."""
    ix = None

    def take(x: Any, per_block: bool) -> Any:
        nonlocal ix
        if isinstance(x, Tensor):
            if ix is None:
                ix = torch.tensor(sel, device=x.device)
            return x.index_select(0, ix)
        if isinstance(x, dict):
            return {k: take(v, per_block) for k, v in x.items()}
        if isinstance(x, list) and per_block:
            return [x[j] for j in sel]
        if isinstance(x, list):
            return [take(v, True) if isinstance(v, list | dict | Tensor) else v for v in x]
        return x

    out = {k: take(v, k in ("idx", "steps")) for k, v in snap.items() if k not in ("ranks", "K")}
    out["ranks"] = [[r[j] for j in sel] for r in snap["ranks"]]
    out["K"] = snap["K"]
    return out


class RefreshMixin:
    """Refresh methods of :class:`~scao_dist.groups.KronGroup` (which holds ``t``, ``sides``, ``specs``,
    ``steps``, ``mom``, ``vp``, ``cfg``, ``bdt``, ``m_dim``, ``n_dim``, ``put_back`` and ``_basis_changed``)."""

    t: dict[str, Tensor]

    def identity_basis(self, side: Side, hp: Hyper, i: int) -> precond.Basis:
        """Fallback when no basis can be computed yet: the first k axes (counted as a failure)."""
        k = side.rank_cap(hp.rank_max) if side.mode == "stream" else side.d
        q = torch.eye(side.d, k, device=self.device)[None]  # dense: the identity frame the factor is in already
        basis = precond.Basis(q=q, eig=torch.zeros(1, k, device=self.device), ranks=[k])
        if side.mode == "stream":
            basis.probes = precond.complement_probes(q, side.p, [block_seed(self.specs[i].index, side.name, -1)])
            basis.sketch = torch.zeros(1, side.d, k + side.p, device=self.device)
        return basis

    def refresh_inputs(self, idx: Sequence[int]) -> dict[str, Any]:
        """Snapshot of what the refresh of blocks ``idx`` needs, stacked (one copy per state tensor for
        the whole batch): device copies only (no host sync), so the main thread never waits here;
        the worker turns them into numbers."""
        idx = list(idx)
        t = self.t

        def take(x: Tensor) -> Tensor:
            return block_rows(x, idx).clone() if is_run(idx) else block_rows(x, idx)

        snap: dict[str, Any] = {
            "idx": idx,
            "steps": [self.steps[i] for i in idx],
            "ranks": [[s.ranks[i] for i in idx] for s in self.sides],
            "K": [s.K for s in self.sides],
            "v": {k: take(t[k]) for k in self.vp.names()},
            # the fill value's candidates (v's own mean is taken on the worker)
            "fill": torch.stack([block_rows(t["res_row"], idx).mean(-1), block_rows(t["g_row"], idx).mean(-1)], dim=-1),
            "sides": [],
        }
        if any(side.mode == "dense" for side in self.sides):  # frame-coordinate state moves with the frame
            keys = (*self.mom.names(), "g_row", "g_col", "res_row", "res_col")
            snap["frame_state"] = {k: take(t[k]) for k in keys}
        for side in self.sides:
            n = side.name
            if side.mode == "dense":
                fac = {key: take(t[key]) for key in self._factor_keys(side)}
                snap["sides"].append(dict(fac=fac, q=take(t[f"{n}.q"])))
            elif side.mode == "stream":
                snap["sides"].append({key: take(t[f"{n}.{key}"]) for key in ("qh", "sketch", "trace")})
            else:
                snap["sides"].append(None)
        return snap

    def _factor_keys(self, side: Side) -> tuple[str, ...]:
        n = side.name
        return (f"{n}.fac.codes", f"{n}.fac.diag") if self.cfg.q("factors") else (f"{n}.fac",)

    def _decode_factor(self, side: Side, fac: dict[str, Tensor]) -> Tensor:
        n = side.name
        if self.cfg.q("factors"):
            return quant.decode_corr(fac[f"{n}.fac.codes"], fac[f"{n}.fac.diag"])
        return fac[f"{n}.fac"].clone()

    def _encode_factor(self, side: Side, fac: Tensor, seed: int | Tensor) -> dict[str, Tensor]:
        n = side.name
        if self.cfg.q("factors"):  # plain torch: this runs on the refresh thread, Triton stays on the main one
            codes, diag = quant.encode_corr(fac, seed)
            return {f"{n}.fac.codes": codes, f"{n}.fac.diag": diag}
        return {f"{n}.fac": fac}

    def compute_refresh(self, snap: dict[str, Any], hp: Hyper) -> list[Refresh]:
        """New bases for the blocks of a snapshot, and the state they imply (pure: runs on a worker
        thread). One batch for the blocks whose every side succeeded; a block with a failed side
        gets its own result, in which that side keeps its old basis."""
        idx, n = snap["idx"], len(snap["idx"])
        per_side: list[tuple[precond.Basis | None, list[str | None]]] = []
        for side, inp, ranks in zip(self.sides, snap["sides"], snap["ranks"]):
            if inp is None:
                per_side.append((None, [None] * n))
                continue
            try:
                per_side.append(self._side_bases(side, inp, ranks, idx, snap["steps"], hp))
            except (precond.BasisError, torch.linalg.LinAlgError) as e:  # the whole batch keeps its bases
                why = e.reason if isinstance(e, precond.BasisError) else f"{side.mode} refresh: linalg error"
                per_side.append((None, [why] * n))
        failed = [j for j in range(n) if any(why[j] for _, why in per_side)]
        good = [j for j in range(n) if j not in failed]
        out = []
        for sel in ([good] if good else []) + [[j] for j in failed]:
            bases = [
                None if basis is None or why[sel[0]] is not None else basis if len(sel) == n else basis.rows(sel)
                for basis, why in per_side
            ]
            sub = snap if len(sel) == n else _snap_rows(snap, sel)
            failures = [why[sel[0]] for _, why in per_side if why[sel[0]] is not None]
            out.append(Refresh([idx[j] for j in sel], bases, sub["steps"], self._prepare(bases, sub), failures))
        return out

    def _side_bases(
        self, side: Side, inp: dict[str, Any], ranks: list[int], idx: list[int], steps: list[int], hp: Hyper
    ) -> tuple[precond.Basis, list[str | None]]:
        """New bases of one side for the batch, and per block ``None`` or why it keeps its basis."""
        if side.mode == "dense":
            inp["decoded"] = self._decode_factor(side, inp["fac"])  # once: _prepare turns it too
            return precond.refresh_dense(inp["decoded"], inp["q"].float())
        seeds = [block_seed(self.specs[i].index, side.name, st + 2) for i, st in zip(idx, steps)]
        qh, sk, cap = inp["qh"].float(), inp["sketch"].float(), side.rank_cap(hp.rank_max)
        return precond.refresh_stream(qh, sk, inp["trace"], ranks, hp.spectral_mass, hp.rank_min, cap, side.p, seeds)

    def _prepare(self, bases: Sequence[precond.Basis | None], snap: dict[str, Any]) -> dict[str, Tensor]:
        """The batch's factors and rotated second moments, carried into the new bases."""
        out: dict[str, Tensor] = {}
        idx, steps = snap["idx"], snap["steps"]
        (rl, rr), (kl, kr) = snap["ranks"], snap["K"]
        dev = snap["fill"].device
        v = _inside_ranks(self.vp.read(snap["v"], kr)[:, :kl, :kr], rl, rr)
        # the fill value: the first nonzero of the residual's, the gradient's and the rotated mean second moment
        count = precond.to_device([max(a * b, 1) for a, b in zip(rl, rr)], dev, v.dtype)
        f, vm = snap["fill"], v.sum(dim=(-2, -1)) / count
        fill = torch.where(f[:, 0] != 0, f[:, 0], torch.where(f[:, 1] != 0, f[:, 1], vm))
        frame = snap.get("frame_state")
        m = self.mom.read(frame, self.n_dim) if frame is not None else None
        rotated = False
        ranks = [rl, rr]
        for axis, (side, basis, inp) in enumerate(zip(self.sides, bases, snap["sides"])):
            if basis is None:
                continue
            v = precond.transport_second_moment(v, basis, axis + 1, fill)
            ranks[axis] = basis.ranks
            if side.mode == "dense" and basis.rotation is not None:  # the frame turns by Z on this side
                z = basis.rotation
                fac = inp.get("decoded")
                fac = self._decode_factor(side, inp["fac"]) if fac is None else fac
                fac = z.mT @ fac @ z
                seeds = [block_seed(self.specs[i].index, side.name, st + 3) for i, st in zip(idx, steps)]
                out.update(self._encode_factor(side, fac, precond.to_device(seeds, dev, torch.int64)))
                m = z.mT @ m if side.name == "L" else m @ z
                w2 = (z * z).mT  # diagonal second moments move by squared overlaps (a permutation for SOAP)
                for key in ("g_row", "res_row") if side.name == "L" else ("g_col", "res_col"):
                    out[key] = (w2 @ frame[key].unsqueeze(-1)).squeeze(-1)
                rotated = True
        v = _inside_ranks(v, *ranks)
        if rotated:
            held: dict[str, Tensor] = {}
            self.mom.alloc(held, (len(idx), self.m_dim, self.n_dim), dev)
            self.mom.write(held, m)  # plain torch codec (refresh thread: no Triton launches here)
            out.update(held)
        if self.vp.quantize:
            codes, scales = quant.encode_sqrt(v)
            out["v.codes"] = pad_to(codes, self.t["v.codes"].shape[-2:])  # the rows as stored, when the
            out["v.scales"] = pad_to(scales, self.t["v.scales"].shape[-2:])  # swap comes (else padded there)
        else:
            out["v"] = pad_to(v, self.t["v"].shape[-2:])
        return out

    def apply_bases(self, refresh: Refresh) -> None:
        """Swap a refresh into its blocks (copies only, unless a block stepped since its snapshot)."""
        idx = refresh.idx
        prepared = refresh.prepared
        if prepared is None or any(st != self.steps[i] for st, i in zip(refresh.steps, idx)):  # lag >= 2, restored
            prepared = self._prepare(refresh.bases, self.refresh_inputs(idx))
        for i in idx:
            self._basis_changed(i)
        pairs: list[tuple[str, Tensor]] = []
        for side, basis in zip(self.sides, refresh.bases):
            if basis is None:
                continue
            k = basis.q.shape[-1]
            if k > side.K:
                self._grow(side, side.width_for(k))
            n = side.name
            q = pad_last(basis.q, side.K).to(self.bdt)
            if side.mode == "dense":
                pairs.append((f"{n}.q", q))
            else:
                pairs.append((f"{n}.qh", torch.cat([q, basis.probes.to(self.bdt)], dim=-1)))
                pairs.append((f"{n}.sketch", precond.widen_head(basis.sketch, k, side.K).to(self.bdt)))
            pairs.append((f"{n}.eig", pad_last(basis.eig, side.K)))
            for j, i in enumerate(idx):
                side.ranks[i] = basis.ranks[j]
        for key, val in prepared.items():  # v of a batch narrower than the group (or the group grew since): padded
            pairs.append((key, pad_to(val, self.t[key].shape[-2:]) if val.ndim == 3 else val))
        self._write_rows(idx, pairs)

    def _write_rows(self, idx: Sequence[int], pairs: Sequence[tuple[str, Tensor]]) -> None:
        """``self.t[key][idx] = value`` for every pair: one multi-tensor copy for a contiguous run of
        blocks, else one indexed copy per tensor."""
        if is_run(idx):
            a, b = idx[0], idx[0] + len(idx)
            torch._foreach_copy_([self.t[key][a:b] for key, _ in pairs], [val for _, val in pairs])
        else:
            self.put_back(idx, {key: val.to(self.t[key].dtype) for key, val in pairs}, whole=False)

    def _grow(self, side: Side, k: int) -> None:
        """Widen a side's allocated basis to ``k`` columns (zero columns: no effect on any block)."""
        n, old = side.name, side.K
        if side.mode == "dense":
            self.t[f"{n}.q"] = pad_last(self.t[f"{n}.q"], k)
        else:
            for key in (f"{n}.qh", f"{n}.sketch"):
                self.t[key] = precond.widen_head(self.t[key], old, k)
        self.t[f"{n}.eig"] = pad_last(self.t[f"{n}.eig"], k)
        kl, kr = (s.K for s in self.sides)
        self.vp.pad(self.t, (k, kr) if n == "L" else (kl, k))
        side.K = k
