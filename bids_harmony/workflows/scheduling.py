"""Nipype's Linear and MultiProc plugins, finishing runs one after another.

Nipype orders nodes by topological *generation*: every run's first node, then
every run's second node, and so on, so with 44 runs all 44 finished in the last
15 s of an 8-minute participant level and a crash late in the level left no run
complete.  These plugins keep Nipype's execution and change only the order:

- :class:`RunOrderLinearPlugin` runs each connected component of the graph
  (each run: runs share no node) to its end before the next;
- :class:`RunOrderMultiProcPlugin` submits, among the nodes ready to run, those
  of the earliest component first, so workers finish a run before they start
  a new one whenever it has work ready.

Both call ``status_callback.expect(nodes)``, when the callback has it, with the
nodes of the execution graph (:class:`~bids_harmony.workflows.progress.Progress`
counts each run's nodes).  They rely on Nipype's plugin hooks ``run`` and, for
MultiProc, ``_generate_dependency_list`` and ``_sort_jobs`` (Nipype 1.8-1.x);
other plugins (``--use-plugin``) are used as Nipype provides them.
"""

from __future__ import annotations

from typing import Any

from nipype.pipeline.plugins.linear import LinearPlugin
from nipype.pipeline.plugins.multiproc import MultiProcPlugin


def component_ranks(graph: Any) -> dict[Any, int]:
    """Node → index of its weakly connected component, in the graph's node order."""
    import networkx as nx

    order = {node: i for i, node in enumerate(graph.nodes())}
    components = sorted(nx.weakly_connected_components(graph),
                        key=lambda nodes: min(order[n] for n in nodes))  # fmt: skip
    return {node: rank for rank, nodes in enumerate(components) for node in nodes}


def _announce(plugin: Any, graph: Any) -> None:
    expect = getattr(plugin.plugin_args.get("status_callback"), "expect", None)
    if callable(expect):
        expect(list(graph.nodes()))


class RunOrderLinearPlugin(LinearPlugin):
    """Nipype's ``Linear`` plugin, one connected component (one run) at a time."""

    def run(self, graph: Any, config: Any, updatehash: bool = False) -> None:
        from nipype.utils.misc import str2bool

        _announce(self, graph)
        ranks = component_ranks(graph)
        components: dict[int, list[Any]] = {}
        for node in graph.nodes():
            components.setdefault(ranks[node], []).append(node)
        errors: list[BaseException] = []
        for rank in sorted(components):
            try:
                super().run(graph.subgraph(components[rank]).copy(), config, updatehash)
            except Exception as err:  # re-raised once the other runs are done
                errors.append(err)
                if str2bool(config["execution"]["stop_on_first_crash"]):
                    break
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise RuntimeError(f"{len(errors)} runs raised. Re-raising first.") from errors[0]


class RunOrderMultiProcPlugin(MultiProcPlugin):
    """Nipype's ``MultiProc`` plugin, preferring ready nodes of the earliest run."""

    def _generate_dependency_list(self, graph: Any) -> None:
        super()._generate_dependency_list(graph)
        ranks = component_ranks(graph)
        self._run_rank = [ranks[node] for node in self.procs]
        _announce(self, graph)

    def _sort_jobs(self, jobids: Any, scheduler: str = "tsort") -> Any:
        jobids = super()._sort_jobs(jobids, scheduler=scheduler)
        rank = getattr(self, "_run_rank", None)
        return jobids if rank is None else sorted(jobids, key=lambda j: rank[j])


def make_runner(plugin: str, plugin_args: dict[str, Any]) -> Any:
    """The plugin for ``Workflow.run``: ours for Linear and MultiProc, else the name."""
    if plugin == "Linear":
        return RunOrderLinearPlugin(plugin_args=plugin_args)
    if plugin == "MultiProc":
        return RunOrderMultiProcPlugin(plugin_args=plugin_args)
    return plugin
