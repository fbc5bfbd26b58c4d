"""The sharded runtime on several CPU processes (gloo) against its single-process twin."""

import pytest
import torch
from dist_utils import run_ranks
from dist_workers import (
    global_batches,
    make_model,
    params_of,
    run_killed,
    run_mismatch,
    run_nan_on_one_rank,
    run_resume,
    run_sharded,
    run_sharded_device_inputs,
    run_sharded_losses,
    train,
)

from scao_dist import SCAO, memory_report
from scao_dist.shard.plan import make_plan

# fp32 states: the sharded run must then agree with one process to float rounding. (int8 states are
# deterministic too, but one rounding flip of a code moves a value by a whole quantisation step.)
FP32 = {"quantize": False}


def _single(layers, steps, kwargs):
    model = make_model(layers)
    opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, **kwargs)
    train(model, opt, global_batches(steps))
    return params_of(model), memory_report(opt).total


@pytest.mark.parametrize(("world", "layers"), [(2, 4), (3, 4), (3, 1)])
def test_sharded_matches_single_process(world, layers):
    """N ranks, each on its slice of the global batch == one process on the whole batch.

    4 layers = 8 blocks (more blocks than ranks); 1 layer = 2 blocks < 3 ranks (a rank owns none).
    Gradients summed in another order differ by fp32 rounding, which Adam's normalisation of the
    smallest eigen-directions amplifies over 25 steps to ~1e-5 of weights that moved ~1e-1.
    """
    steps = 25  # crosses refreshes at steps 10 and 20 (and their staggered phases)
    ref, _ = _single(layers, steps, FP32)
    results = run_ranks(world, run_sharded, layers, steps, FP32)
    owned = sorted(b for r, _ in results for b in r["owned"])
    assert owned == list(range(2 * layers))  # every block has exactly one owner
    for res, _ in results:
        for a, b in zip(res["params"], ref):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    if layers > 1:
        assert all(res["sent"] > 0 for res, _ in results)


def test_sharded_steps_through_device_inputs_match_eager_sharded_steps():
    """Each rank's owned groups stepped as a captured step would be (device inputs, gradient buffers;
    scao_dist.capture without graphs) == the eager sharded run, bit for bit, int8 states."""
    eager = run_ranks(2, run_sharded_device_inputs, 4, 14, False)
    captured = run_ranks(2, run_sharded_device_inputs, 4, 14, True)
    for (a, _), (b, _) in zip(eager, captured):
        assert a["owned"] == b["owned"]
        assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))
    assert all(res["counts"]["eager"] > 0 for res, _ in captured)


@pytest.mark.parametrize("comm", [{}, {"grad_comm_dtype": "bfloat16"}])
def test_sharded_quantized_run_tracks_the_single_process_loss(comm):
    """int8 state (and bf16 gradient traffic): the loss curve follows the single process."""
    steps = 30
    model = make_model(4)
    opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2)
    ref = train(model, opt, global_batches(steps))
    res = run_ranks(2, run_sharded_losses, 4, steps, comm)
    for losses, _ in res:
        mean = [sum(pair) / 2 for pair in zip(*(r for r, _ in res))]
        assert len(losses) == steps
    rel = max(abs(a - b) / b for a, b in zip(mean[-5:], ref[-5:]))
    assert rel < 0.02, (mean[-5:], ref[-5:])


@pytest.mark.parametrize("world", [2, 3])
def test_per_rank_memory_is_a_share_of_the_total(world):
    layers = 12
    _, total = _single(layers, 2, FP32)
    results = run_ranks(world, run_sharded, layers, 2, FP32)
    for res, _ in results:
        assert abs(res["bytes"] - total / world) <= 0.15 * total / world, (res["bytes"], total / world)


def test_checkpoint_at_2_ranks_resumes_at_1_and_3(tmp_path):
    kw = dict(FP32, refresh_lag=2)  # a refresh is pending at the save (step 10 -> swapped at 12)
    ref = run_ranks(2, run_resume, str(tmp_path), "save", 11, 9, kw)[0][0]
    for world in (1, 3):
        res = run_ranks(world, run_resume, str(tmp_path), "load", 11, 9, kw)
        for out, _ in res:
            for kind in ("full", "dcp"):
                for a, b in zip(out[kind], ref):
                    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_mismatched_models_fail_with_a_clear_error():
    out = run_ranks(2, run_mismatch, expect_fail=True, timeout=60)
    assert all(err and "different block plan" in err for _, err in out), out


