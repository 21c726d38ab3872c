"""The planner's model: recall, search cost and memory of an IVF-PQ index of
any size, from what :mod:`._plan_measure` measured on the sample.

Recall (k neighbours, nprobe p, nlist lists, N vectors) is the product of

- the **coarse recall** C, the fraction of the true top-k lying in the p
  probed lists;
- the **code-stage survival** S = recall / C, the fraction of those the ADC
  scan (and the re-ranking of ``k * refine_factor`` candidates on kept
  vectors) returns: the shortlist survival (the share of the probed true
  neighbours among the ``L = k * refine_factor`` best ADC keys; L = k without
  refine) times the refine stage (the share of those the re-ranking on kept
  vectors keeps in the top k).

Both are carried from the sample's n rows to N by **thinning**, not along a
fitted slope in log N. A database of n rows is a random 1-in-f subsample of
one of N = f * n rows, and subsampling divides every rank, exact or by ADC
key, by f. So the neighbour of exact rank j among N rows, kept by a shortlist
of L, behaves as the neighbour of rank j * n / N among the n rows kept by a
shortlist of L * n / N, and lies in the probed lists as often. The sample
measures, per rank j' = 1..k, the share of the rank-j' neighbours in the
probed lists (``by_rank`` of the coarse rows) and, of those, the share within
a shortlist of L' for a grid of L' (``ranks``, :mod:`._plan_measure`). C and
the shortlist survival at N average those per-rank shares over the ranks
j * n / N, j = 1..k (:func:`thin_ranks`), the latter read at L' = L * n / N
(log-interpolated between grid points; below one slot, N > L * n, a Weibull
law in L' through 1 and 2 slots: :func:`rank_curve`; an extrapolation). The ranks fall
below 1 when N > k * n: the shares are extended to rank 0 by the line through
ranks 1..:data:`EXTEND_RANKS` (near the top they fall about linearly with
rank). The refine stage's loss is measured at each sample size (recall over C
times the shortlist survival) and carried to N as a power of N fitted on
those sizes: a kept vector's key error is a fixed distance, and the
neighbours that error lets past the k-th grow as the k-th distance shrinks
with N, by a power of N (one over the local dimension) for points spread in
a space of that dimension.

Why: fitted as a plane in log N on the sample's full, half and quarter
databases, the survival's slope came from 4x the database; more rows crowd
the noise band of the ADC keys around each true neighbour, so a fixed
shortlist loses ever more of them, faster than that slope said: 20x beyond a
50k sample that model predicted 0.901 recall where 0.817 was measured
(``bench plancheck``, mixture 384-d cosine, 1M), and C's slope over-predicted
C at nlist 512 by 0.036.

The thinned C (as ``cloglog C = log(-log(1 - C))``, a Weibull law in p) and S
(as ``sqrt(1 - S)``, the transform under which its binomial variance is nearly
constant: S / 4m for m probed neighbours) at each measured (nlist, nprobe)
are fitted by weighted least squares (binomial weights), locally in log p and
log nlist (Gaussian kernels of widths :data:`BANDWIDTH`, centred on the
planned point clamped into the measured range, so beyond that range the
fitted plane is extended linearly). Measurements without the per-rank shares
(saved before they were taken) fall back to planes in log p, log nlist and
log N, fitted globally in log N.

Cost (CPU seconds per query on one core) is linear in what a search does:
``a + b * nlist`` for the coarse step, ``c + e * p + f * codes`` for the scan,
where codes = p * N / nlist times the measured skew (queries fall in dense
regions, whose lists are longer), and ``g * k * refine_factor`` for the
re-ranking; the coefficients are fitted (non-negative) on the timed searches.

Memory per vector is the id (8 B), the PQ code and the kept vector.
"""

import math

import numpy as np

