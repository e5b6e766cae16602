"""Every command the documentation shows is one the project runs.

- Each `python3 SCRIPT ...` line of a shell block in README.md, ARCHITECTURE.md and docs/*.md (also under
  mpirun or env assignments, continued with `\\`) names a script that exists, and each `--flag` it shows is one
  that script's parser (or its sub-command's) lists in its own `--help`: a renamed flag fails here.
- The README's tour runs end to end, as it is written, at small sizes: a few training steps, a few pairs.
- The snippet for using the project from one's own script runs from another folder with the repository on
  PYTHONPATH (`import util.runtime` first prepares Jittor, as every entry point does).
"""
import functools
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import DEMO_ROOT, REPO_ROOT, shared_path, small_pairs_folder

DOCUMENTS = ["README.md", "ARCHITECTURE.md",
             *sorted(os.path.relpath(p, REPO_ROOT) for p in glob.glob(os.path.join(REPO_ROOT, "docs", "*.md")))]
SHELL_LANGUAGES = ("", "bash", "sh", "shell", "console")
SHELL_OPERATORS = ("|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1")
# The outputs the tour writes into its working folder, never taken from the repository.
RUN_OUTPUTS = ("results", "eval_results", "models", ".git")


def fenced_blocks(path):
    """-> [(language, line number of the block's first line, text)] of a Markdown file's ``` blocks."""
    blocks, language, start, lines = [], None, 0, []
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fence = re.match(r"^\s*```\s*([\w+-]*)", line)
            if fence and language is None:
                language, start, lines = fence.group(1).lower(), number + 1, []
            elif fence:
                blocks.append((language, start, "".join(lines)))
                language = None
            elif language is not None:
                lines.append(line)
    return blocks


def logical_lines(text, first_number):
    """-> [(line number, line)] with lines continued by a trailing backslash joined."""
    joined, pending, start = [], "", first_number
    for offset, line in enumerate(text.splitlines()):
        if not pending:
            start = first_number + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append((start, pending + line))
        pending = ""
    if pending:
        joined.append((start, pending))
    return joined


def shell_words(line):
    """A command line's words, comments left out and shell operators as words of their own."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def python_script(words):
    """-> (script, its arguments up to the first shell operator) of a `python3 SCRIPT ...` command, else None."""
    for i, word in enumerate(words):
        if os.path.basename(word) in ("python3", "python"):
            rest = words[i + 1:]
            while rest and rest[0].startswith("-"):
                if rest[0] in ("-m", "-c"):
                    return None  # a module or inline code, not a script of the project
                rest = rest[2:] if rest[0] in ("-X", "-W") else rest[1:]
            if not rest or not rest[0].endswith(".py"):
                return None
            arguments = rest[1:]
            for j, argument in enumerate(arguments):
                if argument in SHELL_OPERATORS:
                    return rest[0], arguments[:j]
            return rest[0], arguments
    return None


def documented_commands(path):
    """-> [(where, script, arguments)] of every python3 command in the document's shell blocks."""
    commands = []
    for language, start, text in fenced_blocks(path):
        if language not in SHELL_LANGUAGES:
            continue
        for number, line in logical_lines(text, start):
            if not language and "python3" not in line.split():
                continue  # a plain block holds commands among other text
            found = python_script(shell_words(line))
            if found:
                commands.append((f"{path}:{number}", *found))
    return commands


def shown_flags(arguments):
    """The --flags a command shows, optional ones written [--flag VALUE] included."""
    return [word.strip("[]").split("=")[0] for word in arguments if word.strip("[]").startswith("--")]


