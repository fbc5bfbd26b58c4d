"""``refresh_wait=False``: a step never waits for a refresh; late ones are swapped in when ready and a
block with a refresh in flight is not resubmitted (the refresh interval stretches instead)."""

import time

import torch

from scao_dist import SCAO
from scao_dist.groups import KronGroup

SLOW_S = 0.4  # the worker's time per refresh batch in the slow-worker tests


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 16))


def _data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 16, generator=g)
    return [(x, torch.tanh(x @ w)) for x in (torch.randn(32, 16, generator=g) for _ in range(n))]


def _train(model, opt, data, check=None):
    """Step times of ``opt.step()``, in seconds."""
    times = []
    for x, y in data:
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
        if check is not None:
            check(opt)
    return times


def _slow_worker(monkeypatch):
    original = KronGroup.compute_refresh

    def slow(self, inputs, hp):
        time.sleep(SLOW_S)
        return original(self, inputs, hp)

    monkeypatch.setattr(KronGroup, "compute_refresh", slow)


def _one_pending_per_block(opt):
    seen = set()
    for item in opt.refresher.pending:
        for i in item.idx:
            assert (id(item.group), i) not in seen, "a block with two refreshes in flight"
            seen.add((id(item.group), i))


def test_without_waiting_a_slow_refresh_never_stalls_the_step(monkeypatch):
    _slow_worker(monkeypatch)
    kw = dict(lr=1e-2, precond_freq=2, stagger_refresh=False)
    wait_model = _model()
    waiting = SCAO(wait_model.parameters(), **kw)
    waited = _train(wait_model, waiting, _data())
    assert max(waited[2:]) > SLOW_S * 0.5  # the default waits for this worker
    model = _model()
    opt = SCAO(model.parameters(), refresh_wait=False, **kw)
    before = [p.detach().clone() for p in model.parameters()]
    times = _train(model, opt, _data(), check=_one_pending_per_block)
    steady = times[2:]  # step 1 builds the first bases in line; refreshes start after it
    assert max(steady) < SLOW_S * 0.75, steady
    c = opt.counters
    assert c["refresh_late"] > 0 and c["refreshes_deferred"] > 0, dict(c)
    opt.refresher.drain()
    opt.refresher.step_boundary(10**9)  # whatever was in flight is swapped in once ready
    assert not opt.refresher.pending and c["refreshes"] > 0, dict(c)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.refresher.close()
    waiting.refresher.close()


def test_without_waiting_and_never_late_the_steps_are_the_same():
    """Computed in line, no refresh is ever late: ``refresh_wait=False`` changes nothing, bit for bit."""
    runs = []
    for wait in (True, False):
        model = _model()
        opt = SCAO(model.parameters(), lr=1e-2, precond_freq=2, async_refresh=False, refresh_wait=wait)
        _train(model, opt, _data())
        runs.append([p.detach().clone() for p in model.parameters()])
        assert opt.counters["refresh_late"] == 0 and opt.counters["refreshes_deferred"] == 0
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_a_checkpoint_taken_with_a_late_refresh_loads_and_trains(monkeypatch):
    import io

    _slow_worker(monkeypatch)
    model = _model()
    opt = SCAO(model.parameters(), lr=1e-2, precond_freq=2, stagger_refresh=False, refresh_wait=False)
    data = _data(8)
    _train(model, opt, data[:4])
    assert opt.refresher.pending  # something is in flight or late
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    fresh = _model(seed=1)
    fresh.load_state_dict(ck["model"])
    fresh_opt = SCAO(fresh.parameters(), lr=1e-2, precond_freq=2, stagger_refresh=False, refresh_wait=False)
    fresh_opt.load_state_dict(ck["opt"])
    _train(fresh, fresh_opt, data[4:])
    assert all(torch.isfinite(p).all() for p in fresh.parameters())
    opt.refresher.close()
    fresh_opt.refresher.close()
