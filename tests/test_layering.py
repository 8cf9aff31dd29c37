"""The package's layers: commands on top, the training loop below them, the library underneath,
and no import pointing back up (a helper lives with its concern, not with its first caller)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gpt2_jax"
COMMANDS = {"train", "evaluate", "sample", "serve", "bench.__main__", "plot", "hf", "data.prepare",
            "data.bench", "evaluation.heldout_bundle", "lm_eval"}
LOOP = {"training.loop", "bench.train"}  # the loop, and what measures it


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
            for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}


def imported(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports (by `import` or `from ... import`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gpt2_jax"):
            base = node.module.removeprefix("gpt2_jax").removeprefix(".")
            for alias in node.names:
                name = f"{base}.{alias.name}" if base else alias.name
                found.add(name if name in known else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("gpt2_jax.") for a in node.names
                      if a.name.startswith("gpt2_jax.")}
    return found & known


def test_commands_import_only_the_loop_and_the_library():
    known = set(modules())
    assert COMMANDS | LOOP <= known
    for name, path in modules().items():
        deps = imported(path, known)
        if name in COMMANDS:
            assert not deps & COMMANDS, f"command {name} imports command(s) {deps & COMMANDS}"
        elif name in LOOP:
            assert not deps & COMMANDS, f"the loop imports command(s) {deps & COMMANDS}"
        else:
            assert not deps & (COMMANDS | LOOP), \
                f"library module {name} imports {deps & (COMMANDS | LOOP)}"
