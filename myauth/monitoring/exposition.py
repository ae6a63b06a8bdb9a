"""Prometheus' text exposition format (version 0.0.4), from a list of samples. No I/O."""

import math
from dataclasses import dataclass, field


@dataclass
class Metric:
    name: str
    kind: str  # gauge or counter
    help: str
    samples: list = field(default_factory=list)  # [(labels dict, value)]

    def add(self, value, **labels) -> None:
        self.samples.append((labels, value))


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value) if isinstance(value, float) and not value.is_integer() else str(int(value))


def render(metrics) -> str:
    lines = []
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {metric.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        for labels, value in metric.samples:
            rendered = ",".join(f'{key}="{escape(str(label))}"' for key, label in sorted(labels.items()))
            lines.append(f"{metric.name}{{{rendered}}} {number(value)}" if labels else f"{metric.name} {number(value)}")
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict:
    """{(name, frozenset of label items): value} from exposition text: what scripts/status and the
    tests read back. Only what render() writes."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, brace, rest = head.partition("{")
        labels = {}
        if brace:
            body = rest[:-1]
            while body:
                key, _, body = body.partition('="')
                chars, i = [], 0
                while body[i] != '"':
                    if body[i] == "\\":
                        i += 1
                        chars.append({"n": "\n"}.get(body[i], body[i]))
                    else:
                        chars.append(body[i])
                    i += 1
                labels[key] = "".join(chars)
                body = body[i + 1:].lstrip(",")
        samples[(name, frozenset(labels.items()))] = float(value)
    return samples
