"""Random metadata and filters for hypothesis, and the plain evaluation of a filter over one
chunk's metadata dict that `index.attributes` is checked against."""

from hypothesis import strategies as st

from index.filters import AllOf, AnyOf, Equals, Not, OneOf, Range

KEYS = ("kind", "year", "flag", "tags")
scalars = st.one_of(st.sampled_from(["a", "b", "true", "1"]), st.integers(-3, 3), st.sampled_from([0.5, 2.0]), st.booleans())
unusual = st.sampled_from([float("inf"), float("-inf"), float("nan")])  # stored values no filter may name (NaN) or that bound nothing
values = st.one_of(scalars, unusual, st.lists(scalars, max_size=2), st.just({"nested": 1}))
metadata = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)
keys = st.sampled_from(KEYS + ("absent",))
bounds = st.one_of(st.none(), st.integers(-3, 3), st.just(1.5), st.sampled_from([float("inf"), float("-inf")]))
conditions = st.one_of(
    st.builds(Equals, keys, scalars),
    st.builds(OneOf, keys, st.lists(scalars, min_size=1, max_size=3).map(tuple)),
    st.builds(Range, keys, bounds, bounds, bounds, bounds).filter(lambda r: any(b is not None for b in (r.gt, r.gte, r.lt, r.lte))),
)
filters = st.recursive(
    conditions,
    lambda inner: st.one_of(
        st.builds(AllOf, st.lists(inner, min_size=1, max_size=3).map(tuple)),
        st.builds(AnyOf, st.lists(inner, min_size=1, max_size=3).map(tuple)),
        st.builds(Not, inner),
    ),
    max_leaves=6,
)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def same(a, b) -> bool:
    """Equality as filters mean it: numbers by value, strings and bools only with their own kind."""
    if is_number(a) or is_number(b):
        return is_number(a) and is_number(b) and a == b
    return type(a) is type(b) and a == b


def holds(where, meta: dict) -> bool:
    match where:
        case Equals(key, value):
            return key in meta and same(meta[key], value)
        case OneOf(key, options):
            return key in meta and any(same(meta[key], v) for v in options)
        case Range(key, gt, gte, lt, lte):
            v = meta.get(key)
            return is_number(v) and (gt is None or v > gt) and (gte is None or v >= gte) and (lt is None or v < lt) and (lte is None or v <= lte)
        case AllOf(parts):
            return all(holds(p, meta) for p in parts)
        case AnyOf(parts):
            return any(holds(p, meta) for p in parts)
        case Not(part):
            return not holds(part, meta)