def test_a_killed_rank_makes_the_others_fail_fast():
    out = run_ranks(2, run_killed, 3, expect_fail=True, timeout=90, pg_timeout=20)
    assert out[0][1] is not None and out[0][0] is None  # rank 0 raised instead of finishing
    assert "died" in out[1][1]


def test_nan_on_one_rank_skips_everywhere_then_stops_naming_the_rank():
    out = run_ranks(2, run_nan_on_one_rank, expect_fail=True, timeout=60)
    for _, err in out:
        assert err and "FloatingPointError" in err and "rank(s) [1]" in err


def test_plan_is_deterministic_balanced_and_handles_any_world_size():
    model = make_model(6)
    opt = SCAO(model.parameters(), min_precond_dim=2)
    specs = opt.specs
    kw = dict(rank_max=[256] * len(specs), precond_freq=[10] * len(specs), quantize=True, stagger=True)
    for world in (1, 2, 3, 5, 7, 64):
        p1, p2 = make_plan(specs, world, **kw), make_plan(specs, world, **kw)
        assert p1.owner == p2.owner and p1.phase == p2.phase
        assert sorted(b for r in range(world) for b in p1.owned(r)) == list(range(len(specs)))
        loads = [sum(p1.cost[b] for b in p1.owned(r)) for r in range(world)]
        assert max(loads) - min(loads) <= max(p1.cost)  # LPT: within one block of balanced
        assert "rank" in p1.table()


@pytest.mark.parametrize("lag", [1, 2])
def test_async_refresh_equals_sync_refresh_with_the_same_lag(lag):
    def run(async_refresh, lag):
        model = make_model(3)
        opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, refresh_lag=lag, async_refresh=async_refresh)
        train(model, opt, global_batches(35))
        return params_of(model), opt.counters["refreshes"]

    a, na = run(True, lag)
    s, ns = run(False, lag)
    assert na == ns > 0
    for x, y in zip(a, s):
        assert torch.equal(x, y)
    if lag == 1:  # swapped in before the next use: the same math as a synchronous refresh
        z, _ = run(False, 0)
        for x, y in zip(a, z):
            assert torch.equal(x, y)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash in the middle of a save leaves the previous checkpoint intact and loadable."""
    from scao_dist.shard import checkpoint

    model = make_model(2)
    opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2)
    batches = global_batches(8)
    train(model, opt, batches[:4])
    path = tmp_path / "ck"
    checkpoint.save(path, model, opt, extra={"step": 4})
    saved = params_of(model)
    train(model, opt, batches[4:])

    real_save = checkpoint.dcp.save

    def crash(state, checkpoint_id):
        real_save(state, checkpoint_id=checkpoint_id)  # files written to the temporary directory...
        raise KeyboardInterrupt("killed before the rename")  # ...and the process dies

    monkeypatch.setattr(checkpoint.dcp, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, model, opt, extra={"step": 8})
    monkeypatch.undo()
    fresh = make_model(2, seed=3)
    fresh_opt = SCAO(fresh.parameters(), lr=1e-2, min_precond_dim=2)
    assert checkpoint.load(path, fresh, fresh_opt) == {"step": 4}
    for a, b in zip(params_of(fresh), saved):
        assert torch.equal(a, b)
    checkpoint.save(path, model, opt, extra={"step": 8})  # the next save cleans up and replaces it
    assert checkpoint.load(path, fresh, fresh_opt) == {"step": 8}


@pytest.mark.parametrize("accumulate", [False, True])
def test_overlapped_reduce_scatter_matches_the_plain_path(accumulate):
    from dist_workers import run_overlap

    for res, _ in run_ranks(2, run_overlap, 12, accumulate):
        plain, overlapped = res[False], res[True]
        assert overlapped[2] > 1 and overlapped[1] == plain[1] > 0  # several buckets, same traffic
        for a, b in zip(plain[0], overlapped[0]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_overlap_refuses_accumulation_without_no_sync():
    from dist_workers import run_overlap_misuse

    out = run_ranks(2, run_overlap_misuse, expect_fail=True, timeout=60)
    assert all(err and "no_sync" in err for _, err in out), out


def test_from_model_detects_ddp_and_does_not_average_twice():
    from dist_workers import run_ddp_from_model

    for res, _ in run_ranks(2, run_ddp_from_model, 8):
        (plain_sync, plain, plain_bytes), (ddp_sync, wrapped, ddp_bytes) = res[False], res[True]
        assert (plain_sync, ddp_sync) == ("scao", "external")
        assert ddp_bytes < plain_bytes  # only the weights travel through SCAO under DDP
        for a, b in zip(plain, wrapped):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
