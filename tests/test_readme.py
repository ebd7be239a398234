"""The README's commands, run as a newcomer runs them: the quickstart's shell blocks, read from
README.md itself (so the two cannot drift), in one bash session in an empty folder, against the
installed `gateway` command, a real upstream and real sockets."""

import re
import socket
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"
SETUP = [
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && gateway demo",
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && pytest",
]
# the ports the quickstart names; the test runs it on free ones, as other tests may hold these
UPSTREAM_PORT, GATEWAY_PORT = "9000", "8080"


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of `text` marked `language` ("" for unmarked ones), in order."""
    found: list[str] = []
    current: list[str] | None = None
    marked = ""
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, marked = [], line[3:].strip()
            else:
                if marked == language:
                    found.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return found


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def test_the_readme_opens_with_the_demo_and_the_test_command() -> None:
    text = README.read_text()
    assert [block.strip() for block in blocks(text, "sh")[:2]] == SETUP
    assert text.index(SETUP[1]) < text.index("\n## Protect your own API\n")


def test_the_quickstart_reaches_a_200_and_a_403_of_your_own_api(tmp_path: Path) -> None:
    quickstart = section(README.read_text(), "Protect your own API")
    commands = blocks(quickstart, "sh")
    script = "\n".join(commands)
    # in the order a newcomer meets them: upstream, keys, gateway.yaml, one table, mint, serve, curl
    steps = ["python3 -m http.server", "gateway keys init", "cat > gateway.yaml", "cat > routes/", "gateway token mint", "gateway serve", "curl"]
    assert [script.index(step) for step in steps] == sorted(script.index(step) for step in steps)
    assert UPSTREAM_PORT in script and GATEWAY_PORT in script

    upstream, gateway = free_port(), free_port()
    lines = ["set -e", "trap 'kill $(jobs -p) 2>/dev/null' EXIT"]
    for block in commands:
        lines.append(block.replace(UPSTREAM_PORT, upstream).replace(GATEWAY_PORT, gateway))
        # a newcomer waits for a server started in the background before calling it
        for port in (upstream, gateway):
            if f"{port} &" in lines[-1] or (f"--port {port}" in lines[-1] and lines[-1].rstrip().endswith("&")):
                lines.append(f"for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.05; done")
    bin_folder = str(Path(sys.executable).parent)
    env = {"PATH": f"{bin_folder}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    result = subprocess.run(["bash", "-c", "\n".join(lines)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout
    assert result.returncode == 0, output + result.stderr

    answers = re.split(r"(?=^HTTP/1\.1 )", output, flags=re.MULTILINE)[1:]
    assert len(answers) == 2, output
    allowed, refused = answers
    assert allowed.startswith("HTTP/1.1 200") and '"buy milk"' in allowed
    assert refused.startswith("HTTP/1.1 403")
    # the 403 the README shows is the one the gateway answers: its challenge and its body
    shown = blocks(quickstart, "")[-1].splitlines()
    assert shown[0] == "HTTP/1.1 403 Forbidden" and any(line.startswith("www-authenticate: Bearer") for line in shown)
    assert [line for line in shown if line not in refused.splitlines()] == []
    # the upstream saw the allowed request only
    assert result.stderr.count('"GET /notes.json HTTP/1.1" 200') == 1 and "POST /notes.json" not in result.stderr


ROOT = README.parent
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


def test_every_link_of_the_documentation_leads_to_a_file_of_the_repository() -> None:
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path = (document.parent / target.partition("#")[0]).resolve()
            assert path.is_file() and path.is_relative_to(ROOT), f"{document.relative_to(ROOT)}: {target}"


def test_nothing_in_the_repository_refers_to_a_file_outside_it() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = re.compile(r"DESIGN\.md|\.\./shared|\bseeds/\d")
    found = [name for name in files if (ROOT / name).is_file() and name.endswith((".py", ".md", ".yaml", ".toml", ".graphql", "Dockerfile"))
             and outside.search((ROOT / name).read_text(encoding="utf-8", errors="replace"))]
    assert found == [name for name in found if name == "tests/test_readme.py"]