def help_text(command):
    result = subprocess.run([sys.executable, *command, "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} --help: exit status {result.returncode}\n" \
                                   f"{result.stderr[-2000:]}"
    return result.stdout


def parser_reading(text):
    """-> (the flags an argparse --help lists, its sub-command names) from the help's usage and option lines."""
    usage = text.split("\n\n")[0]
    flags = set(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", usage))
    for line in text.splitlines():
        invocation = re.match(r"^  (-\S.*?)(?:\s{2,}|$)", line)
        if invocation:
            flags.update(re.findall(r"--[A-Za-z][\w-]*", invocation.group(1)))
    choices = re.search(r"\{([\w,-]+)\}", usage)
    return flags, set(choices.group(1).split(",")) if choices else set()


@functools.lru_cache(maxsize=None)
def all_documented_commands():
    return [command for path in DOCUMENTS for command in documented_commands(path)]


@functools.lru_cache(maxsize=None)
def parsers():
    """{(script,) or (script, sub-command): (flags, sub-commands)} for every script the documents run with
    arguments; each script's --help runs once (in parallel: most import Jittor, which takes seconds)."""
    commands = [c for c in all_documented_commands() if c[2] and os.path.isfile(os.path.join(REPO_ROOT, c[1]))]
    with ThreadPoolExecutor(4) as pool:
        scripts = sorted({script for _, script, _ in commands})
        found = dict(zip([(s,) for s in scripts], pool.map(lambda s: parser_reading(help_text([s])), scripts)))
        subs = sorted({(script, arguments[0]) for _, script, arguments in commands
                       if not arguments[0].startswith("-") and arguments[0] in found[(script,)][1]})
        found.update(zip(subs, pool.map(lambda key: parser_reading(help_text(list(key))), subs)))
    return found


def test_the_documents_show_commands_of_every_kind():
    """The reading above finds the commands (a parser that finds none would pass everything)."""
    scripts = {script for _, script, _ in all_documented_commands()}
    assert {"train_SFace_jittor.py", "train_SCF_jittor.py", "eval_SFace_jittor.py", "benchmark.py",
            "tools/data_tools.py", "tools/import_weights.py", "tools/export_onnx.py", "tools/verify_faces.py",
            "tools/eval_opencv.py", "tools/angle_report.py", "install/gpu_check.py"} <= scripts
    assert len(all_documented_commands()) >= 40
    assert shell_words("mpirun -np 2 python3 -u x.py --a 1 [--b] | tee log  # --c") == \
        ["mpirun", "-np", "2", "python3", "-u", "x.py", "--a", "1", "[--b]", "|", "tee", "log"]
    assert python_script(shell_words("mpirun -np 2 python3 -u x.py --a 1 [--b] | tee log")) == \
        ("x.py", ["--a", "1", "[--b]"])
    assert parser_reading("usage: x [-h] {a,b} --long LONG\n\noptions:\n  --other, --alias  what --not-a-flag\n") \
        == ({"--long", "--other", "--alias"}, {"a", "b"})


@pytest.mark.parametrize("path", DOCUMENTS)
def test_every_documented_command_names_a_script_and_flags_it_accepts(path):
    assert os.path.isfile(os.path.join(REPO_ROOT, path)), f"{path} is missing"
    problems = []
    for where, script, arguments in documented_commands(path):
        if not os.path.isfile(os.path.join(REPO_ROOT, script)):
            problems.append(f"{where}: {script} does not exist")
            continue
        if not arguments:
            continue
        flags, subcommands = parsers()[(script,)]
        if not arguments[0].startswith("-") and arguments[0] in subcommands:
            flags, _ = parsers()[(script, arguments[0])]
            script = f"{script} {arguments[0]}"
        problems += [f"{where}: {script} does not accept {flag} (its flags: {', '.join(sorted(flags))})"
                     for flag in shown_flags(arguments) if flag not in flags]
    assert not problems, "\n".join(problems)


def heading_anchors(path):
    """The anchors GitHub gives a Markdown file's headings (lower case, punctuation but - and _ dropped)."""
    anchors, in_block = set(), False
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
        for line in f:
            if line.lstrip().startswith("```"):
                in_block = not in_block
            heading = None if in_block else re.match(r"^#{1,6}\s+(.*)", line)
            if heading:
                anchors.add(re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("path", DOCUMENTS)
def test_every_link_between_the_documents_leads_somewhere(path):
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
        links = re.findall(r"\]\(([^)\s]+)\)", f.read())
    problems = []
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue  # a web address
        target, _, anchor = link.partition("#")
        target = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
        if not os.path.exists(os.path.join(REPO_ROOT, target)):
            problems.append(f"{path}: ({link}): {target} does not exist")
        elif anchor and target.endswith(".md") and anchor not in heading_anchors(target):
            problems.append(f"{path}: ({link}): {target} has no heading #{anchor}")
    assert not problems, "\n".join(problems)


# ---- the README's tour, run as written at small sizes ----

def tour_blocks():
    """The shell blocks of the README's '## Tour' section, in order."""
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = re.search(r"^## Tour\b.*?(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Tour' section"
    blocks = re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", section.group(0), re.S | re.M)
    assert len(blocks) == 2, "the tour: a block with the demo model, a block with an imported public one"
    return blocks


def small(words, pairs):
    """A tour command at test size: 2 training steps, a few pairs, a sample of the training images."""
    script = python_script(words)[0]
    if script == "train_SFace_jittor.py":
        return [*words, "--max_steps", "2", "--target", pairs]
    if script == "tools/angle_report.py":
        return [*words, "--max_images", "32"]
    if script == "eval_SFace_jittor.py":
        return [pairs if i and words[i - 1] == "--target" else w for i, w in enumerate(words)]
    return words


def working_folder(tmp_path):
    """A folder that shows the repository (links to its files) but keeps what the commands write."""
    folder = tmp_path / "repo"
    folder.mkdir()
    for name in os.listdir(REPO_ROOT):
        if name not in RUN_OUTPUTS:
            os.symlink(os.path.join(REPO_ROOT, name), folder / name)
    return folder


def run_block(block, cwd, variables, pairs):
    """Run a block's commands one by one as the user's shell would (`NAME=value` lines set variables, which
    `variables` may replace); -> the outputs of its commands."""
    env = {k: v for k, v in os.environ.items() if k != "nvcc_path"}  # a fresh shell: each script sets up Jittor
    values, outputs = {}, []
    for where, line in logical_lines(block, 1):
        words = shell_words(line)
        if not words:
            continue
        assignment = re.fullmatch(r"([A-Za-z_]\w*)=(.*)", words[0]) if len(words) == 1 else None
        if assignment:
            name = assignment.group(1)
            values[name] = variables.get(name, os.path.expanduser(assignment.group(2)))
            continue
        words = [re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: values[m.group(1)], w) for w in words]
        assert python_script(words) and words[0] == "python3", f"tour line {where}: not a python3 command: {line}"
        command = [sys.executable, *small(words, pairs)[1:]]
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"tour line {where}: {' '.join(command)}\n{result.stdout[-3000:]}\n" \
                                       f"{result.stderr[-3000:]}"
        outputs.append(result.stdout)
    return outputs


def test_the_tour_with_the_demo_model_runs_as_written(tmp_path):
    cwd = working_folder(tmp_path)
    pairs = small_pairs_folder(str(tmp_path / "pairs"), per_fold=2)
    outputs = run_block(tour_blocks()[0], cwd, {}, pairs)
    run = cwd / "results" / "MobileFaceNet-SFaceLoss-demo"
    for written in (run / "last.npz", run / "angle_report.png", run / "angle_report.json",
                    cwd / "eval_results" / "results.json"):
        assert written.is_file(), written
    assert re.search(r"^cosine similarity -?\d\.\d{4}$", outputs[-1], re.M), outputs[-1]
    assert "same person" in outputs[-1] or "different people" in outputs[-1], outputs[-1]


def test_the_tour_with_an_imported_public_model_runs_as_written(tmp_path):
    weights = shared_path("insightface-mobilefacenet")
    cwd = working_folder(tmp_path)
    pairs = small_pairs_folder(str(tmp_path / "pairs"), per_fold=2)
    outputs = run_block(tour_blocks()[1], cwd, {"INSIGHTFACE": weights}, pairs)
    assert (cwd / "models" / "insightface_mobilefacenet.onnx").is_file()
    assert "same person" in outputs[-1], outputs[-1]  # two photos of one person, a model that scores 99 % on LFW


# ---- the project from the user's own script ----

def own_script_snippet():
    """The Python block of docs/training.md that imports util.runtime (the way to use the project from a script)."""
    blocks = [text for language, _, text in fenced_blocks("docs/training.md")
              if language == "python" and "import util.runtime" in text]
    assert len(blocks) == 1, "docs/training.md: one python block shows using the project from your own script"
    return blocks[0]


def test_the_documented_own_script_runs_from_another_folder(tmp_path):
    from backbone import build_backbone
    from model.checkpoint import module_arrays, save_checkpoint
    snippet = own_script_snippet()
    assert snippet.index("import util.runtime") < snippet.index("import jittor")
    checkpoint = re.search(r'load_model\("([^"]+)"\)', snippet).group(1)
    config = {"net": "MobileFaceNet", "input_hw": [112, 112], "input_size": "112x112", "embedding_size": 128}
    save_checkpoint(str(tmp_path / checkpoint), {"config": config},
                    module_arrays(build_backbone("MobileFaceNet", (112, 112), 128)), {})
    faces = sorted(set(re.findall(r'"([\w./-]+\.jpg)"', snippet)))
    assert len(faces) == 2, faces
    for face, demo in zip(faces, ("Colin_Powell/Colin_Powell_0001.jpg", "Colin_Powell/Colin_Powell_0002.jpg")):
        os.makedirs(os.path.dirname(str(tmp_path / face)) or str(tmp_path), exist_ok=True)
        shutil.copyfile(os.path.join(DEMO_ROOT, "images", demo), tmp_path / face)
    (tmp_path / "my_script.py").write_text(snippet)
    env = {k: v for k, v in os.environ.items() if k != "nvcc_path"}  # as a user's shell has it
    env["PYTHONPATH"] = REPO_ROOT
    result = subprocess.run([sys.executable, "my_script.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shape, cosine = result.stdout.strip().splitlines()[-2:]
    assert shape == "(2, 128)"
    assert -1.0 <= float(cosine) <= 1.0 and np.isfinite(float(cosine))
