"""Attribute filters: SQL-like strings into Arrow expressions, evaluated into masks.

A filter is a ``pyarrow.compute.Expression`` or a SQL-like string such as
``"lang = 'en' AND year >= 2023 AND tags CONTAINS 'news'"``, parsed by sqlglot
and turned into an expression checked against the attribute schema. The
grammar: comparisons (``= != <> < <= > >=``) between a column and a literal
(or two columns of one kind), ``AND``/``OR``/``NOT``, parentheses, ``IN (...)``,
``BETWEEN``, ``IS [NOT] NULL``, ``LIKE``, and ``col CONTAINS 'x'`` (or
``ARRAY_CONTAINS(col, 'x')``) for list<string> columns. Literals are cast to
the column's type (a string compares with a timestamp or date column as an ISO
date). A row passes when the expression is true: null is false.

Attribute columns are normalised when they enter an index
(:func:`as_attribute_table`): integers, floats, bool, strings (``string``),
timestamps, dates and lists of strings (``list<string>``).
"""

import functools
import logging
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

logger = logging.getLogger(__name__)

#: the Arrow compute function behind ``CONTAINS`` (a scalar UDF, registered on first use)
CONTAINS_FUNCTION = "shardann_list_contains"
_udfs_registered = False


def _list_contains(ctx, lists, value):
    # bool per list: any element equals value; a null list gives null
    if isinstance(lists, pa.Scalar):
        lists = pa.array([lists.as_py()], lists.type)
    flat = pc.list_flatten(lists)
    parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    hit = pc.fill_null(pc.equal(flat, value), False).to_numpy(zero_copy_only=False)
    out = np.zeros(len(lists), bool)
    out[parent[hit]] = True
    return pa.array(out, mask=lists.is_null().to_numpy(zero_copy_only=False))


def _ensure_udfs():
    """Register the filters' Arrow compute functions in this process (once)."""
    global _udfs_registered
    if _udfs_registered:
        return
    try:
        pc.register_scalar_function(
            _list_contains, CONTAINS_FUNCTION,
            {"summary": "list contains value",
             "description": "True where the list<string> holds the string."},
            {"lists": pa.list_(pa.string()), "value": pa.string()}, pa.bool_())
    except pa.ArrowKeyError:  # registered already (another copy of this module)
        pass
    _udfs_registered = True


# -- attribute tables ------------------------------------------------------------------

