"""The series selectors of a PromQL expression: metric names and label matchers.

A small tokenizer and walker, enough to say which metrics (and which labels of
them) an expression reads: strings, ranges (``[5m]``, ``[1h:1m]``), numbers and
durations are skipped; identifiers followed by ``(`` are functions or
aggregations (an unknown function is an error); ``by``/``without``/``on``/
``ignoring``/``group_left``/``group_right`` and their label lists are skipped;
``and``/``or``/``unless``/``bool``/``offset`` are keywords. What is left is a
metric name, with the matchers of its ``{...}`` if any; ``{__name__="m"}``
names a metric too. It does not validate syntax: ``promtool`` does that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FUNCTIONS = frozenset(
    """abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp
    clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month
    deg delta deriv end exp floor histogram_count histogram_fraction histogram_quantile histogram_sum
    holt_winters hour idelta increase irate label_join label_replace last_over_time ln log10 log2
    max_over_time min_over_time minute month pi predict_linear present_over_time quantile_over_time
    rad rate resets round scalar sgn sin sinh sort sort_desc sqrt start stddev_over_time
    stdvar_over_time sum_over_time tan tanh time timestamp vector year""".split()  # noqa: SIM905
)
AGGREGATIONS = frozenset(
    "avg bottomk count count_values group max min quantile stddev stdvar sum topk".split()  # noqa: SIM905
)
GROUPING = frozenset(("by", "without", "on", "ignoring", "group_left", "group_right"))
KEYWORDS = frozenset(("and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"))

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)(?:ms|s|m|h|d|w|y)*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},@])
  | (?P<space>\s+|\#[^\n]*)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...] = ()


def tokenize(expr: str) -> list[tuple[str, str]]:
    """(kind, text) pairs, spaces and comments left out; ValueError at an unknown character."""
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"unexpected {expr[position]!r} at {position} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    return bytes(text[1:-1], "utf-8").decode("unicode_escape")


def _closing(tokens: list[tuple[str, str]], start: int) -> int:
    """The index after the ``)`` matching the ``(`` at ``start``."""
    depth = 0
    for index in range(start, len(tokens)):
        if tokens[index][1] == "(":
            depth += 1
        elif tokens[index][1] == ")":
            depth -= 1
            if depth == 0:
                return index + 1
    raise ValueError("unbalanced parentheses")


def _matchers(tokens: list[tuple[str, str]], start: int) -> tuple[tuple[Matcher, ...], int]:
    """The matchers of the ``{...}`` at ``start``, and the index after its ``}``."""
    matchers: list[Matcher] = []
    index = start + 1
    while tokens[index][1] != "}":
        if tokens[index][1] == ",":
            index += 1
            continue
        (label_kind, label), (_, op), (value_kind, value) = tokens[index : index + 3]
        if label_kind != "ident" or value_kind != "string" or op not in ("=", "!=", "=~", "!~"):
            raise ValueError(f"malformed matcher at {label!r}")
        matchers.append(Matcher(label, op, _unquote(value)))
        index += 3
    return tuple(matchers), index + 1


def selectors(expr: str) -> list[Selector]:
    """The series selectors of ``expr``, in order."""
    tokens = tokenize(expr)
    found: list[Selector] = []
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind == "ident":
            word = text.lower()
            if word in GROUPING:
                index = _closing(tokens, index + 1) if following == "(" else index + 1
                continue
            if word in KEYWORDS:
                index += 1
                continue
            if word in AGGREGATIONS or following == "(":
                if word not in AGGREGATIONS and word not in FUNCTIONS:
                    raise ValueError(f"unknown function {text!r} in {expr!r}")
                index += 1
                continue
            matchers: tuple[Matcher, ...] = ()
            index += 1
            if following == "{":
                matchers, index = _matchers(tokens, index)
            found.append(Selector(text, matchers))
        elif text == "{":
            matchers, index = _matchers(tokens, index)
            names = [m.value for m in matchers if m.label == "__name__" and m.op == "="]
            if len(names) != 1:
                raise ValueError(f"a selector without one metric name in {expr!r}")
            found.append(Selector(names[0], tuple(m for m in matchers if m.label != "__name__")))
        else:
            index += 1
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` reads."""
    return {selector.metric for selector in selectors(expr)}
