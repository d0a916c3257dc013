"""Metric names referenced by PromQL expressions, and the series each source really exposes.

There is no PromQL parser for Python; expressions in the chart are simple enough that removing
strings, label matchers, grouping clauses and range selectors leaves the metric names as the only
bare identifiers that are neither keywords nor called as functions.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "smtp-infra"
KSM_CONFIG = CHART / "files" / "kube-state-metrics-custom-resource-state.yaml"

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "group", "inf", "nan",
}
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

#: Series of other exporters the chart's rules and dashboard use, with the dependency each implies.
EXTERNAL_SERIES = {
    "kube_deployment_status_replicas_available": "kube-state-metrics (standard Deployment series)",
    "certmanager_certificate_expiration_timestamp_seconds": "cert-manager's controller metrics",
}


def metric_names(expr: str) -> set[str]:
    """Metric (and recording-rule) names an expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables ($__rate_interval, $tenant)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        name = match.group(0)
        before = text[:match.start()]
        if before and (before[-1].isdigit() or before[-1] in "._"):
            continue  # part of a number or duration (1e3, 5m)
        if name.lower() in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def ksm_series() -> set[str]:
    """Series kube-state-metrics exposes with the chart's custom resource state configuration."""
    config = yaml.safe_load(KSM_CONFIG.read_text())
    return {f"{resource['metricNamePrefix']}_{metric['name']}"
            for resource in config["spec"]["resources"] for metric in resource["metrics"]}


def families(exposition: str) -> set[str]:
    """Series names a Prometheus text exposition declares or carries.

    From each ``# TYPE`` line (a labelled family is declared before its first sample exists):
    a counter ``x`` is queried as ``x_total`` (and ``x_created``), a histogram as ``x_bucket``,
    ``x_sum`` and ``x_count``; plus every sample's name.
    """
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "gauge": ("",), "untyped": ("",), "info": ("_info",)}
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind.strip() == "counter":  # the classic text format declares x_total, OpenMetrics x
                name = name.removesuffix("_total")
            names.update(name + suffix for suffix in suffixes.get(kind.strip(), ("",)))
        elif line and not line.startswith("#"):
            match = _IDENT.match(line)
            if match:
                names.add(match.group(0))
    return names
