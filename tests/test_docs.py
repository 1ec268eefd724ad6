"""Docs that cannot drift: every session and Python example in README.md and docs/*.md runs here.

The conventions the docs follow (one pytest test per block, id `FILE:LINE`, LINE the line of
the opening fence, e.g. `README.md:42` or `docs/cli.md:29`):

- A session is a fenced block with info string `console`. Each line starting with `$ ` is a
  command; the lines after it, up to the next `$ ` line, are what a terminal shows (stdout and
  stderr together, in order). Trailing spaces and the blank lines that end an output are
  ignored. A command is `bufconv ...` and nothing else (no pipes, redirections or `&&`),
  optionally followed by exactly `; echo "exit $?"`, which prints `exit N` after the output. A
  command that exits non-zero without that suffix fails the test: a failing command shows its
  exit status. A command ending in `\\` continues on the next line. It runs as `bash -c COMMAND`
  with the venv's bin first on PATH, HF_HUB_OFFLINE=1, and $HF_LEROBOT_HOME an empty folder.
- A Python example is a fenced block with info string `python`. All of one file's python
  blocks run in one namespace (imports and variables carry over), in document order,
  interleaved with that file's sessions; nothing they print is compared: a block passes when
  it raises nothing (warnings are errors, as in the rest of the suite). A block whose first
  line is `# doc: not run (REASON)` is not run (the test is reported skipped with REASON);
  REASON is one of NOT_RUN_REASONS below, or `an excerpt of SCRIPT, which tests/TEST.py runs
  whole` where TEST.py names SCRIPT.
- Each file has one working folder, shared by all its blocks (a command may write files that
  later blocks read), prepared once before its first block: `bufconv demo --dir demo` has run
  there (so `demo/pick_cube`, the dataset, and `demo/offline_buffer.pt`, a range-255 cache,
  exist) and every file of docs/examples/ has been copied into it.
- Before comparing, expected and actual output are masked alike by MASKS below (times, rates,
  dates, digests, /tmp paths); the working folder's absolute path is written `.` (so a doc
  shows `built ./offline_buffer.pt`, `source: ./demo/pick_cube`). Sizes are not masked: they
  are the same on every machine (the working folder's path, which a cache records, has the
  same length on every run: /tmp/bufconv-docs-XXXXXXXX).
- Blocks with other info strings (`text`, `bash`, `json`, ...) are not run, but a `$ bufconv`
  line in one of them fails test_every_session_is_a_console_block: it would be a session that
  nobody checks.

`mkdocs build --strict` over mkdocs.yml is a test too (test_mkdocs_build_strict).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sysconfig.get_path("scripts"))  # the venv's bin, where `bufconv` is installed
COMMAND_TIMEOUT_S = 300

# Machine-dependent figures, masked in expected and actual output alike (in this order; the
# working folder's absolute path has already become `.`):
MASKS: list[tuple[re.Pattern[str], str]] = [
    # throughput: "1,684 frames/s", "12.3 MB/s", "250 it/s" (before durations: "/s" is not a time)
    (re.compile(r"\d[\d,]*(?:\.\d+)?\s?[A-Za-zµ]+/s\b"), "<rate>"),
    # durations: "0.05 s", "1.2s", "12 ms", "3 seconds", "2 min"
    (re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:ms|µs|us|s|sec|seconds?|min)\b"), "<time>"),
    # ISO dates and datetimes: "2026-11-28", "2026-11-28T17:39:46+00:00", "2026-11-28 17:39:46.123Z"
    (
        re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"),
        "<date>",
    ),
    # fingerprints: "sha256:db24d5..."; two demo runs in two folders give two different ones
    (re.compile(r"\bsha256:[0-9a-f]+\b"), "sha256:<hex>"),
    # any other digest of 32 or more hex digits (xxh3-128 checksums, ids)
    (re.compile(r"\b[0-9a-f]{32,}\b"), "<hex>"),
    # paths under /tmp other than the working folder (temporary files, pytest's folders)
    (re.compile(r"(?<![\w./-])(?:/private)?/(?:var/)?tmp(?:/[^\s'\"`:,;)\]]*)?"), "<tmp>"),
]

# Why a python block may be marked `# doc: not run (REASON)`: what the test machine cannot
# provide. Nothing else: an example that needs a file or a dataset gets it from the working
# folder (the demo, docs/examples/) instead.
NOT_RUN_REASONS = {
    "needs a robot",  # real hardware: motors, cameras, a teleoperator
    "needs a running LeRobot learner",  # the actor/learner gRPC loop, a separate process
    "needs a GPU",  # device="cuda"; CI has none
    "needs the Hugging Face hub",  # network: a repo id fetched from the hub
}
# ... or: the block is an excerpt of a script that a test runs whole, e.g. `an excerpt of
# scripts/learner_example.py, which tests/test_examples.py runs whole`; both files must exist
# and the test must name the script.
EXCERPT = re.compile(r"an excerpt of (?P<script>[\w./-]+), which (?P<test>tests/[\w./-]+\.py) runs whole")
NOT_RUN = re.compile(r"#\s*doc:\s*not run\s*\((?P<reason>[^)]*)\)\s*$")

ECHO_EXIT = '; echo "exit $?"'
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")


# --- parsing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A fenced code block: its file, the line of its opening fence (1-based), its language."""

    path: Path
    line: int
    lang: str
    lines: tuple[str, ...]

    @property
    def name(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path.as_posix()}:{self.line}"

    @property
    def not_run_reason(self) -> str | None:
        """REASON of a first line `# doc: not run (REASON)`, None for a block that runs."""
        if self.lang != "python" or not self.lines:
            return None
        first = self.lines[0].strip()
        if not first.startswith("#") or "not run" not in first:
            return None
        match = NOT_RUN.fullmatch(first)
        if match is None:
            raise ValueError(f"{self.name}: write the first line as `# doc: not run (REASON)`, not {first!r}")
        return match["reason"].strip()


