"""The planner's model: recall, search cost and memory of an IVF-PQ index of
any size, from what :mod:`._plan_measure` measured on the sample.

Recall (k neighbours, nprobe p, nlist lists, N vectors) is the product of

- the **coarse recall** C, the fraction of the true top-k lying in the p
  probed lists, modelled as a Weibull law in p whose scale moves with nlist
  and N: ``cloglog C = log(-log(1 - C))`` is linear in ``log p``, ``log nlist``
  and ``log N``;
- the **code-stage survival** S = recall / C, the fraction of those the ADC
  scan (and the re-ranking of ``k * refine_factor`` candidates on kept
  vectors) returns: ``sqrt(1 - S)`` is linear in the same three logarithms.
  The square root of the miss rate is the transform under which the
  binomial variance of S is nearly constant (S / 4m for m probed neighbours);
  fitted on S itself, the plane follows the points near S = 1, where few
  neighbours are lost and the slope in log N is flat, and over-predicted
  recall by up to 0.05 four times beyond the sample (``bench plancheck``:
  200k rows planned from 50k).

Both are fitted by weighted least squares (binomial weights) on the sample's
measurements: locally in log p and log nlist (Gaussian kernels of widths
:data:`BANDWIDTH`, centred on the planned point clamped into the measured
range, so beyond that range the fitted plane is extended linearly), globally in
log N (the sample's full, half and quarter databases give the slope). N beyond
the sample is therefore an extrapolation along that slope.

Cost (CPU seconds per query on one core) is linear in what a search does:
``a + b * nlist`` for the coarse step, ``c + e * p + f * codes`` for the scan,
where codes = p * N / nlist times the measured skew (queries fall in dense
regions, whose lists are longer), and ``g * k * refine_factor`` for the
re-ranking; the coefficients are fitted (non-negative) on the timed searches.

Memory per vector is the id (8 B), the PQ code and the kept vector.
"""

import math

import numpy as np

#: kernel widths (natural log units) of the local fits in log nprobe and log nlist
BANDWIDTH = {"nprobe": 0.8, "nlist": 1.4}
#: slopes of a local fit are shrunk toward 0 by this ridge (keeps degenerate grids stable)
_RIDGE = 1e-6
_KEEP_BYTES = {None: 0, "int8": 1, "float16": 2, "float32": 4}


def local_plane(X, y, w, x0, center):
    """A weighted least-squares plane through ``(X, y)``, evaluated at ``x0``.

    Parameters
    ----------
    X : float64 (n, f) features; y : float64 (n,); w : float64 (n,) >= 0 weights.
    x0 : float64 (f,), where to evaluate; center : float64 (f,), the point the
        slopes are taken about (the ridge pulls slopes, not the level, to 0).

    Returns the value at ``x0`` (float); NaN when every weight is 0.
    """
    if not np.any(w > 0):
        return math.nan
    A = np.column_stack([np.ones(len(X)), X - center])
    sw = np.sqrt(w)
    scale = float(np.sum(w))
    ridge = np.sqrt(_RIDGE * scale) * np.eye(A.shape[1])[1:]
    coef, *_ = np.linalg.lstsq(np.vstack([A * sw[:, None], ridge]),
                               np.concatenate([y * sw, np.zeros(A.shape[1] - 1)]), rcond=None)
    return float(coef[0] + coef[1:] @ (np.asarray(x0) - center))


def _cloglog(c, eps):
    c = np.clip(c, eps, 1 - eps)
    return np.log(-np.log1p(-c))


def _kernel(X, center, widths):
    z = (X - center) / widths
    return np.exp(-0.5 * np.sum(z * z, axis=1))


