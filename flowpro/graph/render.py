"""Export graphs as DOT, Mermaid and JSON, for definitions and for runs (with states)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from flowpro.job import InsertPlan, Job

# Fill colours by state (DOT and Mermaid share them).
COLOURS = {
    "suspended": "#e0e0e0",
    "scheduled": "#d6e4ff",
    "available": "#bae0ff",
    "executing": "#ffe58f",
    "retryable": "#ffd591",
    "completed": "#b7eb8f",
    "cancelled": "#efdbff",  # purple, as the CLI shows it: not the grey of suspended
    "discarded": "#ffa39e",
}


@dataclass(slots=True)
class Node:
    """One step in an exported graph."""

    key: str
    name: str
    worker: str
    queue: str
    workflow_id: str
    state: str | None = None
    job_id: int | None = None


@dataclass(slots=True)
class FlatGraph:
    """A graph of steps ready to render; edges go from a dep to the step waiting on it."""

    workflow_id: str
    name: str | None
    nodes: list[Node] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)
    # workflow id -> (name, parent id) for every workflow in the graph
    workflows: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)


def from_plan(plan: InsertPlan, name: str | None, workflow_id: str) -> FlatGraph:
    """Return the graph of a planned (not yet inserted) workflow."""
    graph = FlatGraph(workflow_id=workflow_id, name=name)
    for w in plan.workflows:
        graph.workflows[w.id] = (w.name, w.parent_id)
    for index, job in enumerate(plan.jobs):
        graph.nodes.append(
            Node(f"s{index}", job.step or str(index), job.worker, job.queue, job.workflow_id or "")
        )
    graph.edges = _reduce([(f"s{dep}", f"s{job}") for job, dep in plan.deps])
    return graph


def from_run(
    workflow_id: str,
    workflows: Sequence[dict[str, Any]],
    jobs: Sequence[Job],
    edges: Sequence[tuple[int, int]],
) -> FlatGraph:
    """Return the graph of an inserted workflow with each step's state."""
    name = next((w["name"] for w in workflows if w["id"] == workflow_id), None)
    graph = FlatGraph(workflow_id=workflow_id, name=name)
    for w in workflows:
        graph.workflows[w["id"]] = (w["name"], w["parent_id"])
    known = {job.id for job in jobs}
    for job in jobs:
        graph.nodes.append(
            Node(
                f"j{job.id}",
                job.step or str(job.id),
                job.worker,
                job.queue,
                job.workflow_id or "",
                str(job.state),
                job.id,
            )
        )
    graph.edges = _reduce(
        [(f"j{dep}", f"j{job}") for job, dep in edges if job in known and dep in known]
    )
    return graph


def _reduce(edges: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop edges implied by others (a step waiting on a whole sub-workflow gets one edge per
    sub step; the picture needs only the last ones)."""
    g: nx.DiGraph[str] = nx.DiGraph(edges)
    if not g.number_of_edges():
        return []
    return sorted(nx.transitive_reduction(g).edges())


def _nesting(graph: FlatGraph) -> tuple[dict[str | None, list[str]], dict[str, list[Node]]]:
    """Return each workflow's sub-workflows, and each workflow's nodes."""
    children: dict[str | None, list[str]] = {}
    for wid, (_name, parent) in graph.workflows.items():
        if wid != graph.workflow_id:
            children.setdefault(parent, []).append(wid)
    by_workflow: dict[str, list[Node]] = {}
    for node in graph.nodes:
        by_workflow.setdefault(node.workflow_id, []).append(node)
    return children, by_workflow


# DOT


def to_dot(graph: FlatGraph) -> str:
    """Return Graphviz DOT; sub-workflows are clusters, run states are fill colours."""
    lines = [
        f"digraph {_dot_id(graph.name or graph.workflow_id)} {{",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica"];',
    ]
    children, by_workflow = _nesting(graph)

    def emit(wid: str, indent: str) -> None:
        for node in by_workflow.get(wid, []):
            # Escape the parts, not the joined label: "\\n" is DOT's line break.
            label = _dot_escape(node.name)
            if node.state is not None:
                label += "\\n" + _dot_escape(node.state)
            colour = COLOURS.get(node.state or "", "#ffffff")
            lines.append(
                f'{indent}{node.key} [label="{label}", fillcolor="{colour}", '
                f'tooltip="{_dot_escape(node.worker)}"];'
            )
        for child in children.get(wid, []):
            name = graph.workflows[child][0] or child
            lines.append(f"{indent}subgraph cluster_{_safe(child)} {{")
            lines.append(f'{indent}  label="{_dot_escape(name)}"; style="rounded,dashed";')
            emit(child, indent + "  ")
            lines.append(f"{indent}}}")

    emit(graph.workflow_id, "  ")
    for src, dst in graph.edges:
        lines.append(f"  {src} -> {dst};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _dot_id(text: str) -> str:
    return '"' + _dot_escape(text) + '"'


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text)


# Mermaid


def to_mermaid(graph: FlatGraph) -> str:
    """Return a Mermaid flowchart; run states become classes with fill colours."""
    lines = ["flowchart LR"]
    children, by_workflow = _nesting(graph)

    def emit(wid: str, indent: str) -> None:
        for node in by_workflow.get(wid, []):
            label = node.name if node.state is None else f"{node.name}<br/>{node.state}"
            lines.append(f'{indent}{node.key}["{_mermaid_escape(label)}"]')
        for child in children.get(wid, []):
            name = graph.workflows[child][0] or child
            # A Mermaid subgraph id must not start with a digit (workflow ids often do).
            lines.append(f'{indent}subgraph wf_{_safe(child)}["{_mermaid_escape(name)}"]')
            emit(child, indent + "  ")
            lines.append(f"{indent}end")

    emit(graph.workflow_id, "  ")
    for src, dst in graph.edges:
        lines.append(f"  {src} --> {dst}")
    states = sorted({node.state for node in graph.nodes if node.state})
    for state in states:
        lines.append(f"  classDef {state} fill:{COLOURS.get(state, '#ffffff')},stroke:#555")
        keys = ",".join(node.key for node in graph.nodes if node.state == state)
        lines.append(f"  class {keys} {state}")
    return "\n".join(lines) + "\n"


def _mermaid_escape(text: str) -> str:
    return text.replace('"', "#quot;")


# JSON


def to_json(graph: FlatGraph) -> str:
    """Return the graph as JSON: nodes (with deps by name), edges, and workflows."""
    names = {node.key: node for node in graph.nodes}
    deps: dict[str, list[str]] = {node.key: [] for node in graph.nodes}
    for src, dst in graph.edges:
        deps[dst].append(names[src].name)
    doc = {
        "workflow_id": graph.workflow_id,
        "name": graph.name,
        "nodes": [
            {
                "key": node.key,
                "name": node.name,
                "worker": node.worker,
                "queue": node.queue,
                "workflow_id": node.workflow_id,
                "state": node.state,
                "job_id": node.job_id,
                "deps": deps[node.key],
            }
            for node in graph.nodes
        ],
        "edges": [[src, dst] for src, dst in graph.edges],
        "workflows": [
            {"id": wid, "name": name, "parent_id": parent}
            for wid, (name, parent) in graph.workflows.items()
        ],
    }
    return json.dumps(doc, indent=2)