def _normal_type(name, t):
    """The type a column of type ``t`` is held as, or ValueError naming the column."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return t
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return t
    if pa.types.is_null(t):  # a column of nulls only: keep it as strings
        return pa.string()
    if (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t)) and (
            pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)
            or pa.types.is_null(t.value_type)):  # [[]] and [[None]] infer list<null>
        return pa.list_(pa.string())
    raise ValueError(f"attribute column {name!r} has type {t}; expected an integer, float, "
                     "bool, string, timestamp, date or list<string> column")


def _same_kind(a, b):
    kinds = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean,
             pa.types.is_string, pa.types.is_timestamp, pa.types.is_date, pa.types.is_list)
    return any(f(a) and f(b) for f in kinds)


def as_attribute_table(attributes, n, schema=None):
    """Validate attributes for ``n`` new vectors and normalise them.

    Parameters
    ----------
    attributes : pyarrow.Table / RecordBatch / dict of arrays (anything
        ``pa.table`` takes), one row per vector.
    n : int, number of vectors.
    schema : pyarrow.Schema the index holds, or None for the first attributes.

    Returns a ``pyarrow.Table`` of ``n`` rows: with ``schema``, exactly its
    columns in its order; otherwise the given columns with normalised types
    (see :func:`_normal_type`). Raises ``ValueError`` naming the column that is
    missing, unexpected or of the wrong type, or saying the row count is wrong.
    """
    if isinstance(attributes, pa.Table):
        table = attributes
    elif isinstance(attributes, pa.RecordBatch):
        table = pa.Table.from_batches([attributes])
    else:
        try:
            table = pa.table(attributes)
        except (TypeError, ValueError, pa.ArrowException) as exc:
            raise ValueError(f"attributes must be a pyarrow Table, RecordBatch or dict of "
                             f"arrays with one row per vector: {exc}") from None
    if table.num_rows != n:
        raise ValueError(f"attributes must have one row per vector ({n}); got "
                         f"{table.num_rows} rows")
    names = table.column_names
    if len(set(names)) != len(names):
        dup = next(c for c in names if names.count(c) > 1)
        raise ValueError(f"attribute column {dup!r} appears twice")
    if schema is None:
        fields = [pa.field(c, _normal_type(c, table.schema.field(c).type)) for c in names]
        if not fields:
            raise ValueError("attributes must have at least one column")
        schema = pa.schema(fields)
    else:
        extra = [c for c in names if c not in schema.names]
        if extra:
            raise ValueError(f"attribute column {extra[0]!r} is not in the index's schema "
                             f"(columns: {', '.join(schema.names)})")
        missing = [c for c in schema.names if c not in names]
        if missing:
            raise ValueError(f"attribute column {missing[0]!r} is missing (the index's "
                             f"columns: {', '.join(schema.names)})")
    cols = []
    for field in schema:
        col = table.column(field.name)
        if col.type != field.type:
            given = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
            if not (pa.types.is_null(given) or _same_kind(_normal_type(field.name, given),
                                                          field.type)):
                raise ValueError(f"attribute column {field.name!r} must be {field.type}; "
                                 f"got {col.type}")
            try:
                col = col.cast(field.type)
            except pa.ArrowException as exc:
                raise ValueError(f"attribute column {field.name!r} does not convert to "
                                 f"{field.type}: {exc}") from None
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def null_table(schema, n):
    """A table of ``n`` all-null rows of ``schema``."""
    return pa.Table.from_arrays([pa.nulls(n, f.type) for f in schema], schema=schema)


# -- SQL-like strings ------------------------------------------------------------------

@functools.cache
def _sqlglot():
    # the tokenizer reads CONTAINS as the ``@>`` operator, which sqlglot parses
    # into ArrayContainsAll: positions in error messages stay the user's
    from sqlglot import exp, parser, tokens
    from sqlglot.tokens import TokenType

    class Tokenizer(tokens.Tokenizer):
        KEYWORDS = {**tokens.Tokenizer.KEYWORDS, "CONTAINS": TokenType.AT_GT}

    return exp, parser.Parser, Tokenizer


def _where(node):
    # sqlglot keeps token positions on identifiers (a column's name) and some leaves
    for n in (node, getattr(node, "this", None)):
        meta = getattr(n, "meta", None) or {}
        if "start" in meta:
            return f" at position {meta['start']}"
    return ""


class _Compiler:
    """Turns one sqlglot AST into a pyarrow.compute.Expression, checking columns
    and literal types against ``schema``."""

    def __init__(self, exp, schema, text):
        self.exp = exp
        self.schema = schema
        self.text = text

    def fail(self, msg, node=None):
        where = _where(node) if node is not None else ""
        raise ValueError(f"filter {self.text!r}: {msg}{where}")

    # -- leaves --------------------------------------------------------------
    def column(self, node):
        name = node.name
        if name not in self.schema.names:
            self.fail(f"unknown column {name!r} (columns: {', '.join(self.schema.names)})",
                      node)
        return name, self.schema.field(name).type

    def literal(self, node):
        """(python value, kind) of a literal node: kind in number/string/bool/null/time."""
        exp = self.exp
        if isinstance(node, exp.Paren):
            return self.literal(node.this)
        if isinstance(node, exp.Null):
            return None, "null"
        if isinstance(node, exp.Boolean):
            return bool(node.this), "bool"
        if isinstance(node, exp.Neg):
            value, kind = self.literal(node.this)
            if kind != "number":
                self.fail("'-' applies to numbers only", node)
            return -value, kind
        if isinstance(node, exp.Literal):
            if node.is_string:
                return node.this, "string"
            text = node.this
            try:
                return int(text), "number"
            except ValueError:
                return float(text), "number"
        if isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal) and \
                node.this.is_string:
            return node.this.this, "time"
        self.fail(f"expected a literal value, got {node.sql()!r}", node)

    def scalar(self, node, name, t):
        """``node`` as a pa.scalar comparable with column ``name`` of type ``t``."""
        value, kind = self.literal(node)
        if kind == "null":
            self.fail(f"compare column {name!r} with NULL using IS NULL / IS NOT NULL", node)
        ok = ((kind == "number" and (pa.types.is_integer(t) or pa.types.is_floating(t)))
              or (kind == "bool" and pa.types.is_boolean(t))
              or (kind == "string" and pa.types.is_string(t))
              or (kind in ("string", "time")
                  and (pa.types.is_timestamp(t) or pa.types.is_date(t))))
        if not ok:
            self.fail(f"column {name!r} is {t}; it cannot be compared with "
                      f"{node.sql()!r} ({kind})", node)
        if kind == "number":
            if pa.types.is_integer(t) and isinstance(value, int):
                try:
                    return pa.scalar(value, t)
                except (pa.ArrowException, OverflowError):
                    return pa.scalar(value, pa.int64() if abs(value) < 2**63 else pa.float64())
            return pa.scalar(float(value), pa.float64())
        if kind in ("string", "time") and not pa.types.is_string(t):
            try:
                return pa.scalar(value).cast(t)
            except pa.ArrowException:
                self.fail(f"column {name!r} is {t}; {value!r} is not a date/time", node)
        return pa.scalar(value, t)

    # -- nodes ---------------------------------------------------------------
    def compile(self, node):
        exp = self.exp
        if isinstance(node, exp.Paren):
            return self.compile(node.this)
        if isinstance(node, exp.And):
            return self.compile(node.this) & self.compile(node.expression)
        if isinstance(node, exp.Or):
            return self.compile(node.this) | self.compile(node.expression)
        if isinstance(node, exp.Not):
            return ~self.compile(node.this)
        if isinstance(node, exp.Boolean):
            return pc.scalar(bool(node.this))
        if isinstance(node, (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)):
            return self.comparison(node)
        if isinstance(node, exp.In):
            name, t = self.list_column(node.this)
            if node.args.get("query") is not None or node.args.get("unnest") is not None:
                self.fail("IN takes a list of literals", node)
            if not node.expressions:
                self.fail("IN () needs at least one value", node)
            values = [self.scalar(v, name, t).as_py() for v in node.expressions]
            if pa.types.is_integer(t):  # a non-integral number equals no integer
                values = [v for v in values if float(v).is_integer()]
            found = pc.field(name).isin(pa.array(values).cast(t) if values else pa.array([], t))
            # SQL: NULL IN (...) is unknown, so NOT IN fails on nulls too (isin says false)
            return pc.if_else(pc.field(name).is_valid(), found, pa.scalar(None, pa.bool_()))
        if isinstance(node, exp.Between):
            name, t = self.list_column(node.this)
            low = self.scalar(node.args["low"], name, t)
            high = self.scalar(node.args["high"], name, t)
            return (pc.field(name) >= low) & (pc.field(name) <= high)
        if isinstance(node, exp.Is):
            if not isinstance(node.expression, exp.Null):
                self.fail("IS takes NULL (IS NULL / IS NOT NULL)", node)
            name, _ = self.any_column(node.this)
            return pc.field(name).is_null()
        if isinstance(node, exp.Like):
            name, t = self.any_column(node.this)
            if not pa.types.is_string(t):
                self.fail(f"LIKE needs a string column; {name!r} is {t}", node.this)
            value, kind = self.literal(node.expression)
            if kind != "string":
                self.fail("LIKE takes a string pattern", node.expression)
            return pc.match_like(pc.field(name), value)
        if isinstance(node, (exp.ArrayContainsAll, exp.ArrayContains)):
            name, t = self.any_column(node.this)
            if not pa.types.is_list(t):
                self.fail(f"CONTAINS needs a list<string> column; {name!r} is {t}", node.this)
            value, kind = self.literal(node.expression)
            if kind != "string":
                self.fail(f"CONTAINS takes a string; got {node.expression.sql()!r}",
                          node.expression)
            return pc.Expression._call(CONTAINS_FUNCTION, [pc.field(name), pc.scalar(value)])
        if isinstance(node, exp.Column):
            name, t = self.column(node)
            if not pa.types.is_boolean(t):
                self.fail(f"column {name!r} is {t}, not a condition (compare it with a "
                          "value)", node)
            return pc.field(name)
        self.fail(f"unsupported expression {node.sql()!r} ({type(node).__name__})", node)

    def any_column(self, node):
        if not isinstance(node, self.exp.Column):
            self.fail(f"expected a column name, got {node.sql()!r}", node)
        return self.column(node)

    def list_column(self, node):
        name, t = self.any_column(node)
        if pa.types.is_list(t):
            self.fail(f"column {name!r} is a list; use CONTAINS", node)
        return name, t

    def comparison(self, node):
        exp = self.exp
        left, right = node.this, node.expression
        flipped = False
        if not isinstance(left, exp.Column) and isinstance(right, exp.Column):
            left, right, flipped = right, left, True
        name, t = self.list_column(left)
        if isinstance(right, exp.Column):
            other, t2 = self.list_column(right)
            numeric = ((pa.types.is_integer(t) or pa.types.is_floating(t))
                       and (pa.types.is_integer(t2) or pa.types.is_floating(t2)))
            if not (numeric or t == t2):
                self.fail(f"columns {name!r} ({t}) and {other!r} ({t2}) cannot be compared",
                          node)
            rhs = pc.field(other)
        else:
            rhs = self.scalar(right, name, t)
        lhs = pc.field(name)
        op = type(node)
        if flipped:
            op = {exp.GT: exp.LT, exp.LT: exp.GT, exp.GTE: exp.LTE, exp.LTE: exp.GTE}.get(op, op)
        return {exp.EQ: lhs.__eq__, exp.NEQ: lhs.__ne__, exp.GT: lhs.__gt__,
                exp.GTE: lhs.__ge__, exp.LT: lhs.__lt__, exp.LTE: lhs.__le__}[op](rhs)


def _parse(text, schema):
    exp, Parser, Tokenizer = _sqlglot()
    from sqlglot.errors import ParseError, TokenError

    try:
        trees = Parser().parse(Tokenizer().tokenize(text), text)
    except ParseError as exc:
        err = (exc.errors or [{}])[0]
        where = (f" at line {err['line']}, column {err['col']}"
                 if err.get("line") is not None else "")
        raise ValueError(f"filter {text!r}: syntax error{where}: "
                         f"{err.get('description', exc)}") from None
    except TokenError as exc:
        raise ValueError(f"filter {text!r}: syntax error: {exc}") from None
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise ValueError(f"filter {text!r}: expected one condition; got {len(trees)}")
    tree = trees[0]
    if isinstance(tree, exp.Alias):
        raise ValueError(f"filter {text!r}: syntax error: unexpected "
                         f"{tree.alias!r}{_where(tree.args['alias'])} (missing AND/OR?)")
    return _Compiler(exp, schema, text).compile(tree)


# -- public ----------------------------------------------------------------------------

def compile_filter(filter, schema):
    """A filter as a checked ``pyarrow.compute.Expression``, or None.

    Parameters
    ----------
    filter : None, a SQL-like string (see the module docstring) or a
        ``pyarrow.compute.Expression``.
    schema : pyarrow.Schema of the attribute columns (None: the index has none).

    Returns None for ``filter=None``. Raises ``ValueError`` for a syntax error
    (with its position), an unknown column, a type mismatch (naming the column
    and the position), or any filter on an index without attributes;
    ``TypeError`` for a filter of another type.
    """
    if filter is None:
        return None
    if not isinstance(filter, (str, pc.Expression)):
        raise TypeError(f"filter must be a string or a pyarrow.compute.Expression; got "
                        f"{type(filter).__name__}")
    if schema is None:
        raise ValueError("filter given but the index has no attributes (add vectors with "
                         "add(x, attributes=...) first)")
    _ensure_udfs()
    if isinstance(filter, str):
        if not filter.strip():
            raise ValueError("filter is an empty string; pass None for no filter")
        expr = _parse(filter, schema)
    else:
        expr = filter
    # bind it to the schema: unknown fields and impossible types fail here, not mid-search
    try:
        mask = _evaluate(expr, null_table(schema, 0))
    except (pa.ArrowException, TypeError) as exc:
        raise ValueError(f"filter {str(filter)!r} does not apply to the attributes "
                         f"({', '.join(f'{f.name}: {f.type}' for f in schema)}): {exc}") from None
    if not pa.types.is_boolean(mask.type) and not pa.types.is_null(mask.type):
        raise ValueError(f"filter {str(filter)!r} gives {mask.type}, not a condition")
    return expr


def _evaluate(expr, table):
    import pyarrow.acero as ac

    decl = ac.Declaration.from_sequence([
        ac.Declaration("table_source", ac.TableSourceNodeOptions(table)),
        ac.Declaration("project", ac.ProjectNodeOptions([expr], ["m"])),
    ])
    # one thread keeps the batches (the lists) in order
    return decl.to_table(use_threads=False).column(0)


def filter_mask(expr, table):
    """bool (table.num_rows,): which rows of ``table`` pass ``expr`` (null: False).

    Parameters
    ----------
    expr : pyarrow.compute.Expression (from :func:`compile_filter`).
    table : pyarrow.Table holding the columns ``expr`` names.
    """
    n = table.num_rows
    if n == 0:
        return np.zeros(0, bool)
    _ensure_udfs()
    col = _evaluate(expr, table)
    if pa.types.is_null(col.type):
        return np.zeros(n, bool)
    out = pc.fill_null(col, False).to_numpy(zero_copy_only=False)
    return np.asarray(out, bool)


def expand_probes(dis0, probes, counts, sizes, nprobe):
    """Probes for a filtered search: each query's lists in coarse order until the
    rows passing the filter in them reach the rows its ``nprobe`` closest lists
    hold (what an unfiltered search scans), or the ranking ends.

    Parameters
    ----------
    dis0 : float32 (nq, L), probes int64 (nq, L): a coarse ranking of L >=
        nprobe lists per query, closest first (-1: no list).
    counts : int64 (nlist,), rows passing the filter per list.
    sizes : int64 (nlist,), rows per list.
    nprobe : int, the lists an unfiltered search would scan.

    Returns ``(dis0, probes)`` of width w in nprobe..L: the first nprobe lists
    always, more while the passing rows fall short, -1 after a query's last.
    With a filter passing every row this is exactly the nprobe closest lists.
    """
    nq, width = probes.shape
    nprobe = min(int(nprobe), width)
    valid = probes >= 0
    safe = np.where(valid, probes, 0)
    target = np.where(valid[:, :nprobe], sizes[safe[:, :nprobe]], 0).sum(axis=1)
    return _take_until(dis0, probes, counts, target, np.full(nq, nprobe))


def _take_until(dis0, probes, counts, target, least):
    """Each query's first lists of a ranking (nq, L) until their passing rows
    (``counts``) reach ``target`` (nq,), at least ``least`` (nq,) of them; -1
    after a query's last, the width the most any query takes."""
    nq, width = probes.shape
    valid = probes >= 0
    passing = np.cumsum(np.where(valid, counts[np.where(valid, probes, 0)], 0), axis=1)
    # lists needed: the first position whose running count reaches the target
    need = np.minimum((passing < target[:, None]).sum(axis=1) + 1, width)
    need = np.maximum(need, least)
    w = int(need.max()) if nq else int(least.max(initial=0))
    keep = np.arange(w)[None, :] < need[:, None]
    return (np.ascontiguousarray(dis0[:, :w]),
            np.ascontiguousarray(np.where(keep, probes[:, :w], -1)))