class RecallModel:
    """Predicted recall@k of a planned index (see the module docstring).

    Built from a :class:`._plan_measure.Measurements`; :meth:`predict` answers
    for any (nprobe, nlist, N, nbits, M, keep, refine_factor) whose (nbits, M,
    keep, refine) the sample measured.
    """

    def __init__(self, meas):
        self.k = meas.k
        pairs = meas.nq * meas.k
        self._eps = 0.5 / pairs
        rows = meas.coarse
        self._cx = np.log([[r["nprobe"], r["nlist"], r["n"]] for r in rows], dtype=np.float64)
        c = np.array([r["recall"] for r in rows])
        cc = np.clip(c, self._eps, 1 - self._eps)
        # binomial variance of C carried through the cloglog transform
        var = cc / (pairs * (1 - cc) * np.log1p(-cc) ** 2)
        self._cy, self._cw = _cloglog(c, self._eps), 1.0 / var
        coarse = {(r["n"], r["nlist"], r["nprobe"]): r["recall"] for r in rows}
        self._layouts = {}
        for r in meas.recall:
            key = (r["nbits"], r["M"], r["keep"], r["refine"])
            cr = coarse[(r["n"], r["nlist"], r["nprobe"])]
            if cr <= 0:
                continue
            s = min(1.0, r["recall"] / cr)
            # sqrt(1 - S) stabilises the binomial variance: S / (4 m) for m probed neighbours
            self._layouts.setdefault(key, []).append(
                (math.log(r["nprobe"]), math.log(r["nlist"]), math.log(r["n"]),
                 math.sqrt(1 - s), 4 * pairs * cr / max(s, 1.0 / pairs)))
        self._layouts = {key: np.array(v) for key, v in self._layouts.items()}
        self.range = {"nprobe": (float(np.exp(self._cx[:, 0].min())),
                                 float(np.exp(self._cx[:, 0].max()))),
                      "nlist": (min(meas.nlists), max(meas.nlists)),
                      "n": (min(meas.sizes), max(meas.sizes))}

    @property
    def layouts(self):
        """The measured (nbits, M, keep, refine_factor) combinations."""
        return sorted(self._layouts, key=lambda t: (t[0], t[1], str(t[2]), t[3]))

    def _at(self, X, y, w, nprobe, nlist, n):
        x0 = np.log([nprobe, nlist, n])
        lo, hi = X.min(axis=0), X.max(axis=0)
        center = np.clip(x0, lo, hi)
        widths = np.array([BANDWIDTH["nprobe"], BANDWIDTH["nlist"], np.inf])
        return local_plane(X, y, w * _kernel(X, center, widths), x0, center)

    def coarse(self, nprobe, nlist, n):
        """Predicted fraction of the true top-k in the ``nprobe`` closest of
        ``nlist`` lists of an ``n``-vector index."""
        if nprobe >= nlist:
            return 1.0
        y = self._at(self._cx, self._cy, self._cw, nprobe, nlist, n)
        return float(-np.expm1(-np.exp(y)))

    def survival(self, nprobe, nlist, n, nbits, M, keep, refine):
        """Predicted fraction of the probed true neighbours the search returns."""
        data = self._layouts.get((nbits, M, keep, refine))
        if data is None:
            raise ValueError(f"the sample did not measure {nbits}-bit M={M} keep={keep} "
                             f"refine={refine}; measured: {self.layouts}")
        miss = self._at(data[:, :3], data[:, 3], data[:, 4], nprobe, nlist, n)
        return float(1 - min(1.0, max(0.0, miss)) ** 2)

    def predict(self, nprobe, nlist, n, nbits, M, keep, refine):
        """Predicted recall@k: :meth:`coarse` x :meth:`survival`."""
        return (self.coarse(nprobe, nlist, n)
                * self.survival(nprobe, nlist, n, nbits, M, keep, refine))


def _nonneg_lstsq(A, y):
    """Least squares with coefficients >= 0 (drop the negative ones and refit)."""
    active = np.ones(A.shape[1], bool)
    coef = np.zeros(A.shape[1])
    for _ in range(A.shape[1]):
        sol, *_ = np.linalg.lstsq(A[:, active], y, rcond=None)
        coef[:] = 0
        coef[active] = sol
        if (sol >= 0).all():
            break
        active[np.flatnonzero(active)[sol < 0]] = False
        if not active.any():
            break
    return np.maximum(coef, 0)


class CostModel:
    """CPU seconds per query on one core of a planned index (module docstring)."""

    def __init__(self, meas):
        self.k = meas.k
        t = meas.timing
        A = np.array([[1.0, r["nlist"]] for r in t["coarse"]])
        self.coarse_coef = _nonneg_lstsq(A, np.array([r["s"] for r in t["coarse"]]))
        self.scan_coef = {}
        for key in {(r["nbits"], r["M"]) for r in t["scan"]}:
            rows = [r for r in t["scan"] if (r["nbits"], r["M"]) == key]
            A = np.array([[1.0, r["nprobe"], r["codes"]] for r in rows])
            self.scan_coef[key] = _nonneg_lstsq(A, np.array([r["s"] for r in rows]))
        self.refine_per_candidate = {(r["nbits"], r["M"], r["keep"]): r["s"] / r["candidates"]
                                     for r in t["refine"]}
        self._skew = sorted((int(nl), s) for nl, s in meas.list_skew.items())

    def skew(self, nlist):
        """Codes a probe scans over the mean list size, at the measured list
        count nearest to ``nlist`` (log scale)."""
        return min(self._skew, key=lambda t: abs(math.log(t[0] / nlist)))[1]

    def seconds(self, nprobe, nlist, n, nbits, M, keep, refine):
        """``{"coarse", "scan", "refine", "total"}`` CPU seconds per query."""
        a, b = self.coarse_coef
        c, e, f = self.scan_coef[(nbits, M)]
        codes = nprobe * n / nlist * self.skew(nlist)
        out = {"coarse": a + b * nlist, "scan": c + e * nprobe + f * codes,
               "refine": (self.refine_per_candidate[(nbits, M, keep)] * self.k * refine
                          if refine else 0.0)}
        out["total"] = sum(out.values())
        return out


def bytes_per_vector(d, M, nbits, keep):
    """Bytes a vector takes in the lists: id (8) + PQ code + kept vector."""
    return 8 + -(-M * nbits // 8) + d * _KEEP_BYTES[keep]


def fixed_bytes(d, nlist, M, nbits, metric, precompute_max_bytes=256 << 20):
    """Bytes every shard holds whatever its share of vectors: the coarse
    centroids, the PQ codebooks and (l2) the precomputed term tables when
    they fit ``precompute_max_bytes`` (:class:`shardann.IVFPQIndex`'s rule)."""
    tables = nlist * M * (1 << nbits) * 4
    out = nlist * d * 4 + (1 << nbits) * d * 4
    if metric == "l2" and tables <= precompute_max_bytes:
        out += tables
    return out