def fenced_blocks(text: str, path: Path) -> list[Block]:
    """Every fenced block of a markdown text (``` or ~~~, possibly indented), in order."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"]
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        start = i
        body = []
        i += 1
        while i < len(lines) and not close.match(lines[i]):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        blocks.append(Block(path, start + 1, info.lower(), tuple(body)))
        i += 1
    return blocks


def runnable_blocks(path: Path) -> list[Block]:
    """The sessions and Python examples of one file, in document order."""
    return [b for b in fenced_blocks(path.read_text(), path) if b.lang in ("console", "python")]


@dataclass(frozen=True)
class Command:
    command: str
    expected: tuple[str, ...]


def parse_session(block: Block) -> list[Command]:
    """`$ ` lines and the output lines after each; raises ValueError for a malformed session."""
    commands: list[Command] = []
    current: list[str] | None = None
    expected: list[str] = []
    lines = list(block.lines)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            if current is not None:
                commands.append(Command(" ".join(current), _trim(expected)))
            current, expected = [line[2:].rstrip()], []
            while current[-1].endswith("\\") and i + 1 < len(lines):  # continuation lines
                current[-1] = current[-1][:-1].rstrip()
                i += 1
                current.append(lines[i].strip())
        elif current is None:
            if line.strip():
                raise ValueError(f"{block.name}: a console block starts with a `$ ` command, not {line!r}")
        else:
            expected.append(line)
        i += 1
    if current is None:
        raise ValueError(f"{block.name}: a console block without a `$ ` command")
    commands.append(Command(" ".join(current), _trim(expected)))
    for c in commands:
        check_command(c.command, block.name)
    return commands


def check_command(command: str, where: str) -> None:
    """Only `bufconv ...`, optionally followed by `; echo "exit $?"`."""
    body = command.removesuffix(ECHO_EXIT)
    lexer = shlex.shlex(body, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as e:
        raise ValueError(f"{where}: cannot parse `{command}`: {e}") from None
    if not tokens or tokens[0] != "bufconv":
        raise ValueError(f"{where}: a session runs `bufconv ...` commands only, not `{command}`")
    operators = [t for t in tokens if t and set(t) <= set("();<>|&")]
    if operators or "`" in body or "$(" in body:
        raise ValueError(
            f"{where}: `{command}`: no shell operators in a session, only an optional `{ECHO_EXIT.strip()}` at the end"
        )


def _trim(lines: list[str]) -> tuple[str, ...]:
    """Trailing spaces and the trailing blank lines go; a terminal does not show them."""
    out = [line.rstrip() for line in lines]
    while out and not out[-1]:
        out.pop()
    return tuple(out)


# --- running --------------------------------------------------------------------------------


def unpath(text: str, workdir: Path | None) -> str:
    """The working folder's absolute path (as given and resolved) becomes `.`."""
    if workdir is not None:
        for form in sorted({str(workdir.resolve()), str(workdir)}, key=len, reverse=True):
            text = text.replace(form, ".")
    return text