#: kernel widths (natural log units) of the local fits in log nprobe and log nlist. The
#: list counts measured are 4x (1.39) apart: at 0.7 a measured count's neighbours weigh
#: 0.14 and a count halfway between two weighs them 0.61 each, so the fit interpolates
#: between list counts instead of averaging across them (at 1.4, where recall is curved in
#: log nlist, the fit at a measured count strayed from its own measurements: 0.027 in the
#: survival at nlist 256, mixture 384-d, 1M)
BANDWIDTH = {"nprobe": 0.8, "nlist": 0.7}
#: slopes of a local fit are shrunk toward 0 by this ridge (keeps degenerate grids stable)
_RIDGE = 1e-6
#: the ranks whose line extends the per-rank survival below rank 1 (thinned_survival)
EXTEND_RANKS = 3
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


def rank_curve(survival, shortlists, L):
    """Per-rank survival float64 (k,) at shortlist ``L`` (a float > 0): the
    measured ``survival`` (k, len(shortlists)) interpolated linearly in log L
    between grid points; below the first, a Weibull law in L through the first
    two (``log(-log(1 - s))`` linear in log L: the CDF of a position near 0)."""
    sv = np.asarray(survival, np.float64)
    x = np.log(np.asarray(shortlists, np.float64))
    t = math.log(L)
    if t < x[0]:
        eps = 1e-9
        c0, c1 = (np.log(-np.log1p(-np.clip(sv[:, i], eps, 1 - eps))) for i in (0, 1))
        beta = np.maximum(c1 - c0, 0.0) / (x[1] - x[0])
        return -np.expm1(-np.exp(c0 + beta * (t - x[0])))
    return np.array([np.interp(t, x, row) for row in sv])


def thin_ranks(by_rank, f):
    """The mean over ranks j = 1..k of a per-rank share ``by_rank`` float (k,)
    measured on n rows, read at ranks ``j * f`` (f = n / N <= 1: the top-k of N
    rows as ranks of the n): linear between ranks, and below rank 1 along the
    line through ranks 1..:data:`EXTEND_RANKS` (rank 0: a neighbour ever nearer
    than the sample's nearest). Returns a float in [0, 1]."""
    s = np.asarray(by_rank, np.float64)
    k = s.shape[0]
    ranks = np.arange(1, k + 1, dtype=np.float64)
    fit = min(EXTEND_RANKS, k)
    top = s[0] if fit < 2 else np.polyval(np.polyfit(ranks[:fit], s[:fit], 1), 0.0)
    at = np.interp(ranks * f, np.concatenate([[0.0], ranks]), np.concatenate([[top], s]))
    return float(np.clip(at, 0.0, 1.0).mean())


