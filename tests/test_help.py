"""Every script's --help, checked as a user meets it: it answers at once, because the command line is read before torch
is imported (cli.py); it shows the script's docstring whole, which leads with what the script does and an example; and
it says in words what each flag sets."""
import argparse
import ast
import functools
import os
import re
import runpy
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT

# the scripts the issue names: each must be found by the discovery below
NAMED = ['train_ae.py', 'train_ldm.py', 'sample.py', 'eval_fid.py', 'spectrum.py', 'repro/reproduce.py', 'export.py',
         'bench/bench_ae.py', 'bench/bench_eval.py', 'bench/bench_ldm.py', 'bench/bench_sample.py',
         'bench/bench_threads.py']
# --help may take this many times a bare `python -c pass`. Measured on 2 CPU cores, best of 3: python -c pass
# 0.01-0.02 s, --help 0.03-0.08 s (3-6x: argparse and the standard modules a script needs); when torch was imported
# before the parser, 1.7-3.9 s (130-350x). 15x leaves room for a busy machine and still fails a script importing torch.
MAX_RATIO = 15


def tree(path):
    with open(os.path.join(ROOT, path)) as f:
        return ast.parse(f.read())


def builds_a_parser(path):
    return any(isinstance(n, ast.Call) and getattr(n.func, 'attr', getattr(n.func, 'id', None)) == 'ArgumentParser'
               for n in ast.walk(tree(path)))


def runnable_scripts():
    """The top-level scripts, the experiment's and the benchmarks that read a command line."""
    files = sorted(f for f in os.listdir(ROOT) if f.endswith('.py'))
    files += sorted(os.path.join('bench', f) for f in os.listdir(os.path.join(ROOT, 'bench')) if f.endswith('.py'))
    files += sorted(os.path.join('repro', f) for f in os.listdir(os.path.join(ROOT, 'repro')) if f.endswith('.py'))
    return [f for f in files if builds_a_parser(f)]


SCRIPTS = runnable_scripts()


def python(*argv):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))


@functools.lru_cache(maxsize=None)
def help_of(script):
    """(stdout, stderr) of `python -X importtime script --help`: stderr lists every module the run imported."""
    p = python('-X', 'importtime', os.path.join(ROOT, script), '--help')
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout, p.stderr


def best_of_3(*argv):
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *argv], capture_output=True, cwd=ROOT, check=True,
                       env=dict(os.environ, OMP_NUM_THREADS='1'))
        times.append(time.perf_counter() - t0)
    return min(times)


class Parsed(Exception):
    """Raised by parse_args in place of parsing: carries the script's parser out of it."""


def parser_of(script, monkeypatch):
    """The ArgumentParser the script builds, caught at its parse_args call (run as __main__, nothing after it runs)."""
    def stop(self, args=None, namespace=None):
        raise Parsed(self)
    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', stop)
    monkeypatch.setattr(sys, 'argv', [script])
    monkeypatch.setattr(sys, 'path', list(sys.path))  # the benchmarks put their folders on it
    with pytest.raises(Parsed) as caught:
        runpy.run_path(os.path.join(ROOT, script), run_name='__main__')
    return caught.value.args[0]


def test_every_named_script_is_found():
    assert not set(NAMED) - set(SCRIPTS), f"not discovered: {sorted(set(NAMED) - set(SCRIPTS))}"


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_prints_a_usage_and_imports_neither_torch_nor_numpy(script):
    out, err = help_of(script)
    assert out.startswith('usage: ')
    # -X importtime writes 'import time: self [us] | cumulative | imported package' lines, the name indented by depth
    imported = {line.rsplit('|', 1)[-1].strip() for line in err.splitlines() if line.startswith('import time:')}
    heavy = sorted(m for m in imported if m.split('.')[0] in ('torch', 'numpy'))
    assert not heavy, f"{script} --help imports {heavy[:5]}"


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_answers_at_once(script):
    bare = best_of_3('-c', 'pass')
    t = best_of_3(os.path.join(ROOT, script), '--help')
    assert t <= MAX_RATIO * bare, f"{script} --help took {t:.3f} s, python -c pass {bare:.3f} s"


@pytest.mark.parametrize('script', SCRIPTS)
def test_docstring_leads_with_what_the_script_does_and_an_example(script):
    # a sentence or two, then an example command line; the long explanations come after the examples
    lines = ast.get_docstring(tree(script)).splitlines()
    first = next((i for i, line in enumerate(lines) if line.lstrip().startswith(('python ', 'torchrun '))), None)
    assert first is not None and first <= 10, f"{script}: the first example is on docstring line {first}"


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_shows_every_line_of_the_docstring(script):
    # the docstring's lines as written in the source: a backslash that a non-raw string would eat (a line continuation
    # in an example) makes its line differ from what --help shows
    node = tree(script).body[0]
    assert isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant), f"{script} has no docstring"
    with open(os.path.join(ROOT, script)) as f:
        source = f.read().splitlines()[node.lineno:node.end_lineno - 1]  # between the lines of the quotes
    shown = {line.rstrip() for line in help_of(script)[0].splitlines()}
    missing = [line for line in source if line.strip() and line.rstrip() not in shown]
    assert not missing, f"{script} --help lacks these docstring lines: {missing[:3]}"


