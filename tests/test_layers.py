"""The package's layers: a module imports only from its own layer and the layers below it (`docs/architecture.md`)."""

from __future__ import annotations

import ast

from conftest import REPO

PACKAGE = REPO / "rlrf_hub"
LAYERS = (
    ("__init__", "errors", "ids", "aspects", "schemas", "httpd", "models", "sharding"),
    (
        "backends",
        "hub",
        "feedback",
        "evaluation",
        "metrics",
        "reward",
        "mixtures",
        "training",
        "cards",
        "lineage",
        "recipe_scripts",
    ),
    ("serving", "publishing"),
    ("stages",),
    ("config", "preflight", "run_lock", "loop", "summary", "report", "cli"),
)
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}


def _top(module: str) -> str:
    """`rlrf_hub.stages.base` -> `stages`; the package itself, or a name defined in it, -> `__init__`."""
    parts = module.split(".")
    if len(parts) > 1 and ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()):
        return parts[1]
    return "__init__"


def _imports(path) -> set[str]:
    """The `rlrf_hub` modules a file imports, at the top or inside functions, as absolute names."""
    module = "rlrf_hub." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                names = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
            else:
                names = [node.module or ""]
            found |= {name for name in names if name.startswith("rlrf_hub")}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("rlrf_hub")}
    return found


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _top("rlrf_hub." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for target in _imports(path):
            if LAYER[_top(target)] > LAYER[own]:
                upward.append(f"{path.relative_to(REPO)} imports {target}")
    assert not upward, "\n".join(upward)
