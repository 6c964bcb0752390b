"""How the code is put together, checked: the root shows the reference, strict command lines, no script imports
another, no import circle, and no evaluation stack under training."""
import ast
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

# what a user runs: the scripts at the root, the experiment's in repro/, the benchmarks
ROOT_SCRIPTS = ['train_ae.py', 'train_ldm.py', 'sample.py', 'eval_fid.py', 'spectrum.py', 'export.py']
SCRIPTS = ROOT_SCRIPTS + [os.path.join('repro', f) for f in sorted(os.listdir(os.path.join(ROOT, 'repro')))
                          if f.startswith('reproduce') and f.endswith('.py')] + [
    os.path.join('repro', 'sweep_ldm_lr.py'),
    *(os.path.join('bench', f) for f in sorted(os.listdir(os.path.join(ROOT, 'bench'))) if f.startswith('bench_'))]
PACKAGES = ('utils', 'evaluation', 'repro')


def tree(name):
    with open(os.path.join(ROOT, name)) as f:
        return ast.parse(f.read())


def python_files():
    """Every .py file of the project outside tests/, as paths relative to the root."""
    out = []
    for folder in ('.', 'bench', *PACKAGES):
        out += [os.path.normpath(os.path.join(folder, f)) for f in sorted(os.listdir(os.path.join(ROOT, folder)))
                if f.endswith('.py')]
    return out


def module_of(path):
    """'utils/data.py' -> 'utils.data', 'model.py' -> 'model'."""
    return os.path.splitext(path)[0].replace(os.sep, '.')


def imported_modules(name):
    """The project modules `name` imports, dotted ('utils.data', 'model'), wherever the import stands."""
    out = set()
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            if node.module in PACKAGES:  # from utils import data
                out |= {f"{node.module}.{a.name}" for a in node.names}
    project = {module_of(p) for p in python_files()}
    return {m for m in out if m in project}


def test_the_root_is_the_reference():
    # the scripts a researcher runs and the files a reader studies, and nothing else; the experiment has its own wing
    root = sorted(f for f in os.listdir(ROOT) if f.endswith('.py'))
    assert len(root) <= 10 and set(ROOT_SCRIPTS) <= set(root), root
    assert {'model.py', 'diffusion.py'} <= set(root) and 'reproduce.py' not in root
    with open(os.path.join(ROOT, 'README.md')) as f:
        assert len(f.read().splitlines()) <= 300  # a front door, not a lab notebook: results live in docs/


def test_model_py_holds_the_networks_alone():
    # a fork copies model.py and diffusion.py and builds on them: no command line, no plumbing, at most ~900 lines
    for name in ('model.py', 'denoiser.py'):
        with open(os.path.join(ROOT, name)) as f:
            assert len(f.read().splitlines()) <= 900, name
    assert imported_modules('model.py') == set()
    assert imported_modules('denoiser.py') <= {'model'}


@pytest.mark.parametrize('script', SCRIPTS)
def test_every_parser_refuses_abbreviated_flags(script):
    # argparse's default lets `--kl 1e-6` stand for --kl_weight: a typo for another flag would be taken silently
    calls = [n for n in ast.walk(tree(script)) if isinstance(n, ast.Call)
             and getattr(n.func, 'attr', getattr(n.func, 'id', None)) == 'ArgumentParser']
    assert calls, f"{script} builds no ArgumentParser"
    for call in calls:
        abbrev = {k.arg: k.value for k in call.keywords}.get('allow_abbrev')
        assert isinstance(abbrev, ast.Constant) and abbrev.value is False, f"{script}: allow_abbrev=False missing"


def test_an_abbreviated_flag_is_an_error():
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'sample.py'), '--num_sam', '4'], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 2 and 'unrecognized arguments: --num_sam' in p.stderr


def test_no_script_imports_another_script():
    # a script's module-level code runs its command line: what two scripts share lives in a module they both import
    scripts = {module_of(s) for s in SCRIPTS}
    offenders = {f"{p} imports {m}" for p in python_files() for m in imported_modules(p) & scripts}
    assert not offenders, sorted(offenders)


def test_no_import_circle_and_no_evaluation_stack_under_training():
    # the layers, bottom up: cli (the command line, torch-free) imports none of the project's modules, rundir (run
    # folders, torch-free) only cli, common those two; model none, and the denoiser only model; metrics only model
    # (the video AE's time pooling); data adds common, rundir and metrics; the video AE builds on model, weight files
    # sit above both
    below = {'utils.cli': set(), 'utils.rundir': {'utils.cli'}, 'utils.common': {'utils.cli', 'utils.rundir'},
             'evaluation.metrics': {'model'}, 'model': set(), 'denoiser': {'model'}, 'video_model': {'model'},
             'utils.spectral': {'model'}}
    for name, allowed in below.items():
        assert imported_modules(name.replace('.', os.sep) + '.py') <= allowed, name
    assert imported_modules('utils/data.py') <= {'utils.cli', 'utils.common', 'utils.rundir', 'evaluation.metrics'}
    assert imported_modules('utils/weights.py') <= {'utils.cli', 'utils.common', 'utils.rundir', 'model', 'denoiser',
                                                    'video_model'}
    # what train_ae.py can import loads neither scipy nor the Inception network nor eval_fid
    imports = sorted(imported_modules('train_ae.py'))
    assert not {'evaluation.inception', 'evaluation.i3d', 'evaluation.swd', 'evaluation.sources'} & set(imports)
    code = (f"import sys, {', '.join(imports)}; "
            "bad = {'scipy', 'eval_fid', 'evaluation.inception', 'torchvision.models.inception', 'tensorboard'} & "
            "set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)


def test_no_helper_takes_the_whole_args_namespace():
    # STYLE.md: a helper gets the few values it needs, so a reader sees which flags matter; check_args, a script's
    # rules between flags right after parsing, is the one function that reads the command line whole
    takers = [f"{name}: {node.name}" for name in python_files() for node in ast.walk(tree(name))
              if isinstance(node, ast.FunctionDef) and node.name != 'check_args'
              and 'args' in [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]]
    assert not takers, takers
