"""The monitoring files of deploy/: the rules file is the source, the PrometheusRule of the kustomize
component its copy. ``python -m tests.monitoring`` (``make rules``) writes the copy; test_monitoring
fails while the two differ."""

from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "monitoring" / "connector.rules.yaml"
RULES_TESTS = DEPLOY / "monitoring" / "connector.rules.test.yaml"
DASHBOARD = DEPLOY / "monitoring" / "connector-dashboard.json"
COMPONENT = DEPLOY / "kubernetes" / "components" / "monitoring"
PROMETHEUS_RULE = COMPONENT / "prometheusrule.yaml"

HEADER = """\
# Written by `make rules` from deploy/monitoring/connector.rules.yaml: edit that file, then run it.
# The alerts' runbooks are in docs/operations.md, "Alerts".
"""


def prometheus_rule() -> dict[str, Any]:
    """The PrometheusRule holding the rules file's groups."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "payment-connector"},
        "spec": {"groups": groups},
    }


class _BlockStrings(yaml.SafeDumper):
    """Multi-line expressions as ``|-`` blocks, as in the rules file."""


_BlockStrings.add_representer(
    str, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)
)


def main() -> None:
    text = yaml.dump(prometheus_rule(), Dumper=_BlockStrings, sort_keys=False, width=200, allow_unicode=True)
    PROMETHEUS_RULE.write_text(HEADER + text)


if __name__ == "__main__":
    main()
