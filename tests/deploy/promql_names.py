"""Metric names in PromQL, found by a small tokenizer (so no test keeps a hand-written list), and the
series names a Prometheus text exposition can produce. Used by tests/deploy."""

from __future__ import annotations

import re

# ---- PromQL -----------------------------------------------------------------------------------------
# Aggregation operators may be followed by `by (...)` / `without (...)` before their parenthesis, so
# they are recognised by name; every other function is an identifier directly followed by "(".
AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ]
)
KEYWORDS = frozenset(
    [
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "inf",
        "nan",
        "atan2",
    ]
)
LABEL_LIST_KEYWORDS = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right"])
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[^\]]*\]\])
  | (?P<number>0x[0-9a-fA-F]+|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?(?:ms|[smhdwy])?(?:[0-9]+(?:ms|[smhdwy]))*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@])
    """,
    re.VERBOSE,
)


def tokenize(expr: str) -> list[tuple[str, str]]:
    """``(kind, text)`` tokens of a PromQL expression (Grafana's ``$var`` / ``${var}`` kept as one token)."""
    out, i = [], 0
    while i < len(expr):
        m = _TOKEN.match(expr, i)
        if m is None:
            raise ValueError(f"cannot tokenize {expr!r} at {i}: {expr[i : i + 20]!r}")
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
        i = m.end()
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, aggregations or
    keywords, outside label matchers ``{...}``, range/subquery brackets ``[...]`` and the label lists
    of ``by / without / on / ignoring / group_left / group_right``. Also ``{__name__="..."}``."""
    toks = tokenize(expr)
    names: set[str] = set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if text == "{":  # label matchers: only __name__="x" names a metric
            j = i + 1
            while j < len(toks) and toks[j][1] != "}":
                if (
                    toks[j][1] == "__name__"
                    and j + 2 < len(toks)
                    and toks[j + 1][1] == "="
                    and toks[j + 2][0] == "string"
                ):
                    names.add(toks[j + 2][1][1:-1])
                j += 1
            i = j + 1
            continue
        if text == "[":  # range or subquery
            depth, j = 1, i + 1
            while j < len(toks) and depth:
                depth += {"[": 1, "]": -1}.get(toks[j][1], 0)
                j += 1
            i = j
            continue
        if kind == "ident":
            if text in LABEL_LIST_KEYWORDS and nxt == "(":
                depth, j = 1, i + 2
                while j < len(toks) and depth:
                    depth += {"(": 1, ")": -1}.get(toks[j][1], 0)
                    j += 1
                i = j
                continue
            if not (nxt == "(" or text in AGGREGATIONS or text in KEYWORDS):
                names.add(text)
        i += 1
    return names


HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_family(name: str, histograms: set[str]) -> str:
    """``x_bucket`` / ``x_sum`` / ``x_count`` -> ``x`` when ``x`` is a histogram; else the name itself."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name


def grafana_query_metrics(query: str) -> set[str]:
    """Metric names of a Grafana Prometheus variable query (``label_values(selector, label)``,
    ``query_result(expr)``, ``metrics(regex)`` is refused: it names no metric)."""
    q = query.strip()
    m = re.fullmatch(r"label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", q, re.DOTALL)
    if m:
        return metric_names(m.group(1))
    m = re.fullmatch(r"label_values\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", q)
    if m:
        return set()
    m = re.fullmatch(r"query_result\((.*)\)", q, re.DOTALL)
    if m:
        return metric_names(m.group(1))
    raise ValueError(f"unsupported Grafana variable query {query!r}")


def parse_exposition(text: str) -> tuple[dict[str, str], set[str]]:
    """``({family: type}, {sample names})`` of a Prometheus text exposition."""
    types: dict[str, str] = {}
    samples: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind.strip()
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{\s]", line, 1)[0])
    return types, samples


def exported_names(types: dict[str, str], samples: set[str]) -> set[str]:
    """Every series name the families can produce, whether or not a labelled child exists yet
    (a counter ``c`` gives ``c_total``, a histogram ``h`` gives ``h_bucket/_sum/_count``: the bare
    family name of either is no series)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names = set(samples)
    for fam, kind in types.items():
        for suffix in suffixes.get(kind, ("",)):
            names.add(
                fam if kind == "counter" and fam.endswith("_total") and suffix == "_total" else fam + suffix
            )
    return names