def mask(text: str, workdir: Path | None) -> str:
    """The working folder becomes `.`, then MASKS replace the machine-dependent figures."""
    text = unpath(text, workdir)
    for pattern, replacement in MASKS:
        text = pattern.sub(replacement, text)
    return text


def command_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",  # stdout and stderr interleave as on a terminal
        HF_HUB_OFFLINE="1",  # a session never reaches the network
        HF_LEROBOT_HOME=str(workdir / "lerobot_home"),  # empty: no dataset of the machine leaks in
    )
    env.pop("PYTHONWARNINGS", None)
    return env


def run_command(command: str, workdir: Path) -> tuple[str, int]:
    """Run one command as a terminal would: its stdout and stderr together, and its exit status."""
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=workdir,
        env=command_env(workdir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    return done.stdout.decode("utf-8", "replace"), done.returncode


def session_mismatch(block: Block, workdir: Path) -> str | None:
    """Run a session's commands in `workdir`; None when the masked outputs match, else why not (a diff)."""
    expected: list[str] = []
    actual: list[str] = []
    pasteable: list[str] = []  # what the doc should say: the actual output, the working folder as `.`
    problems: list[str] = []
    for c in parse_session(block):
        output, rc = run_command(c.command, workdir)
        got = _trim(output.splitlines())
        if rc != 0:
            problems.append(f"`{c.command}` exited {rc}; a failing command ends with `{ECHO_EXIT.strip()}`")
        for lines, out in ((c.expected, expected), (got, actual)):
            out.extend([f"$ {c.command}", *mask("\n".join(lines), workdir).splitlines(), ""])
        pasteable.extend([f"$ {c.command}", *unpath("\n".join(got), workdir).splitlines(), ""])
    if expected == actual and not problems:
        return None
    diff = "\n".join(
        difflib.unified_diff(
            expected, actual, f"{block.name} (expected, masked)", "actual (masked)", lineterm=""
        )
    )
    return "\n".join(
        [
            f"{block.name}: the session does not match",
            *problems,
            diff or "(outputs match)",
            "",
            "actual output (the working folder as `.`), to paste into the doc:",
            *pasteable,
        ]
    )


@contextlib.contextmanager
def in_workdir(workdir: Path) -> Iterator[None]:
    """The python blocks' surroundings: the working folder and the sessions' environment."""
    saved_cwd = os.getcwd()
    keys = ("HF_HUB_OFFLINE", "HF_LEROBOT_HOME")
    saved_env = {k: os.environ.get(k) for k in keys}
    env = command_env(workdir)
    os.chdir(workdir)
    os.environ.update({k: env[k] for k in keys})
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def new_workdir() -> Path:
    """An empty folder of a fixed-length name (/tmp/bufconv-docs-XXXXXXXX): paths inside, and so
    the byte sizes of caches that record them, are the same on every run."""
    base = "/tmp" if os.path.isdir("/tmp") and os.access("/tmp", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="bufconv-docs-", dir=base))


def prepare_workdir(workdir: Path) -> None:
    """`bufconv demo --dir demo` in the folder, then docs/examples/* copied into it.

    The demo runs in this process (what the command runs, with the same argument, from the same
    folder: the same files), which spares the ~2 s a fresh interpreter takes to import torch."""
    from bufconv.demo import run_demo

    with in_workdir(workdir):
        run_demo("demo", echo=lambda _line: None)
    (workdir / "lerobot_home").mkdir()  # $HF_LEROBOT_HOME: empty
    if EXAMPLES.is_dir():
        for item in sorted(EXAMPLES.iterdir()):
            if item.is_dir():
                shutil.copytree(item, workdir / item.name)
            else:
                shutil.copy2(item, workdir / item.name)


