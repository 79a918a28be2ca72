"""mkdocs hooks: the README is the site's home page, and figures under benchmarks/results/ (outside
docs/, where the benchmarks write them) are published with the site. Pages link them as
``../benchmarks/results/NAME.png`` so that they also show on GitHub."""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
FIGURES = "benchmarks/results"


def on_files(files, config):
    readme = (ROOT / "README.md").read_text()
    files.append(File.generated(config, "index.md", content=re.sub(r"\]\(docs/", "](", readme)))
    for figure in sorted((ROOT / FIGURES).glob("*.png")):
        files.append(File(f"{FIGURES}/{figure.name}", str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    return markdown.replace(f"](../{FIGURES}/", f"]({FIGURES}/")