@pytest.mark.parametrize('script', SCRIPTS)
def test_every_flag_says_what_it_sets(script, monkeypatch):
    parser = parser_of(script, monkeypatch)
    silent = [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
              if not isinstance(a, argparse._HelpAction) and not (a.help or '').strip()]
    assert not silent, f"{script}: no help text for {silent}"


@pytest.mark.parametrize('script, flag', [('train_ae.py', '--init_from'), ('train_ldm.py', '--ae')])
def test_a_training_script_says_what_it_runs_before_it_loads_torch(script, flag, tmp_path):
    """The first line comes before torch is imported (the slow part of a start, slower on a busy machine): stdout and
    -X importtime's stderr share one unbuffered pipe, so their order is the order of events. (A missing checkpoint
    stops the run soon after, at its checks.)"""
    p = subprocess.run([sys.executable, '-u', '-X', 'importtime', script, flag, str(tmp_path / 'missing.pt'),
                        '--out_dir', str(tmp_path / 'out'), '--device', 'cpu'],
                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    lines = p.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(f'{script}: '))
    torch_loaded = next(i for i, line in enumerate(lines) if line.startswith('import time:') and line.endswith('| torch'))
    assert first < torch_loaded and str(tmp_path / 'out') in lines[first] and 'thread' in lines[first]


HELP_MAX = 120  # characters of a flag's own help text, before the default that --help appends


@pytest.mark.parametrize('script', SCRIPTS)
def test_every_flag_shows_its_default_in_a_short_help(script, monkeypatch):
    # the default is shown by the formatter itself (cli.HelpFormatter), so no docstring or help text has to repeat it
    # and none can fall out of date; a fork that adds a flag writes it in one place
    parser = parser_of(script, monkeypatch)
    formatter = parser._get_formatter()
    flags = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    hidden = [a.option_strings[0] if a.option_strings else a.dest for a in flags
              if '%(default)' not in formatter._get_help_string(a)]
    assert not hidden, f"{script}: --help shows no default for {hidden}"
    long = [f"{a.option_strings[0] if a.option_strings else a.dest} ({len(a.help)})" for a in flags
            if len(a.help) > HELP_MAX]
    assert not long, f"{script}: help longer than {HELP_MAX} characters: {long}"


# A command as the documents write it: `python[3] script.py ...` or `torchrun ... script.py ...`, continued over `\`
# line ends, up to a comment, a pipe or the end of the code span. Its paths are relative to the repository's root, as
# every document and shell script here runs them (gpu_session.sh cds there first).
COMMAND = re.compile(r"(?:\bpython3?|\btorchrun\b[^`\n#]*?)\s+([\w./-]+\.py)"  # the launcher, the script
                     r"((?:[ \t]+(?:\\\n\s*)?[^\s`;|&)#][^\s`;|&)]*)*)")  # its words, up to # ` ; | & )
DOCUMENTS = ['README.md', 'repro/README.md', 'docs/guide.md', 'docs/results.md', 'bench/gpu_session.sh']


def documented_commands():
    """(where, script, arguments) of every command in the documents and in the scripts' own docstrings."""
    for path in DOCUMENTS + SCRIPTS:
        with open(os.path.join(ROOT, path)) as f:
            text = f.read()
        if path.endswith('.py'):
            text = ast.get_docstring(ast.parse(text)) or ''
        for m in COMMAND.finditer(text):
            yield path, m.group(1), m.group(2).replace('\\\n', ' ').split()


def test_every_documented_command_names_a_script_and_flags_it_has(monkeypatch):
    # a move of a script or a renamed flag must not leave a README, a shell script or a docstring pointing at nothing:
    # repro/gpu_session.sh ran `python3 reproduce.py` for a round after reproduce.py moved to repro/
    wrong, checked = [], 0
    for where, script, argv in documented_commands():
        if not os.path.isfile(os.path.join(ROOT, script)):
            wrong.append(f"{where}: {script} does not exist")
            continue
        if script not in SCRIPTS:
            continue
        actions = parser_of(script, monkeypatch)._option_string_actions
        for flag, value in zip(argv, argv[1:] + ['']):
            if not flag.startswith('--'):
                continue
            checked += 1
            name = flag.split('=')[0]
            if name not in actions:
                wrong.append(f"{where}: {script} has no {name}")
            elif (actions[name].choices and value and not value.startswith(('-', '$', '"'))
                  and actions[name].type in (None, str) and value not in actions[name].choices):
                wrong.append(f"{where}: {script} {name} takes {sorted(actions[name].choices)}, not {value!r}")
    assert checked > 300, f"only {checked} flags found: the pattern no longer reads the documents"
    assert not wrong, "\n".join(wrong)