def thinned_survival(survival, shortlists, n, N, L):
    """Shortlist survival of the true top-k on ``N`` rows, shortlist ``L``,
    from the per-rank survival measured on ``n`` rows (module docstring).

    Parameters
    ----------
    survival : float (k, g) share of the probed rank-j neighbours within the
        first ``shortlists[i]`` ADC candidates on n rows (``Measurements.ranks``).
    shortlists : g ascending ints. n, N : ints, N >= 1. L : shortlist on N rows.

    Returns a float in [0, 1].
    """
    f = n / N
    return thin_ranks(rank_curve(survival, shortlists, L * f), f)


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
        self._pairs = pairs
        self._top = max(meas.sizes)
        self._coarse_rows = coarse
        self._recall_rows = {(r["n"], r["nlist"], r["nprobe"], r["nbits"], r["M"], r["keep"],
                              r["refine"]): r["recall"] for r in meas.recall}
        self._ranks, self._ranks_at = {}, {}
        for r in meas.ranks:
            self._ranks_at[(r["n"], r["nlist"], r["nprobe"], r["nbits"], r["M"])] = r
            if r["n"] == self._top:
                self._ranks.setdefault((r["nbits"], r["M"]), []).append(r)
        self._sizes = sorted(meas.sizes)
        self._coarse_top = [r for r in rows if r["n"] == self._top and "by_rank" in r]
        self._thinned = {}
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
        X, y, w = self._cx, self._cy, self._cw
        if self._coarse_top:
            X, y, w = self._thinned_coarse(n)
        return float(-np.expm1(-np.exp(self._at(X, y, w, nprobe, nlist, n))))

    def _thinned_coarse(self, N):
        """(X, cloglog C, weights) of the sample's coarse recall at each measured
        (nlist, nprobe), thinned to N rows (:func:`thin_ranks`)."""
        key = ("coarse", N)
        if key not in self._thinned:
            rows = self._coarse_top
            c = np.array([thin_ranks(r["by_rank"], self._top / N) for r in rows])
            cc = np.clip(c, self._eps, 1 - self._eps)
            var = cc / (self._pairs * (1 - cc) * np.log1p(-cc) ** 2)
            X = np.log([[r["nprobe"], r["nlist"], N] for r in rows], dtype=np.float64)
            self._thinned[key] = (X, _cloglog(c, self._eps), 1.0 / var)
        return self._thinned[key]

    def survival(self, nprobe, nlist, n, nbits, M, keep, refine):
        """Predicted fraction of the probed true neighbours the search returns."""
        data = self._layouts.get((nbits, M, keep, refine))
        if data is None:
            raise ValueError(f"the sample did not measure {nbits}-bit M={M} keep={keep} "
                             f"refine={refine}; measured: {self.layouts}")
        if (nbits, M) in self._ranks:
            thin = self._thinned_rows(n, nbits, M, keep, refine)
            data = thin if len(thin) else data
        miss = self._at(data[:, :3], data[:, 3], data[:, 4], nprobe, nlist, n)
        return float(1 - min(1.0, max(0.0, miss)) ** 2)

    def _thinned_rows(self, N, nbits, M, keep, refine):
        """Rows like ``_layouts``' (log p, log nlist, log N, sqrt(1 - S), weight),
        all at N: the survival of each measured (nlist, nprobe) thinned to N."""
        key = (N, nbits, M, keep, refine)
        if key in self._thinned:
            return self._thinned[key]
        n, L = self._top, self.k * (refine or 1)
        rows = []
        for r in self._ranks[(nbits, M)]:
            cr = self._coarse_rows.get((n, r["nlist"], r["nprobe"]))
            if not cr or (n, r["nlist"], r["nprobe"], nbits, M, keep, refine) \
                    not in self._recall_rows:
                continue
            s = (thinned_survival(r["survival"], r["shortlists"], n, N, L)
                 * self._refine_stage(N, r["nlist"], r["nprobe"], nbits, M, keep, refine))
            rows.append((math.log(r["nprobe"]), math.log(r["nlist"]), math.log(N),
                         math.sqrt(1 - s), 4 * self._pairs * cr / max(s, 1.0 / self._pairs)))
        self._thinned[key] = out = np.array(rows)
        return out

    def _refine_stage(self, N, nlist, nprobe, nbits, M, keep, refine):
        """Share of the shortlisted true neighbours the re-ranking keeps in the
        top k, at N rows: its loss measured at each sample size (recall over C
        times the shortlist survival) and carried to N as a power of N fitted
        on those sizes (module docstring); 1 without refine."""
        if not refine:
            return 1.0
        sizes, losses = [], []
        for m in self._sizes:
            cr = self._coarse_rows.get((m, nlist, nprobe))
            rec = self._recall_rows.get((m, nlist, nprobe, nbits, M, keep, refine))
            r = self._ranks_at.get((m, nlist, nprobe, nbits, M))
            if not cr or rec is None or r is None:
                continue
            short = thinned_survival(r["survival"], r["shortlists"], m, m, self.k * refine)
            if short > 0:
                sizes.append(m)
                losses.append(max(0.0, 1 - rec / cr / short))
        if not losses:
            return 1.0
        loss = losses[-1]
        pos = [(math.log(m), math.log(v)) for m, v in zip(sizes, losses, strict=True) if v > 0]
        if loss > 0 and len(pos) >= 2 and N > sizes[-1]:
            x, y = np.array(pos).T
            beta = float(np.clip(np.polyfit(x, y, 1)[0], 0.0, 1.0))
            loss = loss * (N / sizes[-1]) ** beta
        return max(0.0, 1.0 - loss)

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
