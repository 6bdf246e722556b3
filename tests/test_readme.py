"""The README says what the code does: its flags table is the code's, its Python example runs, its links resolve."""
import os
import re
import subprocess
import sys

from clip_benchmark_diffusion.console import flags_table
from clip_benchmark_diffusion.integration.flags import diffusion_argument_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        return handle.read()


def test_the_flags_table_is_generated_from_the_flags_declarations():
    section = re.search(r"<!-- flags:start -->\n(.*?)\n<!-- flags:end -->", readme(), re.S)
    assert section, "README.md has no flags section"
    assert section.group(1) == flags_table(diffusion_argument_parser()), \
        "README flags table is stale: regenerate it with console.flags_table(diffusion_argument_parser())"
    assert "`--diffusion_delta DELTA` | `0.01`" in section.group(1)  # a row as a reader sees it


def test_the_readme_python_example_runs_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", readme(), re.S)
    assert blocks, "README.md has no Python example"
    for block in blocks:
        result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True,
                                timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.count("predicted ") == 2 and "network calls" in result.stdout


def test_the_readme_is_a_guide_and_its_links_resolve():
    text = readme()
    assert len(text.splitlines()) <= 320
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if target.startswith("http"):
            continue
        assert os.path.exists(os.path.join(ROOT, target)), f"README links to missing {target}"
