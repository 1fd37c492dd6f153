"""The README's commands work as pasted after its two set-up commands on a fresh clone: every later `multitalk`,
`pip`, `python` or `torchrun` is the set-up's own (`.venv/bin/...`, no name that only an activated venv finds), each
`multitalk` command's flags parse with the real parser, the extras `pip install` names exist, the scripts `bash`
runs exist, and the `generate` commands that need no weights run."""

from __future__ import annotations

import configparser
import contextlib
import io
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV = ".venv/bin/"
# Programs that exist only inside the set-up's virtualenv (a fresh machine has python3, not these, on its PATH).
VENV_PROGRAMS = {"multitalk", "python", "python3", "pip", "pip3", "torchrun"}
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
SEPARATORS = {";", "&&", "||", "|", "&"}
SUBCOMMANDS = {"generate", "download", "info", "convert", "serve", "worker", "diarize", "boxes"}


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]  # the program and its arguments, environment assignments left out
    line: int  # where the README has it
    block: int | None  # which shell block (0: the set-up making the venv) holds it; None: inline in the prose

    @property
    def program(self) -> str:
        return self.words[0]

    def __str__(self) -> str:
        return f"README.md:{self.line}: {shlex.join(self.words)}"


def _logical_lines(script: str) -> list[tuple[int, str]]:
    """(offset of the first physical line, text) of each line of `script`, backslash continuations joined."""
    lines, start, pending = [], 0, ""
    for offset, physical in enumerate(script.splitlines()):
        if not pending:
            start = offset
        if physical.endswith("\\"):
            pending += physical[:-1] + " "
            continue
        lines.append((start, pending + physical))
        pending = ""
    return lines + ([(start, pending)] if pending else [])


def _simple_commands(script: str) -> list[tuple[int, tuple[str, ...]]]:
    """Shell text -> (line offset, words) of its simple commands: comments dropped, split at `;`, `&&`, `||`, `|`,
    `&` and line ends, redirections and leading `VAR=value` assignments left out."""
    commands = []
    for offset, line in _logical_lines(script):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens, words = list(lexer), []
        for index, token in enumerate(tokens + [";"]):
            if token in SEPARATORS:
                while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                    words.pop(0)
                if words:
                    commands.append((offset, tuple(words)))
                words = []
            elif token in {">", ">>", "<"} or (index and tokens[index - 1] in {">", ">>", "<"}):
                continue
            else:
                words.append(token)
    return commands


def readme_commands(text: str) -> list[Command]:
    """The shell commands of a README: each fenced shell block's, and each inline `code` span in the prose that
    starts with one of VENV_PROGRAMS (with arguments: a bare `multitalk` is the command's name, not a command)."""
    commands: list[Command] = []
    prose_parts, last, shell_blocks = [], 0, 0
    for block in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        prose_parts.append((last, text[last : block.start()]))
        last = block.end()
        if block.group(1) in SHELL_LANGUAGES:
            first_line = text.count("\n", 0, block.start(2)) + 1
            for offset, words in _simple_commands(block.group(2)):
                commands.append(Command(words, first_line + offset, shell_blocks))
            shell_blocks += 1
    prose_parts.append((last, text[last:]))
    for start, prose in prose_parts:
        for span in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
            code = " ".join(span.group(1).split())
            first = next((w for w in code.split() if "=" not in w), "")
            if Path(first).name not in VENV_PROGRAMS or len(code.split()) < 2:
                continue
            line = text.count("\n", 0, start + span.start()) + 1
            commands.extend(Command(words, line, None) for _, words in _simple_commands(code))
    return sorted(commands, key=lambda c: c.line)


def not_from_the_venv(commands: list[Command]) -> list[Command]:
    """The commands a fresh shell cannot run after the set-up: a venv program called by its bare name (found only
    on an activated venv's PATH). `python3 -m venv` (the set-up making the venv) is the one exception."""
    return [
        c
        for c in commands
        if Path(c.program).name in VENV_PROGRAMS
        and not c.program.startswith(VENV)
        and not (c.program == "python3" and c.words[1:3] == ("-m", "venv"))
    ]


def multitalk_args(command: Command) -> list[str] | None:
    """The `multitalk` arguments of a command (`multitalk ...`, `python -m diffusers_multitalk ...` or `torchrun
    ... -m diffusers_multitalk ...`), the README's `...` placeholders left out; None for other programs."""
    words = list(command.words)
    if Path(words[0]).name == "multitalk":
        args = words[1:]
    elif "-m" in words and words.index("-m") + 1 < len(words) and words[words.index("-m") + 1] == "diffusers_multitalk":
        args = words[words.index("-m") + 2 :]
    else:
        return None
    return [word for word in args if word != "..."]


