"""The package's structure: public imports, no import circles, no private names across
modules, private Keras imports in one place."""

import ast
import importlib
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "tfnegseq"


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: pathlib.Path, modules: dict[str, pathlib.Path]):
    """(imported tfnegseq module, imported name or None, line) for every import statement,
    at module level or inside functions; `if TYPE_CHECKING:` blocks are skipped."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tfnegseq"):
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tfnegseq"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in modules:
                    yield sub, None, node.lineno
                else:
                    yield node.module, alias.name, node.lineno


def test_no_import_circles():
    modules = _modules()
    graph = {m: sorted({t for t, _, _ in _imports(p, modules) if t in modules and t != m})
             for m, p in modules.items()}
    cycles, state, stack = [], {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_names_imported_across_modules():
    modules = _modules()
    found = [f"{p.relative_to(PACKAGE.parent)}:{line} imports {t}.{name}"
             for m, p in modules.items() for t, name, line in _imports(p, modules)
             if name and name.startswith("_") and t != m]
    assert found == []


def test_keras_private_imports_live_in_one_module():
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n.startswith("keras.src") for n in names):
                found.append(path.name)
    assert sorted(set(found)) == ["keras_internals.py"]


@pytest.mark.parametrize("module, names", [
    ("tfnegseq.layers", ["MixedPolaritySequence", "PolarityBiasEmbedding",
                         "TargetAwarePolarityFusion", "DinAttention", "TransformerEncoder",
                         "SubInterestAssignment", "SubInterestSelfAttention",
                         "SubInterestProjection", "AdaptiveFusion", "TemporalConvolution",
                         "PersonalizedExtractorGeneration", "AuxiliaryTargetAttention",
                         "MultiScopeInterestAggregator", "MultiHeadTargetAttention",
                         "SoftSearchAttention", "HashRetrievalAttention",
                         "ConsistentTopKAttention", "HashSamplingAttention",
                         "LifelongAttentionPyramid"]),
    ("tfnegseq.models", ["CtrModel", "SequentialRecommender"]),
    ("tfnegseq.losses", ["bpr_loss", "distance_correlation", "sine_loss"]),
    ("tfnegseq.kinds", ["ModelKind", "register_kind", "get_kind"]),
])
def test_public_api_imports_and_is_registered(module, names):
    import keras

    mod = importlib.import_module(module)
    for name in names:
        obj = getattr(mod, name)
        if isinstance(obj, type) and issubclass(obj, keras.layers.Layer):
            assert keras.saving.get_registered_object(f"tfnegseq>{name}") is obj