def filter_probes(dis0, probes, counts, sizes, rank):
    """The selectivity rule (README, "Filters and attributes"): the probes of a
    filtered search, for a local index and a coordinator alike.

    Each query probes further down its coarse ranking until the rows passing
    the filter in its lists reach ``sqrt(s)`` times the rows its ``nprobe``
    lists hold, ``s`` the fraction of the index that passes: about
    ``nprobe / sqrt(s)`` lists (10x at 1%), between scanning the ``nprobe``
    lists alone (recall falls with ``s``: the passing neighbours lie
    farther) and scanning as many passing rows as they hold (``nprobe / s``
    lists, 100x at 1%, for recall no better than the PQ's ceiling; see
    README, "Filters and attributes", for the measured figures). Only lists
    holding passing rows are ranked (and returned): the others add nothing,
    and ranking every list against a query costs more than scanning a
    selective filter's few rows. They are ranked as deep as the sparsest
    query needs at the filter's average density, twice over (a query needing
    more stops there).

    Parameters
    ----------
    dis0 : float32 (nq, nprobe), probes int64 (nq, nprobe): the coarse probes
        an unfiltered search scans (-1: no list).
    counts : int64 (nlist,), rows passing the filter per list.
    sizes : int64 (nlist,), live rows per list.
    rank : callable ``rank(depth, lists) -> (dis0, probes)``: the queries'
        ``depth`` closest lists among the sorted int64 ``lists`` (float32 /
        int64 (nq, depth), closest first, ties by the smaller list: the full
        ranking with the other lists left out); called only when some query
        needs more lists.

    Returns ``(dis0, probes)`` as given when every query's lists hold enough
    passing rows (or nothing passes, or every list is probed already), else
    the passing lists to scan, closest first (-1 after a query's last).
    """
    nlist = len(counts)
    nprobe = probes.shape[1]
    valid = probes >= 0
    safe = np.where(valid, probes, 0)
    total = int(counts.sum())
    density = total / max(int(sizes.sum()), 1)
    have = np.where(valid, counts[safe], 0).sum(axis=1)
    want = np.where(valid, sizes[safe], 0).sum(axis=1) * np.sqrt(density)
    if total == 0 or (have >= want).all() or nprobe >= nlist:
        return dis0, probes
    lists = np.flatnonzero(counts).astype(np.int64)
    # twice the lists the filter's density needs, of which these hold passing rows
    depth = int(np.ceil(2 * nprobe / np.sqrt(density) * lists.size / nlist))
    depth = min(lists.size, max(depth, nprobe + 1))
    full_dis0, full_probes = rank(depth, lists)
    # the passing lists among a query's own probes come first in its ranking
    least = (valid & (counts[safe] > 0)).sum(axis=1)
    return _take_until(full_dis0, full_probes, counts, want, least)