COMMANDS = readme_commands(README.read_text())
MULTITALK = [(c, multitalk_args(c)) for c in COMMANDS if multitalk_args(c) is not None]


def test_the_readme_starts_with_its_two_set_up_commands():
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(), re.M | re.S)
    shell = [body for language, body in blocks if language in SHELL_LANGUAGES]
    assert "python3 -m venv .venv" in shell[0] and f"{VENV}multitalk generate --tiny" in shell[0], shell[0]
    assert shell[1].strip() == "bash scripts/test.sh", shell[1]


def test_every_command_runs_from_the_set_up_venv():
    assert len(MULTITALK) >= 10, [str(c) for c, _ in MULTITALK]  # the extraction finds the README's commands
    bare = not_from_the_venv(COMMANDS)
    assert not bare, "bare names a fresh shell does not find (use .venv/bin/...):\n" + "\n".join(map(str, bare))


def test_the_venv_check_catches_bare_names():
    """The checks above can fail: a README with a bare `multitalk` or `pip` (fenced or inline) is caught."""
    text = "Run `multitalk serve --tiny`.\n\n```bash\npip install -e .  # deps\nFOO=1 .venv/bin/multitalk info\n```\n"
    commands = readme_commands(text)
    assert [c.words for c in not_from_the_venv(commands)] == [
        ("multitalk", "serve", "--tiny"),
        ("pip", "install", "-e", "."),
    ]
    assert [c.line for c in commands] == [1, 4, 5] and multitalk_args(commands[-1]) == ["info"]


@pytest.mark.parametrize("command, args", MULTITALK, ids=[f"line{c.line}-{a[0] if a else ''}" for c, a in MULTITALK])
def test_multitalk_flags_parse_with_the_real_parser(command, args):
    from diffusers_multitalk.cli.parser import build_parser

    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit:
            parsed = None
    assert parsed is not None, f"{command}\n{errors.getvalue()}"
    assert parsed.command in SUBCOMMANDS


def test_the_readme_shows_every_subcommand():
    assert {args[0] for _, args in MULTITALK} == SUBCOMMANDS


def test_pip_extras_bash_scripts_and_example_files_exist():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    extras = set(config["options.extras_require"])
    for command in COMMANDS:
        if Path(command.program).name == "pip" and "-e" in command.words:
            target = command.words[command.words.index("-e") + 1]
            wanted = set(re.findall(r"\[(.*)\]", target)[0].split(",")) if "[" in target else set()
            assert wanted <= extras, f"{command}: no extra {sorted(wanted - extras)} in setup.cfg"
        if command.program == "bash":
            assert (ROOT / command.words[1]).is_file(), f"{command}: no such script"
        for word in command.words:  # the repository's files a command names (`-F image=@examples/...` too)
            path = word.split("@", 1)[-1]
            if path.startswith(("examples/", "scripts/", "benchmarks/")):
                assert (ROOT / path).exists(), f"{command}: no {path} in the repository"


def _runnable(command: Command, args: list[str]) -> bool:
    """`generate --tiny` commands but the set-up's (whose demo tests/test_first_run.py runs): no weights needed."""
    return args[0] == "generate" and "--tiny" in args and "--save_file" in args and command.block != 0


RUNNABLE = [(c, a) for c, a in MULTITALK if _runnable(c, a)]


@pytest.mark.parametrize("command, args", RUNNABLE, ids=[f"line{c.line}" for c, _ in RUNNABLE])
def test_commands_that_need_no_weights_run(command, args, tmp_path):
    """As pasted, from the repository's root, with two changes that keep the route: the video goes to the test's
    folder, and one sampling step (a later flag wins) keeps a loaded 2-core CI machine's time down."""
    if "tts" in args and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (the README says to apt install it for this command)")
    args = list(args)
    args[args.index("--save_file") + 1] = str(tmp_path / "video")
    run = subprocess.run(
        [sys.executable, "-m", "diffusers_multitalk", *args, "--sample_steps", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=1800,
    )  # fmt: skip
    assert run.returncode == 0, f"{command}\n{run.stderr[-3000:]}"
    assert (tmp_path / "video.mp4").is_file() and run.stdout.strip().endswith("video.mp4"), run.stdout
    if "examples/dub_video_tiny.json" in args:  # 3.2 s of speech over a 1.92 s video: said in one line
        assert run.stderr.count("its last frame is held") == 1, run.stderr[-3000:]