@dataclass
class DocRun:
    """One file's blocks, run in order in one working folder and one Python namespace."""

    path: Path
    blocks: list[Block]
    workdir: Path | None = None
    namespace: dict[str, object] = field(default_factory=lambda: {"__name__": "__doc_example__"})
    outcomes: dict[int, str | None] = field(default_factory=dict)  # block index -> failure text, None: passed
    next: int = 0

    def outcome(self, index: int) -> str | None:
        """Run the blocks up to `index` that have not run (earlier ones too: a block may need
        them), and return block `index`'s failure, None when it passed or is not run."""
        if self.workdir is None:
            self.workdir = new_workdir()
            prepare_workdir(self.workdir)
        while self.next <= index:
            self.outcomes[self.next] = self._run(self.blocks[self.next])
            self.next += 1
        failure = self.outcomes[index]
        if failure is None:
            return None
        earlier = [self.blocks[i].name for i in range(index) if self.outcomes.get(i) is not None]
        if earlier:
            failure += f"\n\n(earlier blocks of this file failed and may be the cause: {', '.join(earlier)})"
        return failure

    def _run(self, block: Block) -> str | None:
        assert self.workdir is not None
        try:
            if block.lang == "console":
                return session_mismatch(block, self.workdir)
            if block.not_run_reason is not None:
                return None
            # Padded so that a traceback names the markdown file and its line.
            code = compile("\n" * block.line + "\n".join(block.lines) + "\n", str(block.path), "exec")
            with in_workdir(self.workdir):
                exec(code, self.namespace)
        except Exception as e:
            tb = e.__traceback__.tb_next if e.__traceback__ is not None else None  # not this frame
            return f"{block.name} raised:\n{''.join(traceback.format_exception(type(e), e, tb))}"
        return None


BLOCKS = [(path, i, block) for path in DOC_FILES for i, block in enumerate(runnable_blocks(path))]


@pytest.fixture(autouse=True)
def _workers_even_for_tiny_datasets() -> None:
    """Overrides conftest's fixture of that name: the examples run with bufconv's real worker
    defaults, as a reader's do."""


@pytest.fixture(scope="module")
def doc_runs() -> Iterator[dict[Path, DocRun]]:
    runs: dict[Path, DocRun] = {}
    yield runs
    for run in runs.values():
        run.namespace.clear()  # the examples' buffers and tensors: not held into later test modules
        if run.workdir is not None:
            shutil.rmtree(run.workdir, ignore_errors=True)


@pytest.mark.parametrize(("path", "index", "block"), BLOCKS, ids=[b.name for _, _, b in BLOCKS])
def test_doc_block(doc_runs: dict[Path, DocRun], path: Path, index: int, block: Block) -> None:
    """The session's output matches the doc (masked), or the Python example runs."""
    reason = block.not_run_reason
    if reason is not None:
        problem = not_run_problem(reason)
        assert problem is None, f"{block.name}: {problem}"
        pytest.skip(f"doc: not run ({reason})")
    if path not in doc_runs:
        doc_runs[path] = DocRun(path, runnable_blocks(path))
    failure = doc_runs[path].outcome(index)
    if failure is not None:
        pytest.fail(failure, pytrace=False)


def test_not_run_reasons_are_allowed() -> None:
    """Every `# doc: not run (REASON)` gives one of the allowed reasons: no silent skips."""
    reasons = {b.name: b.not_run_reason for _, _, b in BLOCKS if b.not_run_reason is not None}
    wrong = {name: r for name, r in reasons.items() if not_run_problem(r) is not None}
    assert not wrong, "\n".join(f"{name}: {not_run_problem(r)}" for name, r in wrong.items())


def not_run_problem(reason: str) -> str | None:
    """Why `# doc: not run (REASON)` is not allowed, None when it is."""
    if reason in NOT_RUN_REASONS:
        return None
    excerpt = EXCERPT.fullmatch(reason)
    if excerpt is None:
        return f"not run ({reason}): the reason is none of {sorted(NOT_RUN_REASONS)} nor `{EXCERPT.pattern}`"
    script, test = ROOT / excerpt["script"], ROOT / excerpt["test"]
    if not script.is_file() or not test.is_file():
        return f"not run ({reason}): {excerpt['script']} or {excerpt['test']} does not exist"
    if script.name not in test.read_text():
        return f"not run ({reason}): {excerpt['test']} does not name {script.name}"
    return None


def test_every_session_is_a_console_block() -> None:
    """A `$ bufconv` line outside a console block is a session nobody runs: make it `console`."""
    unchecked = [
        f"{b.name} ({b.lang or 'no info string'})"
        for path in DOC_FILES
        for b in fenced_blocks(path.read_text(), path)
        if b.lang != "console" and any(line.startswith("$ bufconv") for line in b.lines)
    ]
    assert not unchecked, f"`$ bufconv` sessions in blocks that are not ```console: {unchecked}"


# --- the machinery itself -------------------------------------------------------------------


