"""Structured synthetic data and the standard ANN file formats.

Random Gaussian vectors are a poor test of an ANN index (every point is about
equally far from every other). :func:`synthetic` makes data with structure like
real embeddings: a low-dimensional latent mixture mapped non-linearly into
``d`` dimensions, plus a little noise.
"""

import os

import numpy as np

from .._validation import check_int


def _manifold(d, seed, intrinsic_dim, n_clusters):
    """(centers, A, B) of the latent mixture and its map into ``d`` dimensions."""
    rng = np.random.default_rng(seed)
    di = min(intrinsic_dim, d)
    centers = rng.standard_normal((n_clusters, di)) * 2.0
    A = rng.standard_normal((di, d)) / np.sqrt(di)
    B = rng.standard_normal((d, d)) / np.sqrt(d)
    return centers, A, B


def _manifold_rows(manifold, rng, m, noise):
    """``m`` float64 rows drawn with ``rng`` from ``manifold``."""
    centers, A, B = manifold
    z = centers[rng.integers(0, centers.shape[0], m)] + rng.standard_normal((m, A.shape[0]))
    h = np.tanh(z @ A) + 0.3 * np.sin(2.0 * (z @ A))
    return h @ B + noise * rng.standard_normal((m, B.shape[0]))


def synthetic(n, d, *, intrinsic_dim=16, n_clusters=64, noise=0.05, seed=0, dtype=np.float32):
    """``n`` float32 vectors of dimension ``d`` on a curved low-dimensional manifold.

    The same ``seed`` always gives the same manifold and the same rows; split
    one call into database, queries and training rows (as
    :func:`synthetic_split` does) so that they share structure.
    """
    n = check_int("n", n, low=0)
    d = check_int("d", d, low=1)
    manifold = _manifold(d, seed, intrinsic_dim, n_clusters)
    out = np.empty((n, d), dtype)
    block = 65536
    for s in range(0, n, block):
        e = min(n, s + block)
        out[s:e] = _manifold_rows(manifold, np.random.default_rng([seed, s]), e - s, noise)
    return out


def synthetic_chunk(start, stop, d, *, intrinsic_dim=16, n_clusters=64, noise=0.05, seed=0):
    """Rows ``[start, stop)`` of an endless float32 dataset on :func:`synthetic`'s
    manifold, for writing data sets larger than memory chunk by chunk. Rows depend
    on ``(seed, start)``: write with the same chunk boundaries to get the same data.
    """
    manifold = _manifold(d, seed, intrinsic_dim, n_clusters)
    rows = _manifold_rows(manifold, np.random.default_rng([seed, start]), stop - start, noise)
    return rows.astype(np.float32)


def _mixture_model(d, seed, n_clusters, decay):
    """(centers, log-weights, per-cluster spectra, basis) of :func:`mixture`."""
    rng = np.random.default_rng([seed, 1 << 40])
    centers = rng.standard_normal((n_clusters, d)) / np.sqrt(d)
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.8          # Zipf-like cluster sizes
    spectrum = np.arange(1, d + 1, dtype=np.float64) ** -decay
    scales = spectrum * rng.uniform(0.5, 1.5, (n_clusters, d)) * 1.5 / np.sqrt(spectrum @ spectrum)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return centers, weights / weights.sum(), scales, basis


def mixture(n, d, *, n_clusters=256, decay=0.7, seed=0, dtype=np.float32):
    """``n`` vectors from an anisotropic Gaussian mixture, a second kind of
    structure beside :func:`synthetic` (closer to text embeddings): clusters of
    Zipf-distributed sizes whose spread decays as a power law (exponent
    ``decay``) along a random basis, each axis rescaled per cluster.

    The same ``seed`` always gives the same mixture and rows; split one call
    into database, queries and training rows so they share the mixture.
    Returns float32 (n, d).
    """
    n = check_int("n", n, low=0)
    d = check_int("d", d, low=1)
    centers, weights, scales, basis = _mixture_model(d, seed, check_int(
        "n_clusters", n_clusters, low=1), float(decay))
    out = np.empty((n, d), dtype)
    block = 65536
    for s in range(0, n, block):
        e = min(n, s + block)
        rng = np.random.default_rng([seed, s])
        c = rng.choice(len(weights), e - s, p=weights)
        z = rng.standard_normal((e - s, d)) * scales[c]
        out[s:e] = centers[c] + z @ basis
    return out


