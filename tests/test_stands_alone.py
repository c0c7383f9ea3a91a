"""The product stands alone: no code, config or doc points a reader at design notes or files that
live outside the repository (they are not shipped; what a reader needs is in docs/ and README)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUTSIDE = re.compile(r"DESIGN\.md|STYLE\.md|\.\./shared/(?!data)|shared/reference")
SHIPPED = ("ollm_bench", "optim", "conf", "docs", "hydra_plugins", "notebooks")


def test_no_reference_to_files_outside_the_repository():
    files = [REPO / "README.md", REPO / "install.sh", REPO / "pyproject.toml"]
    for top in SHIPPED:
        files += [p for p in (REPO / top).rglob("*") if p.suffix in {".py", ".md", ".yaml", ".ipynb", ".sh"}]
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in files
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)
