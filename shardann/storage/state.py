"""``IndexState``: everything the store keeps of an index, as plain values.

The store reads and writes ``IndexState`` only; the index layer turns an index
into one (``index.to_state()``) and back (``shardann.index.index_from_state``).
So the store needs no index class, and a state can be built, pickled and
inspected without one.
"""

import dataclasses

import numpy as np

#: the index kinds the format knows (docs/format.md)
KINDS = ("flat", "ivfflat", "ivfpq")
#: payload columns a state may hold: codes (uint8) and vectors (float32 / float16 / int8)
PAYLOAD_NAMES = ("codes", "vectors")


@dataclasses.dataclass(eq=False)
class IndexState:
    """One index as plain values: model, parameters and inverted lists.

    Attributes
    ----------
    kind : str, ``"flat"``, ``"ivfflat"`` or ``"ivfpq"``.
    config : dict, the index's constructor arguments (JSON-able).
    trained : bool. An untrained state has no arrays and no rows.
    arrays : dict name -> float32 ndarray, the trained model: ``centroids``
        (nlist, d), ``codebooks`` (M, 2**nbits, d/M), ``opq_rotation`` (d, d),
        ``vector_scale`` (2, d) (int8 kept vectors).
    nlist : int, number of inverted lists (1 for ``flat``).
    columns : dict payload name -> (width, numpy dtype), e.g.
        ``{"codes": (16, dtype("uint8")), "vectors": (128, dtype("float16"))}``;
        None when untrained.
    list_sizes : int64 (nlist,), rows per list.
    ids : int64 (n,), the rows' ids, grouped by list (list 0 first).
    payload : dict name -> (n, width) array of ``columns[name][1]``, rows in
        the order of ``ids``.
    next_id : int, the smallest id above every id the index ever held (the
        next default id).
    attributes : pyarrow.Table of the rows' attribute columns, rows in the
        order of ``ids``; None when the index has no attributes (or for the
        model alone).
    attribute_schema : pyarrow.Schema of the attribute columns, or None
        (taken from ``attributes`` when only that is given).
    calibration : bytes or None, the calibration file (held-out queries and
        their exact neighbours, for recall estimates; see docs/format.md),
        or None when the index has none. ``load_state`` leaves it None: it is
        read only when asked for (:meth:`StoreView.read_calibration`).
    drift : dict or None, the drift bookkeeping of an IVF index (see
        :mod:`shardann.drift`): ``"baseline"`` (training errors),
        ``"since_training"`` (stats of every row added since training),
        ``"pending"`` (of the rows added since the state's store version, the
        next commit's ``"added"``) and ``"latest"`` (the newest commit that
        added rows, with its ``"version"``); None when the model has none.

    ``list_sizes``, ``ids`` and ``payload`` default to no rows. Arrays read from
    a store may be read-only views of Arrow buffers; do not modify them in place.
    """

    kind: str
    config: dict
    trained: bool
    arrays: dict = dataclasses.field(default_factory=dict)
    nlist: int = 1
    columns: dict | None = None
    list_sizes: np.ndarray | None = None
    ids: np.ndarray | None = None
    payload: dict | None = None
    next_id: int = 0
    attributes: object = None
    attribute_schema: object = None
    calibration: bytes | None = None
    drift: dict | None = None

    def __post_init__(self):
        if self.attribute_schema is None and self.attributes is not None:
            self.attribute_schema = self.attributes.schema
        self.nlist = int(self.nlist)
        self.trained = bool(self.trained)
        self.next_id = int(self.next_id)
        if self.columns is not None:
            self.columns = {k: (int(w), np.dtype(t)) for k, (w, t) in self.columns.items()}
        if self.list_sizes is None:
            self.list_sizes = np.zeros(max(self.nlist, 0), np.int64)
        if self.ids is None:
            self.ids = np.zeros(0, np.int64)
        if self.payload is None:
            self.payload = {k: np.zeros((0, w), t) for k, (w, t) in (self.columns or {}).items()}

    @property
    def ntotal(self):
        """Number of rows (live vectors)."""
        return int(len(self.ids))

    @property
    def lists(self):
        """``(list_sizes, ids, payload)``: the rows grouped by list."""
        return self.list_sizes, self.ids, self.payload

    def validate(self):
        """Check that the fields fit together; return self.

        Raises ``TypeError`` / ``ValueError`` saying what was expected and what
        was given (the store calls this before it writes a state).
        """
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {self.kind!r}")
        if not isinstance(self.config, dict):
            raise TypeError(f"config must be a dict; got {type(self.config).__name__}")
        if self.nlist < 1:
            raise ValueError(f"nlist must be >= 1; got {self.nlist}")
        for name, arr in self.arrays.items():
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
                raise TypeError(f"arrays[{name!r}] must be a float32 ndarray; got "
                                f"{getattr(arr, 'dtype', type(arr).__name__)}")
        if not self.trained:
            if self.arrays or self.ntotal:
                raise ValueError("an untrained state holds no arrays and no rows; got "
                                 f"arrays {sorted(self.arrays)} and {self.ntotal} rows")
            return self
        if self.columns is None:
            raise ValueError("a trained state needs columns ({name: (width, dtype)})")
        bad = sorted(set(self.columns) - set(PAYLOAD_NAMES))
        if bad:
            raise ValueError(f"payload columns must be among {PAYLOAD_NAMES}; got {bad}")
        sizes = np.asarray(self.list_sizes)
        if sizes.shape != (self.nlist,) or sizes.dtype.kind not in "iu":
            raise ValueError(f"list_sizes must be int64 ({self.nlist},); got "
                             f"{sizes.dtype} {sizes.shape}")
        if sizes.size and int(sizes.min()) < 0:
            raise ValueError("list_sizes must be >= 0")
        ids = np.asarray(self.ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise ValueError(f"ids must be int64 (n,); got {ids.dtype} {ids.shape}")
        n = ids.size
        if int(sizes.sum()) != n:
            raise ValueError(f"list_sizes add up to {int(sizes.sum())} rows; ids has {n}")
        if set(self.payload) != set(self.columns):
            raise ValueError(f"payload has columns {sorted(self.payload)}; columns says "
                             f"{sorted(self.columns)}")
        for name, (width, dtype) in self.columns.items():
            arr = self.payload[name]
            if arr.shape != (n, width) or arr.dtype != dtype:
                raise ValueError(f"payload[{name!r}] must be {dtype} ({n}, {width}); got "
                                 f"{arr.dtype} {arr.shape}")
        if self.calibration is not None and not isinstance(self.calibration, bytes):
            raise TypeError("calibration must be the bytes of a calibration file or None; "
                            f"got {type(self.calibration).__name__}")
        if self.attributes is not None and (
                self.attributes.num_rows != n
                or not self.attributes.schema.equals(self.attribute_schema)):
            raise ValueError(f"attributes must be a table of {n} rows with the schema "
                             f"{self.attribute_schema}; got {self.attributes.num_rows} rows "
                             f"of {self.attributes.schema}")
        return self
