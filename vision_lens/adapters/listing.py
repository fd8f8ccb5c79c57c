"""What ``vision-lens models`` prints and the README's model table: the registry as text (torch-free)."""

from __future__ import annotations

from .registry import Architecture, architectures


def _blocks(architecture: Architecture) -> str:
    return "any" if architecture.blocks is None else str(architecture.blocks)


def table() -> str:
    """Every registration, one model a line: its name, blocks and readout, then its weights and preprocessing."""
    rows = [(a.name, _blocks(a), a.readout, _weights(a)) for a in architectures()]
    width = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    indent = " " * (width[0] + width[1] + 4)
    header = f"{'--model':<{width[0]}}  {'blocks':>{width[1]}}  readout / weights"
    return "\n".join([header] + [f"{r[0]:<{width[0]}}  {r[1]:>{width[1]}}  {r[2]}\n{indent}{r[3]}" for r in rows])


def _weights(architecture: Architecture) -> str:
    entry = architecture.weights
    preprocessing = f"; {entry.preprocessing}" if entry.preprocessing is not None else ""
    return entry.describe() + preprocessing


def markdown() -> str:
    """The registry as a markdown table (the README's); consecutive models that share a readout and a publisher
    share a row."""
    groups: list[list[Architecture]] = []
    for architecture in architectures():
        last = groups[-1][-1] if groups else None
        if last is not None and not (last.open_ended or architecture.open_ended) and _same_group(last, architecture):
            groups[-1].append(architecture)
        else:
            groups.append([architecture])
    lines = ["| `--model` | blocks | what a lens reads; unembedding | weights (`--weights pretrained`) |",
             "|---|---|---|---|"]
    for group in groups:
        names = ", ".join(f"`{a.name}`" for a in group)
        blocks = ", ".join(_blocks(a) for a in group)
        weights = group[0].weights.describe() if len(group) == 1 else (
            f"{group[0].weights.origin}, {group[0].weights.split} acc "
            + ", ".join(f"{a.weights.published_accuracy():g}" for a in group))
        lines.append(f"| {names} | {blocks} | {_escaped(group[0].readout)} | {_escaped(weights)} |")
    return "\n".join(lines)


def _same_group(a: Architecture, b: Architecture) -> bool:
    """Published by one source with an accuracy each, read alike: the models differ only in depth."""
    return (a.readout, a.weights.origin) == (b.readout, b.weights.origin) and a.weights.kind == b.weights.kind == "url" \
        and None not in (a.weights.accuracy, b.weights.accuracy)


def _escaped(text: str) -> str:
    """``text`` as markdown shows it literally: ``timm:vit_*`` is no emphasis, ``<name>`` no HTML tag."""
    return text.replace("*", "\\*").replace("<", "&lt;")
