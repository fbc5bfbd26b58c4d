"""The README's two commands stay true: CI runs the same test command, the main job exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_ci_runs_the_readme_test_command():
    main_job, tests = _commands()
    assert "pytest" in tests and "launch/train.py" in main_job
    assert tests.strip() in (ROOT / ".ci" / "run").read_text()


def test_main_job_script_exists():
    assert (ROOT / "launch" / "train.py").is_file()