def test_masks_hide_machine_dependent_figures_only() -> None:
    """Two runs' lines that differ only in times, rates, dates, digests and paths mask the same."""
    workdir = Path("/tmp/bufconv-docs-abcdefgh")
    one = (
        "built /tmp/bufconv-docs-abcdefgh/offline_buffer.pt: 120 frames, 4 episodes in 0.07 s (1,684 frames/s); "
        "file 5.9 MB (uint8 pixels 5.9 MB)\ncreated 2026-11-28T17:39:46+00:00, took 12 ms, read 310.5 MB/s\n"
        "fingerprint: sha256:db24d5fc7aa0f88acc1d249210ded01e760de0ea023eeebeb915d8ea5c206c8d "
        "checksum 0123456789abcdef0123456789abcdef, tmp /tmp/pytest-of-me/x.pt"
    )
    two = (
        "built ./offline_buffer.pt: 120 frames, 4 episodes in 1.3s (92 frames/s); "
        "file 5.9 MB (uint8 pixels 5.9 MB)\ncreated 2027-01-02T03:04:05+01:00, took 950 ms, read 12 MB/s\n"
        "fingerprint: sha256:1aa829019e2abdea9bb142a2c4f39b8e2a6999a6018375edf7d149aeebb78ac4 "
        "checksum ffffffffffffffffffffffffffffffff, tmp /tmp/other/y.pt"
    )
    assert mask(one, workdir) == mask(two, None)
    # What is deterministic stays: counts, sizes, ranges, shapes.
    kept = "120 frames, 4 episodes, 5.9 MB, [0,255], (32, 3, 96, 128), 10 fps, exit 1, --tolerance-s S"
    assert mask(kept, workdir) == kept


def test_parse_session_commands_outputs_and_rules() -> None:
    text = '```console\n$ bufconv info a.pt\nline 1\n\n$ bufconv verify a.pt \\\n    --quick; echo "exit $?"\nexit 0\n```\n'
    (block,) = fenced_blocks(text, Path("scratch.md"))
    assert parse_session(block) == [
        Command("bufconv info a.pt", ("line 1",)),
        Command('bufconv verify a.pt --quick; echo "exit $?"', ("exit 0",)),
    ]
    for bad, why in (
        ("$ ls demo", "`bufconv ...` commands only"),
        ("$ bufconv info a.pt | head", "no shell operators"),
        ("$ bufconv info a.pt > x", "no shell operators"),
        ("$ bufconv info a.pt && bufconv info b.pt", "no shell operators"),
        ("no command first", "starts with a `\\$ ` command"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_session(Block(Path("scratch.md"), 1, "console", (bad,)))


def test_a_session_that_no_longer_matches_fails(tmp_path: Path) -> None:
    """The comparison is not vacuous: the real output matches, one word changed does not, and a
    failing command without `; echo "exit $?"` fails even when its output matches."""
    command = 'bufconv info missing.pt; echo "exit $?"'
    output, rc = run_command(command, tmp_path)
    lines = output.rstrip().splitlines()
    assert rc == 0 and len(lines) >= 2 and lines[0].split(), output
    status = re.fullmatch(r"exit (\d+)", lines[-1])
    assert status is not None and status[1] != "0", output

    def scratch(expected: list[str], cmd: str = command) -> Block:
        text = "# Scratch\n\n```console\n$ " + cmd + "\n" + "\n".join(expected) + "\n```\n"
        (block,) = runnable_blocks_of(text)
        return block

    assert session_mismatch(scratch(lines), tmp_path) is None
    words = lines[0].split()
    words[-1] = "changed"
    changed = [" ".join(words), *lines[1:]]
    failure = session_mismatch(scratch(changed), tmp_path)
    assert failure is not None and "scratch.md:3" in failure
    assert "-" + " ".join(words) in failure and "+" + mask(lines[0], tmp_path) in failure

    failure = session_mismatch(scratch(lines[:-1], command.removesuffix(ECHO_EXIT)), tmp_path)
    assert failure is not None and f"exited {status[1]}" in failure


def runnable_blocks_of(text: str) -> list[Block]:
    return [b for b in fenced_blocks(text, Path("scratch.md")) if b.lang in ("console", "python")]


# --- the site -------------------------------------------------------------------------------


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """mkdocs.yml renders docs/ with mkdocs-material and no warning (a missing page, a broken
    link or anchor, a page left out of the nav)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}{done.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
