"""The package's rooms, drawn from its imports: no arrow runs back up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prediction_service"

# module prefix -> prefixes it must never import (directly, at any point in the file). The first matching
# prefix is a module's rule, so a room's exceptions come before the room. From the top: the transports (api/,
# grpc/) over the protocols (v1/, oip/) over serving/ over the adapters over execution/, with the registry,
# preprocessing/, security/ and the core types (types.py) below them all.
TRANSPORT = ("fastapi", "starlette", "grpc", "google.protobuf", "prediction_service.api", "prediction_service.grpc")
FORBIDDEN = {
    # the core vocabulary: every layer imports it, it imports no layer
    "prediction_service.types": TRANSPORT + ("prediction_service.serving", "prediction_service.execution",
                                             "prediction_service.adapters", "prediction_service.security",
                                             "prediction_service.preprocessing", "prediction_service.registry",
                                             "prediction_service.oip", "prediction_service.v1"),
    # post-processing never calls back into the data plane that runs it
    "prediction_service.serving.processing": TRANSPORT + ("prediction_service.serving.dataplane",
                                                          "prediction_service.serving.pipeline"),
    # the one request path: protocol-free, below every door
    "prediction_service.serving": TRANSPORT + ("tritonclient", "prediction_service.oip", "prediction_service.v1"),
    # batcher, runtimes and warm-up: below the adapters, which they serve
    "prediction_service.execution": TRANSPORT + ("prediction_service.serving", "prediction_service.adapters",
                                                 "prediction_service.registry", "prediction_service.ensemble"),
    # the shipped pre-processing steps: training (modelzoo) and serving (processing) both call them
    "prediction_service.preprocessing": TRANSPORT + ("torch", "prediction_service.serving",
                                                     "prediction_service.execution", "prediction_service.modelzoo",
                                                     "prediction_service.registry", "prediction_service.adapters",
                                                     "prediction_service.packaging"),
    "prediction_service.security": TRANSPORT + ("prediction_service.serving", "prediction_service.adapters",
                                                "prediction_service.execution", "prediction_service.registry"),
    "prediction_service.monitoring": ("prediction_service.serving", "prediction_service.api", "fastapi"),
    "prediction_service.modelzoo": ("prediction_service.packaging", "prediction_service.commands",
                                    "prediction_service.adapters", "prediction_service.serving"),
    "prediction_service.adapters": ("prediction_service.commands", "prediction_service.api", "fastapi",
                                    "prediction_service.serving", "prediction_service.registry.store",
                                    "prediction_service.registry.writer"),
    "prediction_service.registry": ("prediction_service.adapters", "prediction_service.api",
                                    "prediction_service.commands", "prediction_service.serving", "fastapi"),
    "prediction_service.grpc": ("prediction_service.api", "fastapi"),
    "prediction_service.api": ("prediction_service.oip.grpc_codec", "prediction_service.grpc.servicer"),
    "prediction_service.experiments": ("prediction_service.api", "fastapi", "prediction_service.serving"),
    # the protocols: codecs and documents, below the transports and the pipeline that serve them
    "prediction_service.oip": ("prediction_service.grpc", "prediction_service.serving", "prediction_service.v1"),
    "prediction_service.v1": TRANSPORT + ("prediction_service.oip", "prediction_service.serving"),
    # an ensemble reaches its members through its gateway, never through the data plane or the pipeline
    "prediction_service.ensemble": ("prediction_service.serving", "prediction_service.api", "prediction_service.grpc",
                                    "fastapi"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _rule_of(module: str) -> tuple[str, ...]:
    return next((banned for prefix, banned in FORBIDDEN.items()
                 if module == prefix or module.startswith(prefix + ".")), ())


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_back_up(path: Path):
    module = _module_name(path)
    banned = _rule_of(module)
    wrong = sorted(name for name in _imports(path)
                   for prefix in banned if name == prefix or name.startswith(prefix + "."))
    assert not wrong, f"{module} imports {wrong}"


def test_the_rules_see_relative_imports():
    """A guard on the guard: the relative imports of a known module resolve to absolute names."""
    imports = _imports(PACKAGE / "serving" / "dataplane.py")
    assert "prediction_service.serving.model_manager" in imports and "prediction_service.types" in imports
