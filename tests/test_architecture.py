"""The layers hold: ops → stages → library, no import cycles, Prefect and MLflow only in ops, and dvc.yaml is
what the stage specs and their code's imports say it is (so a stage can never look up to date while stale)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from dcm.ops.dvcfile import SPECS, code_dependencies, imports_of, module_files, render
from tests.conftest import REPO

pytestmark = pytest.mark.fast

SERVICES = ("prefect", "prefect_dask", "mlflow")  # what only the ops layer may import


def layer(module: str) -> str:
    if module.startswith("dcm.ops"):
        return "ops"
    return "stages" if module.startswith("dcm.stages") else "library"


def third_party_imports(module: str) -> set[str]:
    """Top-level names of every package `module` imports, anywhere in its source."""
    tree = ast.parse(module_files()[module].read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add((node.module or "").split(".")[0])
    return names


def unit(module: str) -> str:
    """The library's packages (data, models, train, eval) are one unit each; other modules are their own."""
    parts = module.split(".")
    return ".".join(parts[:2]) if layer(module) == "library" and len(parts) > 2 else module


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in module_files():
        graph.setdefault(unit(module), set()).update(unit(t) for t in imports_of(module) if unit(t) != unit(module))
    return graph


def cycles(graph: dict[str, set[str]] | None = None) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), by default over the modules and every
    import statement."""
    graph = graph or {module: set(imports_of(module)) for module in module_files()}
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_sees_lazy_and_relative_imports():
    assert "dcm.eval.scores" in imports_of("dcm.stages.teacher")
    assert {"dcm.models.toy", "dcm.models.cogvideox"} <= imports_of("dcm.models.registry")  # inside a function
    assert "dcm.ops.flows.shard" in imports_of("dcm.ops.cli")  # imported when the command runs


def test_no_import_cycles():
    assert cycles() == []


def test_the_library_packages_do_not_import_each_other_in_a_circle():
    """data, models, train and eval (and the top-level library modules) form a DAG: train and eval used to
    import each other."""
    assert cycles(package_graph()) == []


def test_config_knows_the_same_vbench_dimensions_as_the_weights_table():
    from dcm.config import VBENCH_DIMENSIONS
    from dcm.eval.vbench_weights import REQUIRED
    assert set(VBENCH_DIMENSIONS) == set(REQUIRED)


def test_no_layer_imports_upwards():
    order = {"library": 0, "stages": 1, "ops": 2}
    upward = [(module, target) for module in module_files() for target in imports_of(module)
              if order[layer(target)] > order[layer(module)]]
    assert upward == []


def test_only_the_ops_layer_talks_to_prefect_and_mlflow():
    offenders = {module: sorted(third_party_imports(module) & set(SERVICES)) for module in module_files()
                 if layer(module) != "ops" and third_party_imports(module) & set(SERVICES)}
    assert offenders == {}


def test_the_product_never_imports_the_research_harness_or_tests():
    offenders = {module for module in module_files()
                 if third_party_imports(module) & {"research", "tests", "benchmarks", "flows", "scripts"}}
    assert offenders == set()


def test_dvc_yaml_is_the_generated_one():
    """Edit a stage spec or an import, forget `dcm dvc-yaml`, and this fails."""
    assert (REPO / "dvc.yaml").read_text() == render(), "dvc.yaml is out of date: run `dcm dvc-yaml`"


# One interpreter imports the heavy third-party packages once, then forks a child per flow that imports only
# that flow: each child's sys.modules is what a fresh `dcm` process of that stage loads from the project.
LOADED_BY_EACH_FLOW = """
import importlib, json, os, sys
for heavy in ("torch", "diffusers", "transformers", "peft", "webdataset", "prefect", "mlflow"):
    importlib.import_module(heavy)
assert not any(name == "dcm" or name.startswith("dcm.") for name in sys.modules)
loaded = {}
for flow in sys.argv[1:]:
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        importlib.import_module(flow)
        with os.fdopen(write, "w") as out:
            json.dump(sorted(getattr(m, "__file__", None) or "" for m in list(sys.modules.values())), out)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        loaded[flow] = json.load(pipe)
    assert os.waitpid(child, 0)[1] == 0, flow
print(json.dumps(loaded))
"""


@pytest.fixture(scope="module")
def loaded_by_each_flow() -> dict[str, list[str]]:
    flows = sorted({spec.flow for spec in SPECS})
    done = subprocess.run([sys.executable, "-c", LOADED_BY_EACH_FLOW, *flows], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.integration
@pytest.mark.parametrize("spec", SPECS, ids=[spec.name for spec in SPECS])
def test_every_module_a_stage_loads_is_among_its_dvc_deps(spec, loaded_by_each_flow):
    """At run time, not from the static reading: import the stage's flow in a fresh interpreter and list every
    project module it loaded."""
    package = REPO / "dcm"
    loaded = {path for path in loaded_by_each_flow[spec.flow] if path.startswith(f"{package}/")}
    listed = {str(REPO / dep) for dep in code_dependencies(spec)}
    assert str(package / spec.flow.replace(".", "/")[len("dcm/"):]) + ".py" in loaded  # the child saw the flow
    assert loaded - listed == set()


def test_no_training_checkpoint_is_a_dvc_output():
    """Checkpoints are for resuming; DVC hashing, caching and pushing them costs hundreds of GB at scale."""
    outputs = [out.path for spec in SPECS for out in (*spec.outs, *spec.metrics, *spec.plots)]
    assert outputs and not [path for path in outputs if "checkpoint_dir" in path]