def synthetic_split(nb, nq, d, *, nt=0, seed=0, **kwargs):
    """Database, queries and (optionally) a training set from one manifold.

    Returns ``(xb, xq)`` or ``(xb, xq, xt)`` when ``nt > 0``; float32.
    """
    x = synthetic(nb + nq + nt, d, seed=seed, **kwargs)
    xb, xq, xt = x[:nb], x[nb:nb + nq], x[nb + nq:]
    return (xb, xq, xt) if nt else (xb, xq)


def categorical(n, shares, *, rest="rest", seed=0):
    """A categorical column of ``n`` rows for filtered-search benchmarks.

    ``shares`` maps category names to fractions of the rows: category ``name``
    holds exactly ``round(share * n)`` rows at random positions, independent of
    the vectors; the rows left over get ``rest``. A filter ``column = 'name'``
    then passes exactly that share.

    Returns a numpy ``str`` array of shape (n,). Raises ``ValueError`` when a
    share is outside (0, 1] or the shares add up to more than 1.
    """
    n = check_int("n", n, low=0)
    bad = {k: v for k, v in shares.items() if not 0.0 < float(v) <= 1.0}
    if bad:
        raise ValueError(f"shares must be in (0, 1]; got {bad}")
    counts = {name: int(round(float(v) * n)) for name, v in shares.items()}
    if sum(counts.values()) > n:
        raise ValueError(f"the shares add up to {sum(shares.values()):g} > 1; got {shares}")
    names = [*counts, rest]
    codes = np.full(n, len(names) - 1, np.int64)
    order = np.random.default_rng(seed).permutation(n)
    start = 0
    for code, count in enumerate(counts.values()):
        codes[order[start:start + count]] = code
        start += count
    return np.asarray(names)[codes]


def read_vectors(path, mmap=True):
    """Read ``.npy`` (memory-mapped), ``.fvecs``, ``.bvecs``, ``.ivecs`` or
    ``.parquet`` (its first list column, e.g. an embedding column).

    Returns an (n, d) array: float32 for npy/fvecs, uint8 for bvecs, int32 for ivecs.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        return np.load(path, mmap_mode="r" if mmap else None)
    if ext in (".fvecs", ".ivecs", ".bvecs"):
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size < 4:
            raise ValueError(f"{path}: empty or truncated {ext} file")
        d = int(raw[:4].view(np.int32)[0])
        item = 1 if ext == ".bvecs" else 4
        row = 4 + d * item
        if d <= 0 or raw.size % row:
            raise ValueError(f"{path}: size {raw.size} is not a multiple of the row size "
                             f"{row} implied by d={d}; truncated or not a {ext} file")
        rows = raw.reshape(-1, row)
        if not (rows[:, :4].view(np.int32) == d).all():
            raise ValueError(f"{path}: rows of different dimensions")
        dtype = {".fvecs": np.float32, ".ivecs": np.int32, ".bvecs": np.uint8}[ext]
        return np.ascontiguousarray(rows[:, 4:]).view(dtype)
    if ext == ".parquet":
        return _read_parquet_vectors(path)
    raise ValueError(f"{path}: unsupported extension {ext!r} (.npy, .fvecs, .bvecs, .ivecs, "
                     ".parquet)")


def _read_parquet_vectors(path):
    # the first list / fixed-size-list column (an embedding column) as (n, d)
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for name, col in zip(table.column_names, table.columns, strict=True):
        t = col.type
        if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t)
                or pa.types.is_large_list(t)):
            continue
        arr = col.combine_chunks()
        if pa.types.is_fixed_size_list(t):
            d = t.list_size
        else:
            lengths = np.diff(np.asarray(arr.offsets))
            if lengths.size and (lengths != lengths[0]).any():
                raise ValueError(f"{path}: column {name!r} holds lists of different lengths")
            d = int(lengths[0]) if lengths.size else 0
        values = arr.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(arr), d)
    raise ValueError(f"{path}: no list column of vectors in {table.column_names}")


def write_fvecs(path, x):
    """Write float32 (n, d) ``x`` in the .fvecs format."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    rows = np.empty((n, d + 1), np.float32)
    rows[:, 0] = np.array([d], np.int32).view(np.float32)[0]
    rows[:, 1:] = x
    rows.tofile(path)