def check_columns(columns, schema):
    """``columns`` (attribute columns to return with the hits) as a list of names
    of ``schema``; None stays None and one name is a list of one.

    Parameters
    ----------
    columns : None, a column name or a sequence of names.
    schema : pyarrow.Schema of the attribute columns (None: the index has none).

    Raises ``ValueError`` naming a column the index does not have (or saying it
    has none) or for an empty list, ``TypeError`` for something other than
    names.
    """
    if columns is None:
        return None
    if isinstance(columns, str):
        columns = [columns]
    try:
        names = None if isinstance(columns, bytes) else list(columns)
    except TypeError:
        names = None
    if names is None or not all(isinstance(c, str) for c in names):
        raise TypeError(f"columns must be a list of column names; got {columns!r}")
    columns = names
    if not columns:
        raise ValueError("columns is empty; pass None to get no columns")
    have = [] if schema is None else list(schema.names)
    unknown = [c for c in columns if c not in have]
    if unknown:
        if not have:
            raise ValueError(f"columns {unknown} asked for, but the index has no attribute "
                             "columns (add vectors with attributes=... first)")
        raise ValueError(f"unknown attribute column {unknown[0]!r} (columns: "
                         f"{', '.join(have)})")
    return columns


def filter_key(expr):
    """Bytes identifying ``expr`` exactly (a cache key; equal for equal expressions)."""
    return pickle.dumps(expr)
