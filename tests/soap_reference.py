"""An independent, deliberately plain fp32 SOAP (Vyas et al. 2024), the oracle for SCAO's
``quantize=False, rank="full"`` setting. One dense factor per side of every 2-D parameter (no
blocking), Adam for 1-D parameters; written from the paper's algorithm, sharing no code with
scao_dist:

* step 1 of a matrix only accumulates ``L, R`` and takes ``eigh`` (no update);
* the first moment lives in the original coordinates and is projected each step;
* the second moment lives in the eigenbasis; every ``freq`` steps each basis is re-sorted by its
  Rayleigh quotients, the second moment permuted with it, then one power step ``L Q`` + QR;
* AdamW conventions: decoupled decay before the update, ``(m/bc1)/(sqrt(v/bc2)+eps)``.
"""

import torch


class ReferenceSOAP:
    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, shampoo_beta=0.95, freq=10):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.b1, self.b2, self.eps, self.wd, self.bs, self.freq = (
            lr,
            *betas,
            eps,
            weight_decay,
            shampoo_beta,
            freq,
        )
        self.state = {}

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        for p in self.params:
            if p.grad is None:
                continue
            g = p.grad.float()
            st = self.state.setdefault(p, {"t": 0})
            if p.ndim < 2:
                st.setdefault("m", torch.zeros_like(g))
                st.setdefault("v", torch.zeros_like(g))
                st["t"] += 1
                st["m"] = self.b1 * st["m"] + (1 - self.b1) * g
                st["v"] = self.b2 * st["v"] + (1 - self.b2) * g * g
                u = (st["m"] / (1 - self.b1 ** st["t"])) / ((st["v"] / (1 - self.b2 ** st["t"])).sqrt() + self.eps)
                p.mul_(1 - self.lr * self.wd).add_(-self.lr * u.to(p.dtype))
                continue
            g = g.reshape(g.shape[0], -1)
            if "L" not in st:
                st["L"] = (1 - self.bs) * g @ g.T
                st["R"] = (1 - self.bs) * g.T @ g
                st["QL"] = torch.linalg.eigh(st["L"])[1].flip(1)
                st["QR"] = torch.linalg.eigh(st["R"])[1].flip(1)
                st["m"] = torch.zeros_like(g)
                st["v"] = torch.zeros_like(g)
                continue
            st["t"] += 1
            t = st["t"]
            QL, QR = st["QL"], st["QR"]
            st["m"] = self.b1 * st["m"] + (1 - self.b1) * g
            gr = QL.T @ g @ QR
            st["v"] = self.b2 * st["v"] + (1 - self.b2) * gr * gr
            mr = QL.T @ st["m"] @ QR
            u = QL @ ((mr / (1 - self.b1**t)) / ((st["v"] / (1 - self.b2**t)).sqrt() + self.eps)) @ QR.T
            p.mul_(1 - self.lr * self.wd).add_(-self.lr * u.reshape(p.shape).to(p.dtype))
            st["L"] = self.bs * st["L"] + (1 - self.bs) * g @ g.T
            st["R"] = self.bs * st["R"] + (1 - self.bs) * g.T @ g
            if t % self.freq == 0:
                for side, axis in (("L", 0), ("R", 1)):
                    Q, F = st["Q" + side], st[side]
                    order = torch.argsort(torch.diag(Q.T @ F @ Q), descending=True)
                    Q = Q[:, order]
                    st["v"] = st["v"].index_select(axis, order)
                    st["Q" + side] = torch.linalg.qr(F @ Q).Q
